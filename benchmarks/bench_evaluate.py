"""Our model-parameter randomisation and random-logit checks side by side with Quantus's MPRT and RandomLogit.

Same model (the offline EfficientNet-Lite0), same images (scikit-image's chelsea, coffee, astronaut,
rocket), same maps (ours, given to Quantus as its ``explain_func``: |map| summed over channels), same
similarity function (Spearman rank correlation), same steps in the same order (top-down cascading,
every module with ``reset_parameters``), the same re-initialisation (each module's
``reset_parameters()`` after ``torch.manual_seed(43)``, which is what Quantus's seed 42 does; BatchNorm
running statistics reset too, as Quantus does -- our default keeps them, as the paper) and the same
random classes. So the numbers should agree to float rounding; the tolerance is stated below.

    python benchmarks/bench_evaluate.py            # the published figures (docs/benchmarks.md)
    python benchmarks/bench_evaluate.py --quick    # a tiny network, seconds (the smoke test)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

import guided_backprop as gbp
from guided_backprop.evaluate import class_sensitivity, model_randomization, randomization_steps

METHODS = ("guided_backprop", "saliency", "gradcam")
QUANTUS_SEED = 42  # Quantus seeds every reset with seed + 1
TOLERANCE = 1e-4  # |ours - Quantus| per image and step: float rounding of identical maps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny random network at 32 px, 2 images")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--no-quantus", action="store_true", help="time ours only")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss in KiB), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _tiny() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def _inputs(quick: bool) -> tuple[nn.Module, torch.Tensor, str]:
    if quick:
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        return _tiny(), x, "tiny CNN (8 channels), 2 random 32x32 inputs"
    from skimage import data

    loaded = gbp.load_model()
    pictures = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return loaded.model, loaded.prepare(pictures), f"{loaded.name}, skimage chelsea/coffee/astronaut/rocket, 224 px"


def _explain_func(method: str):  # type: ignore[no-untyped-def]
    """Quantus's explain_func: our map of ``method``, |map| summed over channels, (N, 1, H, W) numpy."""

    def explain(model: nn.Module, inputs: Any, targets: Any, **_kwargs: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
        maps = gbp.Explainer(model).explain(x, t, methods=(method,)).maps[method][:, 0]
        return maps.abs().sum(dim=1, keepdim=True).numpy()

    return explain


def quantus_order(model: nn.Module) -> list[str]:
    """The step order of Quantus's top-down MPRT: named_modules() with reset_parameters, reversed."""
    return [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]


def run_ours(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...], classes: torch.Tensor) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = model_randomization(model, x, methods=methods, order="cascading", granularity="modules",
                              metrics=["spearman_abs"], seed=QUANTUS_SEED + 1, classes=classes,
                              keep_running_stats=False, reseed_each_module=True, batch_size=x.shape[0],
                              maps_image=None)
    t_mprt = time.perf_counter() - t0
    num_classes = int(model(x[:1]).shape[1])
    draw = np.random.RandomState(QUANTUS_SEED).randint(0, num_classes - 1, x.shape[0])
    others = [int(d + (d >= c)) for d, c in zip(draw, classes.tolist())]  # Quantus's off-class draw
    t0 = time.perf_counter()
    cs = class_sensitivity(model, x, methods=methods, metrics=["spearman_abs"], random_classes=others,
                           batch_size=x.shape[0])
    t_logit = time.perf_counter() - t0
    return {"mprt": res, "logit": cs, "t_mprt": t_mprt, "t_logit": t_logit, "num_classes": num_classes}


def run_quantus(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...], classes: torch.Tensor,
                num_classes: int) -> dict[str, Any]:
    import warnings

    import quantus

    xb, yb = x.numpy(), classes.numpy()
    out: dict[str, Any] = {"mprt": {}, "logit": {}, "t_mprt": {}, "t_logit": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in methods:
            metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, layer_order="top_down",
                                  seed=QUANTUS_SEED, abs=True, normalise=True, disable_warnings=True)
            t0 = time.perf_counter()
            scores = metric(model=model, x_batch=xb, y_batch=yb, a_batch=None, explain_func=_explain_func(m),
                            device="cpu", batch_size=len(xb), channel_first=True)
            out["t_mprt"][m] = time.perf_counter() - t0
            out["mprt"][m] = scores
            rl = quantus.RandomLogit(num_classes=num_classes, seed=QUANTUS_SEED,
                                     similarity_func=quantus.similarity_func.correlation_spearman, abs=True,
                                     normalise=True, disable_warnings=True)
            t0 = time.perf_counter()
            out["logit"][m] = np.asarray(rl(model=model, x_batch=xb, y_batch=yb, a_batch=None,
                                            explain_func=_explain_func(m), device="cpu", batch_size=len(xb),
                                            channel_first=True), dtype=np.float64)
            out["t_logit"][m] = time.perf_counter() - t0
    return out


