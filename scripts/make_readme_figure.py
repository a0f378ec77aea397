"""Make the README figures from scikit-image's bundled photos and the offline default model.

* ``readme.png``: for each photo, the input the network saw, then guided backprop, Grad-CAM, Guided
  Grad-CAM, saliency and deconvnet of its top class (deconvnet last: on this network it shows the
  network's filters, not the photo; see the README);
* ``topk.png`` (beside it): one photo's top-3 classes as a class x method grid (:func:`panels.class_panel`).

The model is the offline default (``efficientnet_lite0``). All maps of a figure come from one forward
pass (``Explainer.explain``).

Usage: python scripts/make_readme_figure.py [OUT] [--model NAME] [--photos chelsea,coffee] [--topk astronaut]
       (``make figure`` writes docs/figures/readme.png and docs/figures/topk.png; each is kept under 1 MB)
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
from guided_backprop.models import DEFAULT_MODEL, load_model
from guided_backprop.pictures import panels, render

PHOTOS = ("chelsea", "coffee")
METHODS = ("guided_backprop", "gradcam", "guided_gradcam", "saliency", "deconvnet")
TOPK_PHOTO = "coffee"
TOPK_METHODS = ("guided_backprop", "gradcam", "guided_gradcam")
TOPK = 3
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
    """The figure as a PIL image: one row (a one-class :func:`panels.class_panel`) per photo, stacked."""
    pictures = [sample_photo(name) for name in photos]
    loaded = load_model(model)
    x = loaded.prepare(pictures)
    explained = gbp.Explainer(loaded.model).explain(x, methods=METHODS, gradcam_layer=loaded.gradcam_layer)
    rows = []
    for i in range(len(photos)):
        rows.append(panels.class_panel(
            loaded.preprocessing.invert(x[i]), {m: explained.maps[m][i] for m in METHODS},
            classes=[loaded.label(int(explained.targets[i, 0]))],
            probabilities=[float(explained.probabilities[i, 0])], norm=norm, headers=i == 0,
        ))
    return stack(rows)


def make_topk_figure(
    photo: str = TOPK_PHOTO, *, model: str = DEFAULT_MODEL, k: int = TOPK, norm: str = "percentile"
) -> Image.Image:
    """One photo's top-``k`` classes, one grid row per class, one column per method."""
    loaded = load_model(model)
    x = loaded.prepare(sample_photo(photo))
    e = gbp.Explainer(loaded.model).explain(x, gbp.TopK(k), methods=TOPK_METHODS, gradcam_layer=loaded.gradcam_layer)
    return panels.class_panel(
        loaded.preprocessing.invert(x[0]), {m: e.maps[m][0] for m in TOPK_METHODS},
        classes=[loaded.label(int(c)) for c in e.targets[0]], probabilities=e.probabilities[0].tolist(), norm=norm,
        title=f"skimage.data.{photo}(): the top {k} classes",
    )


def stack(rows: list[Image.Image], gap: int = 4) -> Image.Image:
    """Pictures one under the other, left-aligned, on white."""
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
    picture.save(buf, format="PNG", compress_level=render.PNG_COMPRESS_LEVEL)
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
    parser.add_argument("--topk", default=TOPK_PHOTO, help=f"photo of the top-{TOPK} figure, written as topk.png "
                        "beside OUT ('' for none)")
    parser.add_argument("--norm", default="percentile", choices=render.NORMALIZATIONS, help="map normalisation")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    try:
        photos = tuple(p.strip() for p in args.photos.split(",") if p.strip())
        figures = [(args.out, make_figure(photos, model=args.model, norm=args.norm))]
        if args.topk:
            figures.append((args.out.with_name("topk.png"), make_topk_figure(args.topk, model=args.model,
                                                                             norm=args.norm)))
        for path, figure in figures:
            figure = fit_under(figure)
            out = render.save_image(figure, path)
            print(f"wrote {out} ({figure.width}x{figure.height}, {out.stat().st_size / 1e3:.0f} kB)")
    except gbp.GuidedBackpropError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
