"""Our randomisation checks side by side with Quantus's MPRT, EfficientMPRT, SmoothMPRT and RandomLogit.

Same model (the offline EfficientNet-Lite0), same images (scikit-image's chelsea, coffee, astronaut,
rocket), same maps (ours, given to Quantus as its ``explain_func``: |map| summed over channels), same
similarity function (Spearman rank correlation), same steps in the same order (top-down cascading,
every module with ``reset_parameters``), the same re-initialisation (each module's
``reset_parameters()`` after ``torch.manual_seed(43)``, which is what Quantus's seed 42 does; BatchNorm
running statistics reset too, as Quantus does -- our default keeps them, as the paper) and the same
random classes. So the numbers should agree to float rounding; the tolerance is stated below.

Efficient MPRT (Hedström et al. 2023) compares the entropy of a map's histogram before and after
randomising every module: Quantus's ``EfficientMPRT`` gets the same maps (float64) and 100 bins, so the
relative rises agree to float rounding. Smooth MPRT is MPRT on SmoothGrad maps: Quantus's ``SmoothMPRT``
gets our seeded SmoothGrad maps (it smooths what ``quantus.explain`` returns, which the benchmark routes
to our maps while it runs; its own smoothing is off: ``nr_samples=1``, whose one sample is noise-free), so
it checks the randomisation and similarity parts on identical maps.

MPRT is timed interleaved (ours, Quantus, ours, Quantus, ...; ``--repeats``), each pair's ratio printed
with the load average, so that one moment's load cannot decide the ratio; beside it the *floor*: the
time of the forward and backward passes MPRT needs (one forward and the backwards the methods need, on
each of the steps + 1 models), measured on the same model in turn with ours, step by step.
``--malloc no-mmap`` gives every tool the glibc settings the ``guided-backprop`` command sets for its own
process (without them, a step of ours page-faults its memory in anew).

    python benchmarks/bench_evaluate.py --threads 2 --repeats 3 --no-smooth --malloc no-mmap   # published, idle
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
from guided_backprop.evaluate import (
    Smoothing,
    class_sensitivity,
    efficient_mprt,
    model_randomization,
    randomization_steps,
)

METHODS = ("guided_backprop", "saliency", "gradcam")
QUANTUS_SEED = 42  # Quantus seeds every reset with seed + 1
TOLERANCE = 1e-4  # |ours - Quantus| per image and step: float rounding of identical maps
#: |ours - Quantus| of Efficient MPRT's relative rise per image: the same float64 maps and bins, so the
#: histograms are equal; what is left is the order of floating-point sums.
EMPRT_TOLERANCE = 1e-9
#: Smooth MPRT's SmoothGrad in the benchmark (the check's default is 50 samples; fewer keep the run short).
SMOOTH_SAMPLES, SMOOTH_NOISE = 4, 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny random network at 32 px, 2 images")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--no-quantus", action="store_true", help="time ours only")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=0, help="interleaved MPRT timings of each tool (0: 1 quick, 2 full)")
    p.add_argument("--no-smooth", action="store_true", help="skip Smooth MPRT (SmoothGrad at every step: slow)")
    p.add_argument("--malloc", choices=("default", "no-mmap"), default="default",
                   help="no-mmap: re-run this script with glibc's mmap and trimming off (MALLOC_MMAP_MAX_=0, "
                        "MALLOC_TRIM_THRESHOLD_), the same for every tool: freed memory is reused instead of "
                        "faulted in again")
    return p.parse_args(argv)


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss in KiB), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _faults() -> tuple[int, float]:
    """Minor page faults and system CPU seconds of this process so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


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
    pictures = [_square(p) for p in (data.chelsea(), data.coffee(), data.astronaut(), data.rocket())]
    return (loaded.model, loaded.prepare(pictures),
            f"{loaded.name}, skimage chelsea/coffee/astronaut/rocket centre-cropped square, 224 px")


def _square(picture: np.ndarray) -> np.ndarray:
    """The centre square of a picture: Quantus takes one batch of one size (our evaluate takes any)."""
    h, w = picture.shape[:2]
    side = min(h, w)
    return picture[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]


