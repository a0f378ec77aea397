#!/usr/bin/env python
"""Click-to-picture latency of ``guided-backprop explore`` in a real browser (headless Chromium).

The explorer serves the sample photos (scikit-image's, no download) with the default model at its
default input size; Playwright clicks as a user does and the time is taken from just before the
click to the moment the new panel is decoded in the page (its ``<img>`` carries the key of the
choice it shows). Interactions cycle through three kinds:

* ``new class``: a class of the top-5 not shown yet for this image (no forward pass: the image's
  recorded forward serves it; the backward passes of the methods shown, unless the background
  already computed them);
* ``method``: a method switched on or off (from the cache, or one backward pass on the recorded
  forward when the background has not reached it yet; then the panel is drawn);
* ``new image``: another photo (its picture, top-5, and the top class's maps: one forward pass).

It prints the median and the 95th percentile per kind and over all, with the machine's load
average (1 min) before, after and during each kind's interactions (other work on the machine
slows every figure down: figures taken at a load above the core count are not the explorer's).

    python benchmarks/bench_explore.py                      # 24 interactions, default model
    python benchmarks/bench_explore.py --interactions 60
    python benchmarks/bench_explore.py --pause 1.5           # a person's pace: 1.5 s between picture and click
    python benchmarks/bench_explore.py --quick              # smoke test: a tiny model, 6 interactions
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
METHODS = ("guided_backprop", "gradcam", "guided_gradcam", "saliency", "deconvnet")
STAGES: dict[str, list[float]] = {}  # the server's time per stage (ExploreService.timings) of the last run
SLOWEST: list[tuple[float, str, dict[str, float]]] = []  # (seconds, kind, the server's seconds per stage meanwhile)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=24, help="clicks timed (at least 20 for the figures)")
    parser.add_argument("--model", default=None, help="model name (default: the package's default model)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds between a picture and the next click (0: at once; ~1-2: a person's pace, "
                             "which leaves the background prefetch of the other top-5 classes time to work)")
    parser.add_argument("--quick", action="store_true", help="smoke test: a tiny random model, 6 interactions")
    args = parser.parse_args(argv)
    if args.interactions < 1:
        parser.error("--interactions must be >= 1")
    return args


def _photos(folder: Path) -> list[Path]:
    from PIL import Image
    from skimage import data

    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
        paths.append(path)
    return paths


def _loaded(args: argparse.Namespace) -> Any:
    from guided_backprop.models import load_model

    if not args.quick:
        return load_model(args.model) if args.model else load_model()
    import torch
    from torch import nn

    from guided_backprop.models import LoadedModel
    from guided_backprop.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return LoadedModel("tiny", net.eval(), Preprocessing(resize=48, crop=48), [f"class {i}" for i in range(10)],
                       "random")


def _key(image: int, cls: int, methods: list[str]) -> str:
    return f"image={image}&class={cls}&methods={'%2C'.join(methods)}&smooth=0"


def _timed(page: Any, click: str, key: str) -> float:
    start = time.perf_counter()
    page.click(click, no_wait_after=True)
    page.wait_for_function("(key) => { const i = document.querySelector('#panel'); "
                           "return i.dataset.key === key && i.complete && i.naturalWidth > 0; }",
                           arg=key, timeout=120_000, polling=5)
    return time.perf_counter() - start


def _top(page: Any) -> list[int]:
    page.wait_for_function("() => document.querySelectorAll('#classes button').length > 0", timeout=120_000)
    return [int(c) for c in page.locator("#classes button").evaluate_all("bs => bs.map(b => b.dataset.cls)")]


def run(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The timed interactions, by kind (seconds), and the 1-minute load average at each."""
    from playwright.sync_api import sync_playwright

    from guided_backprop.explore import ExploreService, new_token
    from guided_backprop.explore.server import running
    from guided_backprop.methods import METHODS as ORDER

    n = 6 if args.quick else args.interactions
    with tempfile.TemporaryDirectory() as tmp:
        paths = _photos(Path(tmp))
        loaded = _loaded(args)
        service = ExploreService(loaded, paths, names=[p.name for p in paths])
        token = new_token()
        times: dict[str, list[float]] = {"new class": [], "method": [], "new image": []}
        loads: dict[str, list[float]] = {kind: [] for kind in times}
        with running(service, token=token, report=lambda message: print("error:", message, file=sys.stderr)) as base, \
                sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{base}/?token={token}")
            page.wait_for_selector("body[data-ready='1']", timeout=300_000)
            image, methods = 0, ["guided_backprop"]
            classes = _top(page)
            shown = [classes[0]]
            cls = classes[0]
            done = 0
            while done < n:
                time.sleep(args.pause)
                kind = ("new class", "method", "method", "new image")[done % 4]
                load = os.getloadavg()[0]
                before = {stage: len(values) for stage, values in service.timings.items()}
                counts = {k: len(v) for k, v in times.items()}
                if kind == "new class":
                    fresh = [c for c in classes if c not in shown]
                    if not fresh:
                        kind = "new image"
                    else:
                        cls = fresh[0]
                        shown.append(cls)
                        times[kind].append(_timed(page, f"#classes button[data-cls='{cls}']",
                                                  _key(image, cls, methods)))
                        loads[kind].append(load)
                if kind == "method":
                    method = METHODS[1 + (done // 4) % (len(METHODS) - 1)]
                    methods = [m for m in ORDER if m in methods or m == method] if method not in methods \
                        else [m for m in methods if m != method]  # in the page's order (the registry's)
                    times[kind].append(_timed(page, f"#methods input[value='{method}']", _key(image, cls, methods)))
                    loads[kind].append(load)
                if kind == "new image":
                    image = (image + 1) % len(paths)
                    start = time.perf_counter()
                    page.click(f"#strip button[data-index='{image}']", no_wait_after=True)
                    page.wait_for_function("(p) => { const i = document.querySelector('#panel'); "
                                           "return i.dataset.key.startsWith(p) && i.complete && i.naturalWidth > 0; }",
                                           arg=f"image={image}&", timeout=120_000, polling=5)
                    times[kind].append(time.perf_counter() - start)
                    loads[kind].append(load)
                    classes = _top(page)
                    cls, shown = classes[0], [classes[0]]
                for k in (k for k in times if len(times[k]) > counts[k]):  # the click timed: the server meanwhile
                    spent = {stage: sum(list(values)[before.get(stage, 0):])
                             for stage, values in service.timings.items()}
                    SLOWEST.append((times[k][-1], k, {st: v for st, v in spent.items() if v > 0.0005}))
                done += 1
            browser.close()
        service.close()
    global STAGES
    STAGES = {stage: list(values) for stage, values in service.timings.items()}
    return times, loads


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    import torch

    times, loads = run(args)
    load_after = os.getloadavg()
    model = "tiny (quick)" if args.quick else (args.model or "default (efficientnet_lite0)")
    print(f"# explore click-to-picture latency: {model}, pause {args.pause:g} s, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads")
    print(f"load average (1, 5, 15 min) before: {' '.join(f'{v:.2f}' for v in load_before)}; "
          f"after: {' '.join(f'{v:.2f}' for v in load_after)}")
    print("| interaction | n | median (s) | p95 (s) | max (s) | load average during (min-max) |")
    print("|---|---|---|---|---|---|")
    every = [t for values in times.values() for t in values]
    for kind, values in [*times.items(), ("all", every)]:
        during = [v for values in loads.values() for v in values] if kind == "all" else loads[kind]
        if values:
            print(f"| {kind} | {len(values)} | {statistics.median(values):.3f} | {_p95(values):.3f} | "
                  f"{max(values):.3f} | {min(during):.2f}-{max(during):.2f} |")
    print("\nWhere the server's time goes (every request of the run; the rest of a click's time is the browser's "
          "requests, the network and decoding):")
    print("| stage | n | median (s) | p95 (s) | total (s) |")
    print("|---|---|---|---|---|")
    for stage, values in STAGES.items():
        print(f"| {stage} | {len(values)} | {statistics.median(values):.3f} | {_p95(values):.3f} | {sum(values):.2f} |")
    print(f"clicks, total: {sum(every):.2f} s")
    print("\nThe 3 slowest clicks, with the server's time per stage while each ran (the rest: browser, requests):")
    for seconds, kind, spent in sorted(SLOWEST, key=lambda r: r[0], reverse=True)[:3]:
        print(f"- {kind}: {seconds:.3f} s; " + ", ".join(f"{k} {v:.3f}" for k, v in spent.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
