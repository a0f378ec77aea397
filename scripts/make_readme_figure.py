"""Make the README figure: for each sample photo, the input the network saw, then saliency, deconvnet,
guided backprop and Guided Grad-CAM of its top class, side by side.

The photos ship inside scikit-image (no download); the model is the offline default
(``efficientnet_lite0``). All maps come from one forward pass (``Explainer.explain``).

Usage: python scripts/make_readme_figure.py [OUT] [--model NAME] [--photos chelsea,coffee]
       (``make figure`` writes docs/figures/readme.png; the figure is kept under 1 MB)
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import guided_backprop as gbp
from guided_backprop import render
from guided_backprop.models import DEFAULT_MODEL, load_model

PHOTOS = ("chelsea", "coffee")  # astronaut: the ImageNet model is unsure of it (barbell, 14 %)
METHODS = ("saliency", "deconvnet", "guided_backprop", "guided_gradcam")
TITLES = {"saliency": "saliency", "deconvnet": "deconvnet", "guided_backprop": "guided backprop",
          "guided_gradcam": "Guided Grad-CAM"}
DEFAULT_OUT = Path("docs/figures/readme.png")
MAX_BYTES = 1_000_000


def sample_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled sample photos, as an RGB picture."""
    from skimage import data

    loader = getattr(data, name, None)
    if loader is None or not callable(loader):
        known = [n for n in ("astronaut", "chelsea", "coffee", "rocket", "cat") if hasattr(data, n)]
        raise gbp.UnknownNameError("sample photo", name, known, hint="a function of skimage.data")
    return Image.fromarray(np.asarray(loader())).convert("RGB")


def make_figure(
    photos: tuple[str, ...] = PHOTOS, *, model: str = DEFAULT_MODEL, norm: str = "percentile"
) -> Image.Image:
    """The figure as a PIL image: one row (a :func:`render.panel`) per photo, stacked top to bottom."""
    pictures = [sample_photo(name) for name in photos]
    loaded = load_model(model)
    x = loaded.prepare(pictures)
    explained = gbp.Explainer(loaded.model).explain(x, methods=METHODS, gradcam_layer=loaded.gradcam_layer)
    rows = []
    for i in range(len(photos)):
        cls = int(explained.targets[i, 0])
        prob = float(explained.probabilities[i, 0])
        maps = {TITLES[m]: render.method_picture(m, explained.maps[m][i, 0], norm=norm) for m in METHODS}
        seen = loaded.preprocessing.invert(x[i])
        rows.append(render.panel(seen, maps, input_title=f"{loaded.label(cls)} ({prob:.0%})"))
    gap = 4
    width = max(r.width for r in rows)
    figure = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)), (255, 255, 255))
    top = 0
    for row in rows:
        figure.paste(row, (0, top))
        top += row.height + gap
    return figure


def png_size(picture: Image.Image) -> int:
    """How many bytes ``picture`` takes as a PNG (encoded as :func:`render.save_image` does)."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.tell()


def fit_under(picture: Image.Image, max_bytes: int = MAX_BYTES) -> Image.Image:
    """``picture`` scaled down in 10 % steps until its PNG is under ``max_bytes``."""
    scaled = picture
    while png_size(scaled) >= max_bytes:
        w, h = scaled.size
        if min(w, h) < 64:
            raise gbp.GuidedBackpropError(f"cannot fit the figure under {max_bytes} bytes; use fewer photos")
        scaled = picture.resize((int(w * 0.9), int(h * 0.9)), Image.Resampling.LANCZOS)
    return scaled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL}, offline)")
    parser.add_argument("--photos", default=",".join(PHOTOS), help="skimage.data photos, comma-separated")
    parser.add_argument("--norm", default="percentile", choices=render.NORMALIZATIONS, help="map normalisation")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    try:
        photos = tuple(p.strip() for p in args.photos.split(",") if p.strip())
        figure = fit_under(make_figure(photos, model=args.model, norm=args.norm))
        out = render.save_image(figure, args.out)
    except gbp.GuidedBackpropError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({figure.width}x{figure.height}, {out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