def _explain_func(method: str, smooth: Smoothing | None = None):  # type: ignore[no-untyped-def]
    """Quantus's explain_func: our map of ``method`` (SmoothGrad with ``smooth``), |map| summed over channels
    in float64, as our checks sum it, (N, 1, H, W) numpy."""

    def explain(model: nn.Module, inputs: Any, targets: Any, **_kwargs: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
        explainer = gbp.Explainer(model)
        if smooth is not None:
            e = gbp.SmoothGrad(explainer, samples=smooth.samples, noise=smooth.noise).explain(
                x, t, methods=(method,), seed=smooth.seed)
        else:
            e = explainer.explain(x, t, methods=(method,))
        maps = e.maps[method][:, 0]
        return maps.double().abs().sum(dim=1, keepdim=True).numpy()

    return explain


def quantus_order(model: nn.Module) -> list[str]:
    """The step order of Quantus's top-down MPRT: named_modules() with reset_parameters, reversed."""
    return [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]


def ours_mprt(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...], classes: torch.Tensor,
              smoothing: Smoothing | None = None, *, reuse: bool = True, progress: Any = None) -> tuple[Any, float]:
    """Our cascading MPRT of every module (Quantus's steps and seeding), in one batch, and its time;
    ``reuse=False`` recomputes the unchanged bottom layers at every step instead of replaying them;
    ``progress`` is called after each step."""
    t0 = time.perf_counter()
    res = model_randomization(model, x, methods=methods, order="cascading", granularity="modules",
                              metrics=["spearman_abs"], seed=QUANTUS_SEED + 1, classes=classes,
                              keep_running_stats=False, reseed_each_module=True, batch_size=x.shape[0],
                              maps_image=None, smoothing=smoothing, reuse_bottom=reuse, progress=progress)
    return res, time.perf_counter() - t0


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float, tuple[int, float]]:
    """``fn``'s result, wall-clock seconds, CPU seconds of the process (every thread: on a loaded machine
    the CPU time moves less than the wall clock) and (minor page faults, system seconds) of the call."""
    f0, s0 = _faults()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    f1, s1 = _faults()
    return out, wall, cpu, (f1 - f0, s1 - s0)


def run_ours(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...], classes: torch.Tensor,
             smoothing: Smoothing | None) -> dict[str, Any]:
    res, t_mprt = ours_mprt(model, x, methods, classes)
    num_classes = int(model(x[:1]).shape[1])
    draw = np.random.RandomState(QUANTUS_SEED).randint(0, num_classes - 1, x.shape[0])
    others = [int(d + (d >= c)) for d, c in zip(draw, classes.tolist())]  # Quantus's off-class draw
    t0 = time.perf_counter()
    cs = class_sensitivity(model, x, methods=methods, metrics=["spearman_abs"], random_classes=others,
                           batch_size=x.shape[0])
    t_logit = time.perf_counter() - t0
    t0 = time.perf_counter()
    em = efficient_mprt(model, x, methods=methods, granularity="modules", seed=QUANTUS_SEED + 1, classes=classes,
                        keep_running_stats=False, reseed_each_module=True, batch_size=x.shape[0])
    t_emprt = time.perf_counter() - t0
    out = {"mprt": res, "logit": cs, "emprt": em, "t_mprt": t_mprt, "t_logit": t_logit, "t_emprt": t_emprt,
           "num_classes": num_classes}
    if smoothing is not None:
        out["smprt"], out["t_smprt"] = ours_mprt(model, x, methods, classes, smoothing)
    return out


def quantus_mprt(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...], classes: torch.Tensor
                 ) -> tuple[dict[str, Any], dict[str, float]]:
    """Quantus's top-down MPRT of every method on our maps, and each method's time."""
    import warnings

    import quantus

    scores, times = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in methods:
            metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, layer_order="top_down",
                                  seed=QUANTUS_SEED, abs=True, normalise=True, disable_warnings=True)
            t0 = time.perf_counter()
            scores[m] = metric(model=model, x_batch=x.numpy(), y_batch=classes.numpy(), a_batch=None,
                               explain_func=_explain_func(m), device="cpu", batch_size=len(x), channel_first=True)
            times[m] = time.perf_counter() - t0
    return scores, times