def _gap(a: Any, b: Any) -> float:
    """Largest |a - b|; where both are nan (a constant map: Spearman undefined in both) they agree, where one
    is, they do not (inf)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isnan(a) & np.isnan(b)
    d = np.where(both, 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(d), np.inf, d))) if d.size else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = gbp.parse_methods(args.methods.split(","))
    model, x, what = _inputs(args.quick)
    classes = model(x).argmax(1).detach()
    steps = randomization_steps(model, x, "modules")
    print(f"# bench_evaluate: {what}; {len(steps)} steps (modules, top-down cascading); methods {', '.join(methods)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
          f"{_load()} at the start")
    ours = run_ours(model, x, methods, classes)
    have_quantus = importlib.util.find_spec("quantus") is not None and not args.no_quantus
    print(f"ours: MPRT {ours['t_mprt']:.2f} s for the {len(methods)} methods together "
          f"({len(steps)} steps x one forward), random logit {ours['t_logit']:.2f} s; peak RSS of the process "
          f"{_peak_rss_mib():.0f} MiB")
    if not have_quantus:
        print("quantus: not installed (pip install quantus, the 'bench' extra) - comparison skipped")
        return 0
    same_order = quantus_order(model) == steps
    print(f"step order: Quantus's (named_modules reversed) {'equals' if same_order else 'DIFFERS FROM'} ours "
          f"(forward order reversed)")
    before = _peak_rss_mib()
    q = run_quantus(model, x, methods, classes, ours["num_classes"])
    t_q = sum(q["t_mprt"].values())
    after = _peak_rss_mib()
    print(f"peak RSS of the process after Quantus: {after:.0f} MiB ({'+' if after > before else ''}"
          f"{after - before:.0f} MiB over ours: Quantus ran second, so a rise is memory it needed beyond ours)")
    print("\n| check | method | Quantus s | max abs difference (images x steps) |")
    print("|---|---|---:|---:|")
    worst = 0.0
    for m in methods:
        mine = ours["mprt"].values[m]["spearman_abs"]  # (images, steps + 1), step 0 = original
        theirs = q["mprt"][m]
        diffs = [_gap(theirs[name], mine[:, j + 1]) for j, name in enumerate(steps) if name in theirs]
        undefined = int(np.isnan(mine[:, 1:]).sum())
        d = max(diffs) if len(diffs) == len(steps) else float("inf")  # a step missing in Quantus: no agreement
        worst = max(worst, d)
        note = f" ({undefined} undefined in both: constant maps)" if undefined else ""
        print(f"| MPRT | {m} | {q['t_mprt'][m]:.1f} | {d:.2e}{note} |")
    for m in methods:
        d = _gap(q["logit"][m], ours["logit"].values["random"][m]["spearman_abs"])
        worst = max(worst, d)
        print(f"| RandomLogit | {m} | {q['t_logit'][m]:.2f} | {d:.2e} |")
    last = {m: float(np.nanmean(ours["mprt"].values[m]["spearman_abs"][:, -1])) for m in methods}
    first = {m: float(np.nanmean(ours["mprt"].values[m]["spearman_abs"][:, 1])) for m in methods}
    print(f"\nMPRT, {len(methods)} methods: ours {ours['t_mprt']:.1f} s, Quantus {t_q:.1f} s "
          f"-> ours takes {ours['t_mprt'] / t_q:.3f} of Quantus's time ({t_q / ours['t_mprt']:.1f}x faster; "
          f"target <= 0.1)")
    print("mean Spearman |map| after the first step / after the last: " +
          ", ".join(f"{m} {first[m]:.3f} / {last[m]:.3f}" for m in methods))
    print(f"load average at the end: {_load()} (a run whose load exceeds the core count is not worth publishing)")
    ok = worst <= TOLERANCE
    print(f"agreement: worst |ours - Quantus| = {worst:.2e} ({'within' if ok else 'OUTSIDE'} the tolerance "
          f"{TOLERANCE:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
