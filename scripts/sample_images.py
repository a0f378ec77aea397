"""Write the sample photos of the quick start (they ship inside scikit-image's wheel: no download).

Usage: python scripts/sample_images.py [OUT_DIR]   (default: samples/)
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png"]


def main(out_dir: str = "samples") -> None:
    from skimage import data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for file_name in PHOTOS:
        target = out / file_name
        if target.exists():
            continue
        tmp = target.with_name(f".{file_name}.tmp")
        with Image.open(Path(data.data_dir) / file_name) as image:
            image.convert("RGB").save(tmp, format=image.format)
        tmp.replace(target)
    print(f"{len(PHOTOS)} sample photos in {out}/")


if __name__ == "__main__":
    main(*sys.argv[1:2])