def run_quantus(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...], classes: torch.Tensor,
                num_classes: int, smoothing: Smoothing | None) -> dict[str, Any]:
    import warnings

    import quantus

    xb, yb = x.numpy(), classes.numpy()
    out: dict[str, Any] = {"logit": {}, "emprt": {}, "smprt": {}, "t_logit": {}, "t_emprt": {}, "t_smprt": {}}
    out["mprt"], out["t_mprt"] = quantus_mprt(model, x, methods, classes)
    common = {"model": model, "x_batch": xb, "y_batch": yb, "a_batch": None, "device": "cpu",
              "batch_size": len(xb), "channel_first": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in methods:
            rl = quantus.RandomLogit(num_classes=num_classes, seed=QUANTUS_SEED,
                                     similarity_func=quantus.similarity_func.correlation_spearman, abs=True,
                                     normalise=True, disable_warnings=True)
            t0 = time.perf_counter()
            out["logit"][m] = np.asarray(rl(explain_func=_explain_func(m), **common), dtype=np.float64)
            out["t_logit"][m] = time.perf_counter() - t0
            em = quantus.EfficientMPRT(complexity_func_kwargs={"n_bins": 100}, layer_order="top_down",
                                       seed=QUANTUS_SEED, abs=False, normalise=False, disable_warnings=True)
            t0 = time.perf_counter()
            out["emprt"][m] = np.asarray(em(explain_func=_explain_func(m), **common), dtype=np.float64)
            out["t_emprt"][m] = time.perf_counter() - t0
            if smoothing is not None:
                sm = quantus.SmoothMPRT(similarity_func=quantus.similarity_func.correlation_spearman,
                                        layer_order="top_down", seed=QUANTUS_SEED, nr_samples=1, noise_magnitude=0.0,
                                        abs=True, normalise=True, disable_warnings=True)
                # SmoothMPRT smooths what quantus.explain returns (not the explain_func): route it to our
                # seeded SmoothGrad maps while it runs
                real, quantus.explain = quantus.explain, _explain_func(m, smoothing)
                try:
                    t0 = time.perf_counter()
                    out["smprt"][m] = sm(explain_func=_explain_func(m, smoothing), **common)
                    out["t_smprt"][m] = time.perf_counter() - t0
                finally:
                    quantus.explain = real
    return out


def floor_passes(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...], classes: torch.Tensor
                 ) -> tuple[Any, list[tuple[float, float]]]:
    """The floor of MPRT, one model at a time: a function that runs one full forward with gradients and
    the full backwards the methods need (one per distinct ReLU rule, Grad-CAM riding on the plain
    gradient's, or its own when no method has the plain gradient), plain autograd on the trained model, and
    the list of its (wall, CPU) seconds per call. Replaying the unchanged bottom skips part of the
    forwards, so ours can go below it."""
    from guided_backprop.attribution import backward_plan

    backwards = len(backward_plan(methods))
    xr = x.clone().requires_grad_()
    times: list[tuple[float, float]] = []

    def floor_pass(*_progress: int) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        score = model(xr).gather(1, classes[:, None]).sum()
        for k in range(backwards):
            torch.autograd.grad(score, xr, retain_graph=k < backwards - 1)
        times.append((time.perf_counter() - w0, time.process_time() - c0))

    return floor_pass, times


def ours_paired_with_floor(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...], classes: torch.Tensor
                           ) -> dict[str, float]:
    """Our cascading MPRT (as :func:`ours_mprt`) and its floor (:func:`floor_passes`: steps + 1 models),
    interleaved step by step: the floor's first model before ours starts and one more after each of our
    steps, run from its progress callback. Both then see the same machine within a second of each other,
    where whole runs one after the other saw its speed move by 30%. Wall and CPU seconds of each; ours'
    are the call's minus the floor's inside it."""
    floor_pass, times = floor_passes(model, x, methods, classes)
    floor_pass()
    c0 = time.process_time()
    # one batch (ours_mprt: every image), so the progress callback comes once per step, as the pairing needs
    _res, wall = ours_mprt(model, x, methods, classes, progress=floor_pass)
    cpu = time.process_time() - c0
    inside = times[1:]
    return {"ours": wall - sum(t[0] for t in inside), "ours_cpu": cpu - sum(t[1] for t in inside),
            "floor": sum(t[0] for t in times), "floor_cpu": sum(t[1] for t in times), "models": len(times)}


def _gap(a: Any, b: Any) -> float:
    """Largest |a - b|; where both are nan (a constant map: Spearman undefined in both) they agree, where one
    is, they do not (inf)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isnan(a) & np.isnan(b)
    d = np.where(both, 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(d), np.inf, d))) if d.size else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.malloc == "no-mmap":
        from bench_attribution import rerun_without_mmap  # the script's own folder is on sys.path

        rerun_without_mmap()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = gbp.parse_methods(args.methods.split(","))
    model, x, what = _inputs(args.quick)
    classes = model(x).argmax(1).detach()
    steps = randomization_steps(model, x, "modules")
    print(f"# bench_evaluate: {what}; {len(steps)} steps (modules, top-down cascading); methods {', '.join(methods)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
          f"{_load()} at the start; glibc malloc {args.malloc}")
    smoothing = None if args.no_smooth else Smoothing(samples=SMOOTH_SAMPLES, noise=SMOOTH_NOISE, seed=0)
    ours = run_ours(model, x, methods, classes, smoothing)
    have_quantus = importlib.util.find_spec("quantus") is not None and not args.no_quantus
    print(f"ours: MPRT {ours['t_mprt']:.2f} s for the {len(methods)} methods together "
          f"({len(steps)} steps x one forward), Efficient MPRT {ours['t_emprt']:.2f} s, random logit "
          f"{ours['t_logit']:.2f} s" + (f", Smooth MPRT ({SMOOTH_SAMPLES} samples) {ours['t_smprt']:.2f} s"
                                        if smoothing is not None else "") +
          f"; peak RSS of the process {_peak_rss_mib():.0f} MiB")
    if not have_quantus:
        print("quantus: not installed (pip install quantus, the 'bench' extra) - comparison skipped")
        return 0
    same_order = quantus_order(model) == steps
    print(f"step order: Quantus's (named_modules reversed) {'equals' if same_order else 'DIFFERS FROM'} ours "
          f"(forward order reversed)")
    before = _peak_rss_mib()
    q = run_quantus(model, x, methods, classes, ours["num_classes"], smoothing)
    after = _peak_rss_mib()
    print(f"peak RSS of the process after Quantus: {after:.0f} MiB ({'+' if after > before else ''}"
          f"{after - before:.0f} MiB over ours: Quantus ran second, so a rise is memory it needed beyond ours)")
    print("\n| check | method | Quantus s | max abs difference (images x steps) |")
    print("|---|---|---:|---:|")
    worst, worst_emprt = 0.0, 0.0
    for kind in ("mprt", "smprt") if smoothing is not None else ("mprt",):
        for m in methods:
            mine = ours[kind].values[m]["spearman_abs"]  # (images, steps + 1), step 0 = original
            theirs = q[kind][m]
            diffs = [_gap(theirs[name], mine[:, j + 1]) for j, name in enumerate(steps) if name in theirs]
            undefined = int(np.isnan(mine[:, 1:]).sum())
            d = max(diffs) if len(diffs) == len(steps) else float("inf")  # a step missing in Quantus: no agreement
            worst = max(worst, d)
            note = f" ({undefined} undefined in both: constant maps)" if undefined else ""
            print(f"| {'MPRT' if kind == 'mprt' else 'SmoothMPRT'} | {m} | {q['t_' + kind][m]:.1f} | {d:.2e}{note} |")
    for m in methods:
        d = _gap(q["emprt"][m], ours["emprt"].rise[m])
        worst_emprt = max(worst_emprt, d)
        print(f"| EfficientMPRT | {m} | {q['t_emprt'][m]:.2f} | {d:.2e} (rise: ours "
              f"{np.nanmean(ours['emprt'].rise[m]):+.3f}) |")
    for m in methods:
        d = _gap(q["logit"][m], ours["logit"].values["random"][m]["spearman_abs"])
        worst = max(worst, d)
        print(f"| RandomLogit | {m} | {q['t_logit'][m]:.2f} | {d:.2e} |")
    print(f"\nEfficient MPRT, {len(methods)} methods: ours {ours['t_emprt']:.2f} s, Quantus "
          f"{sum(q['t_emprt'].values()):.2f} s")
    if smoothing is not None:
        print(f"Smooth MPRT ({SMOOTH_SAMPLES} SmoothGrad samples), {len(methods)} methods: ours "
              f"{ours['t_smprt']:.1f} s, Quantus {sum(q['t_smprt'].values()):.1f} s (given our smoothed maps)")
    repeats = args.repeats or (1 if args.quick else 2)
    print(f"\nMPRT timed interleaved, {repeats} round(s): ours (replaying the unchanged bottom) | ours recomputing "
          f"it | floor | Quantus, wall-clock s (CPU s of the process); load average 1/5/15 min. Ours and the floor "
          f"run in turn, step by step (ours_paired_with_floor); their page faults are counted together")
    ratios, floors, saved, cpu_ratios = [], [], [], []
    for r in range(repeats):
        pair, _t, _c, f_pair = _timed(ours_paired_with_floor, model, x, methods, classes)
        t_ours, c_ours, t_floor, c_floor = pair["ours"], pair["ours_cpu"], pair["floor"], pair["floor_cpu"]
        assert pair["models"] == len(steps) + 1, pair
        _res, t_plain, c_plain, f_plain = _timed(ours_mprt, model, x, methods, classes, reuse=False)
        (_scores, _times), t_q, c_q, f_q = _timed(quantus_mprt, model, x, methods, classes)
        ratios.append(t_ours / t_q)
        floors.append(t_ours / t_floor)
        saved.append(t_ours / t_plain)
        cpu_ratios.append((c_ours / c_floor, c_ours / c_q))
        print(f"round {r + 1}: ours {t_ours:.1f} ({c_ours:.1f}) | recomputing {t_plain:.1f} ({c_plain:.1f}) | floor "
              f"{t_floor:.1f} ({c_floor:.1f}) | Quantus {t_q:.1f} ({c_q:.1f}) -> ours/Quantus {t_ours / t_q:.2f}, "
              f"ours/floor {t_ours / t_floor:.2f}, ours/recomputing {t_ours / t_plain:.2f} (load {_load()})")
        print("  page faults (system s): " + ", ".join(f"{name} {f:,} ({sy:.1f})" for name, (f, sy) in
              zip(("ours and the floor", "recomputing", "Quantus"), (f_pair, f_plain, f_q))))
    print(f"MPRT, {len(methods)} methods: ours/Quantus {min(ratios):.2f}-{max(ratios):.2f}, median "
          f"{np.median(ratios):.2f} (target <= 0.5), ours/floor {min(floors):.2f}-{max(floors):.2f}, median "
          f"{np.median(floors):.2f} (target <= 1.1), replaying/recomputing "
          f"{min(saved):.2f}-{max(saved):.2f}; in CPU time ours/floor "
          f"{min(c[0] for c in cpu_ratios):.2f}-{max(c[0] for c in cpu_ratios):.2f}, ours/Quantus "
          f"{min(c[1] for c in cpu_ratios):.2f}-{max(c[1] for c in cpu_ratios):.2f}")
    last = {m: float(np.nanmean(ours["mprt"].values[m]["spearman_abs"][:, -1])) for m in methods}
    first = {m: float(np.nanmean(ours["mprt"].values[m]["spearman_abs"][:, 1])) for m in methods}
    print("mean Spearman |map| after the first step / after the last: " +
          ", ".join(f"{m} {first[m]:.3f} / {last[m]:.3f}" for m in methods))
    print(f"load average at the end: {_load()} (a run whose load exceeds the core count is not worth publishing)")
    ok = worst <= TOLERANCE and worst_emprt <= EMPRT_TOLERANCE
    print(f"agreement: worst |ours - Quantus| = {worst:.2e} ({'within' if worst <= TOLERANCE else 'OUTSIDE'} the "
          f"tolerance {TOLERANCE:g}); Efficient MPRT {worst_emprt:.2e} "
          f"({'within' if worst_emprt <= EMPRT_TOLERANCE else 'OUTSIDE'} {EMPRT_TOLERANCE:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
