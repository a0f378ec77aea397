#!/usr/bin/env python
"""Side-by-side timing of guided-backprop against Captum, Zennit and pytorch-grad-cam.

Every contender runs on the same inputs, in one process, after warm-up, alternating
round-robin (the starting contender rotates each repeat, so slow drifts of the machine
spread over all of them). For each (model, batch, scenario) the script reports the median
ms/image, images/s, the ratio to PyTorch's floor (plain autograd: one forward and one
input-only backward per map, nothing else) and to Captum, the system time and minor page
faults per call, the peak memory of one call, and whether the maps equal the peers'.

Scenarios:
    forward  the forward pass alone (torch.no_grad), for reference;
    one      one guided-backprop map per image;
    three    guided backprop + deconvnet + saliency of the same image;
    top5     guided-backprop maps of the 5 highest-scoring classes of the same image.

Models have random weights (speed does not depend on them); nothing is downloaded.
Peers (``pip install -e '.[bench]'``) are optional: a missing one is skipped and named.

    python benchmarks/bench_attribution.py                       # the full run (~10-15 min on 2 cores)
    python benchmarks/bench_attribution.py --quick               # a smoke test (tiny inputs, 2 repeats)
    python benchmarks/bench_attribution.py --models vgg19 --batches 8 --scenarios one --json out.json
    python benchmarks/bench_attribution.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a source tree too
import guided_backprop as gbp  # noqa: E402

SCENARIOS = ("forward", "one", "three", "top5")
MODELS = ("vgg19", "resnet50")
CONTENDERS = ("ours", "captum", "zennit", "gradcam")
THREE = ("guided_backprop", "deconvnet", "saliency")
TOPK = 5
# float32 maps computed in another memory layout or summation order differ by rounding:
# a map "equals" the reference when max|a - b| <= REL_TOL * max|b|.
REL_TOL = 1e-3


# --------------------------------------------------------------------------------------------
# machine description
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "guided_backprop": gbp.__version__,
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "device": str(device),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES", "THP_"))},
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    for mod in ("captum", "zennit", "pytorch_grad_cam"):
        try:
            found = __import__(mod)
        except ImportError:
            env[mod] = None
            continue
        env[mod] = getattr(found, "__version__", None) or _dist_version(mod) or "(version unknown)"
    return env


def _dist_version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    name = {"pytorch_grad_cam": "grad-cam"}.get(module, module)
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Sample:
    seconds: float
    sys_seconds: float
    minor_faults: int


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, Sample]:
    """Run ``fn`` once; wall time (synchronised on CUDA), system time and minor page faults."""
    _sync(device)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return out, Sample(t1 - t0, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory of one call above what was in use before it, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the process's RSS sampled every ~1 ms by a
    thread (after ``malloc_trim`` so that memory glibc kept from earlier calls does not hide
    this call's allocations); an estimate that can miss very short peaks.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _malloc_trim()
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    peak[0] = max(peak[0], _rss_bytes())
    return (peak[0] - base) / 2**20


def rel_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max|a - ref| / max|ref| (0 when both are 0)."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    if a.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(ref.shape)}")
    scale = ref.abs().max().item()
    diff = (a - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


# --------------------------------------------------------------------------------------------
# contenders: each returns the maps in one layout, (N, K, C, H, W), for the check
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    """What a scenario's contenders are given: the model, the batch, the classes to explain."""

    model: nn.Module
    x: torch.Tensor
    classes: torch.Tensor  # (N, K): top-1 (K=1) or top-5 (K=5) of a plain forward
    device: torch.device
    gradcam_model: nn.Module | None = None  # pytorch-grad-cam swaps the ReLUs of the model it gets


Contender = Callable[[Case], torch.Tensor]


def floor(n_maps: int, channels_last: bool = False) -> Contender:
    """PyTorch's floor: one forward and ``n_maps`` backwards to the input only, plain autograd."""

    def run(c: Case) -> torch.Tensor:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        leaf = c.x.detach().clone(memory_format=fmt).requires_grad_(True)
        out = c.model(leaf)
        scores = out.gather(1, c.classes)  # (N, K); with K < n_maps the same score is reused
        maps = []
        for j in range(n_maps):
            grad_out = torch.zeros_like(scores)
            grad_out[:, j % scores.shape[1]] = 1
            (g,) = torch.autograd.grad(scores, leaf, grad_out, retain_graph=j < n_maps - 1)
            maps.append(g)
        return torch.stack(maps, 1)

    return run


def forward_only(c: Case) -> torch.Tensor:
    with torch.no_grad():
        return c.model(c.x)


def ours_one(c: Case) -> torch.Tensor:
    return gbp.attribute(c.model, c.x, target=c.classes[:, 0], method="guided_backprop")[:, None]


def ours_three(c: Case) -> torch.Tensor:
    e = gbp.Explainer(c.model).explain(c.x, c.classes[:, 0], methods=THREE)
    return torch.cat([e.maps[m] for m in THREE], 1)


_OUR_TOPK_CLASSES: dict[str, torch.Tensor] = {}


def ours_top5(c: Case) -> torch.Tensor:
    e = gbp.Explainer(c.model).explain(c.x, gbp.TopK(TOPK), methods=("guided_backprop",))
    _OUR_TOPK_CLASSES["last"] = e.targets
    return e.maps["guided_backprop"]


def captum_one(c: Case) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    return GuidedBackprop(c.model).attribute(c.x, target=c.classes[:, 0])[:, None]


def captum_three(c: Case) -> torch.Tensor:
    from captum.attr import Deconvolution, GuidedBackprop, Saliency

    t = c.classes[:, 0]
    return torch.stack([
        GuidedBackprop(c.model).attribute(c.x, target=t),
        Deconvolution(c.model).attribute(c.x, target=t),
        Saliency(c.model).attribute(c.x, target=t, abs=False),
    ], 1)


def captum_top5(c: Case) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    gb = GuidedBackprop(c.model)
    return torch.stack([gb.attribute(c.x, target=c.classes[:, j]) for j in range(c.classes.shape[1])], 1)


def zennit_maps(c: Case, k: int) -> torch.Tensor:
    from zennit.attribution import Gradient
    from zennit.composites import GuidedBackprop

    maps = []
    with Gradient(model=c.model, composite=GuidedBackprop()) as attributor:
        for j in range(k):
            one_hot = torch.zeros(c.x.shape[0], _num_classes(c), device=c.device)
            one_hot[torch.arange(c.x.shape[0], device=c.device), c.classes[:, j]] = 1
            _, rel = attributor(c.x, one_hot)
            maps.append(rel)
    return torch.stack(maps, 1)


def _num_classes(c: Case) -> int:
    last = [m for m in c.model.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def gradcam_one(c: Case) -> torch.Tensor:
    """pytorch-grad-cam explains sample 0 of its input only: one call per image."""
    from pytorch_grad_cam import GuidedBackpropReLUModel

    assert c.gradcam_model is not None
    gm = GuidedBackpropReLUModel(c.gradcam_model, device=c.device)
    maps = []
    for i in range(c.x.shape[0]):
        # a fresh leaf: it sets requires_grad on, and accumulates .grad into, the tensor it gets
        hwc = gm(c.x[i : i + 1].clone(), int(c.classes[i, 0]))
        maps.append(torch.from_numpy(hwc).permute(2, 0, 1))
    return torch.stack(maps)[:, None]


def contenders_for(scenario: str, wanted: Sequence[str], available: set[str]) -> dict[str, Contender]:
    """The rows of one scenario, references first. Peers that are not installed are left out."""
    table: dict[str, dict[str, Contender]] = {
        "forward": {"pytorch forward (no_grad)": forward_only},
        "one": {
            "pytorch floor": floor(1),
            "pytorch floor, channels_last input": floor(1, channels_last=True),
            "ours": ours_one,
            "captum": captum_one,
            "zennit": lambda c: zennit_maps(c, 1),
            "gradcam": gradcam_one,
        },
        "three": {"pytorch floor": floor(3), "ours": ours_three, "captum": captum_three},
        "top5": {
            "pytorch floor": floor(TOPK),
            "ours": ours_top5,
            "captum": captum_top5,
            "zennit": lambda c: zennit_maps(c, TOPK),
        },
    }
    rows = table[scenario]
    return {k: v for k, v in rows.items() if k.startswith("pytorch") or (k in wanted and k in available)}


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
@dataclass
class Result:
    model: str
    batch: int
    scenario: str
    contender: str
    ms_per_image: float
    images_per_s: float
    x_floor: float | None = None
    x_captum: float | None = None
    sys_s_per_call: float = 0.0
    minor_faults_per_call: float = 0.0
    peak_mib: float | None = None
    check: str = ""
    rel_error: float | None = None
    samples_ms: list[float] = field(default_factory=list)


def build_model(name: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval().to(device)


def run_scenario(
    name: str, model: nn.Module, gradcam_model: nn.Module | None, batch: int, scenario: str,
    args: argparse.Namespace, available: set[str], device: torch.device, log: Callable[[str], None],
) -> list[Result]:
    gen = torch.Generator().manual_seed(1000 * batch + len(scenario))
    x = torch.randn(batch, 3, args.size, args.size, generator=gen).to(device)
    with torch.no_grad():
        logits = model(x)
    classes = logits.topk(TOPK if scenario == "top5" else 1, dim=1).indices
    case = Case(model, x, classes, device, gradcam_model)
    rows = contenders_for(scenario, args.contenders, available)

    # warm-up; the first call's maps are checked against the first peer (or ours).
    outputs: dict[str, torch.Tensor] = {}
    for label, fn in rows.items():
        for w in range(max(1, args.warmup)):
            out = fn(case)
            if w == 0:
                outputs[label] = out.detach().cpu()
        log(f"  warm {name} b={batch} {scenario}: {label}")
    checks = _check(scenario, outputs, case)

    labels = list(rows)
    samples: dict[str, list[Sample]] = {k: [] for k in labels}
    for r in range(args.repeats):
        order = labels[r % len(labels):] + labels[: r % len(labels)]
        for label in order:
            _, s = timed(lambda fn=rows[label]: fn(case), device)
            samples[label].append(s)
        log(f"  repeat {r + 1}/{args.repeats} {name} b={batch} {scenario}: "
            + ", ".join(f"{k} {samples[k][-1].seconds * 1000 / batch:.0f}" for k in labels))
    peaks = {k: peak_memory(lambda fn=rows[k]: fn(case), device) for k in labels} if args.memory else {}

    results = []
    for label in labels:
        secs = [s.seconds for s in samples[label]]
        med = statistics.median(secs)
        results.append(Result(
            model=name, batch=batch, scenario=scenario, contender=label,
            ms_per_image=1000 * med / batch, images_per_s=batch / med,
            sys_s_per_call=statistics.median(s.sys_seconds for s in samples[label]),
            minor_faults_per_call=statistics.median(s.minor_faults for s in samples[label]),
            peak_mib=peaks.get(label), check=checks.get(label, ("", None))[0],
            rel_error=checks.get(label, ("", None))[1],
            samples_ms=[round(1000 * s / batch, 2) for s in secs],
        ))
    by = {r.contender: r for r in results}
    ref_floor = by.get("pytorch floor") or by.get("pytorch forward (no_grad)")
    for r in results:
        if ref_floor is not None:
            r.x_floor = r.ms_per_image / ref_floor.ms_per_image
        if "captum" in by:
            r.x_captum = r.ms_per_image / by["captum"].ms_per_image
    return results


def _check(scenario: str, outputs: dict[str, torch.Tensor], case: Case) -> dict[str, tuple[str, float | None]]:
    """Every map against ours (ours against the first peer); mismatches are reported, not hidden."""
    if scenario == "forward":
        return {}
    checks: dict[str, tuple[str, float | None]] = {}
    ours = outputs.get("ours")
    peers = [k for k in outputs if not k.startswith("pytorch") and k != "ours"]
    reference_label = "ours" if ours is not None else (peers[0] if peers else None)
    if reference_label is None:
        return {}
    ref = outputs[reference_label]
    for label, out in outputs.items():
        if label == reference_label or (label.startswith("pytorch") and scenario != "one"):
            continue
        if label.startswith("pytorch"):
            continue  # the floor computes the plain gradient, not guided backprop
        try:
            err = rel_error(out, ref)
        except ValueError as exc:
            checks[label] = (f"MISMATCH ({exc})", None)
            continue
        checks[label] = ("ok" if err <= REL_TOL else "MISMATCH", err)
    if scenario == "top5" and ours is not None and "last" in _OUR_TOPK_CLASSES:
        if not torch.equal(_OUR_TOPK_CLASSES["last"].cpu(), case.classes.cpu()):
            for label in checks:
                checks[label] = ("MISMATCH (ours picked other top-5 classes than a plain forward)", None)
    if ours is not None and peers:
        checks["ours"] = checks[peers[0]][0] + f" (vs {peers[0]})", checks[peers[0]][1]
    if scenario == "three" and ours is not None:
        # saliency (the third map) must also equal PyTorch's own input gradient
        plain = floor(1)(case).detach().cpu()[:, 0]
        err = rel_error(ours[:, 2], plain)
        if err > REL_TOL:
            checks["ours"] = ("MISMATCH (saliency vs plain autograd)", err)
    return checks


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def markdown(results: Sequence[Result], env: dict[str, Any], args: argparse.Namespace) -> str:
    peers = ", ".join(f"{k} {env.get(k) or 'not installed'}" for k in ("captum", "zennit", "pytorch_grad_cam"))
    lines = [
        f"## guided-backprop benchmark ({env['date']})",
        "",
        f"- CPU: {env['cpu']} ({env['cpu_count']} logical CPUs), torch threads: {env['torch_threads']}"
        + (f"; GPU: {env['gpu']}" if "gpu" in env else ""),
        f"- device: {env['device']}; torch {env['torch']}, torchvision {env['torchvision']}, oneDNN: {env['mkldnn']}; "
        f"malloc settings: {env['malloc_env'] or 'glibc defaults'}",
        f"- guided-backprop {env['guided_backprop']}; {peers}",
        f"- input {args.size}x{args.size} float32, random weights; {args.warmup} warm-up call(s), median of "
        f"{args.repeats} round-robin repeats; load average {env['load_average_start']} at start, "
        f"{env.get('load_average_end')} at end",
        "- x floor: time / PyTorch's floor for the scenario (one forward + one input-only backward per map; "
        "for the forward: / the one-map floor); "
        "x Captum: time / Captum's; sys s and faults: system time and minor page faults per call (CPU)",
        "",
        "| model | batch | scenario | contender | ms/image | images/s | x floor | x Captum | sys s/call "
        "| minor faults/call | peak MiB | maps |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        check = r.check + (f" ({r.rel_error:.1e})" if r.rel_error is not None else "")
        lines.append(
            f"| {r.model} | {r.batch} | {r.scenario} | {r.contender} | {r.ms_per_image:.1f} | {r.images_per_s:.2f} "
            f"| {_fmt(r.x_floor, '.2f')} | {_fmt(r.x_captum, '.2f')} | {r.sys_s_per_call:.2f} "
            f"| {r.minor_faults_per_call:.0f} | {_fmt(r.peak_mib, '.0f')} | {check} |"
        )
    bad = [r for r in results if "MISMATCH" in r.check]
    lines.append("")
    lines.append(f"Map check: {len(bad)} mismatch(es)" + (": " + "; ".join(
        f"{r.model} b={r.batch} {r.scenario} {r.contender} {r.check} rel {r.rel_error}" for r in bad) if bad else
        f" (every map within {REL_TOL:g} x max|map| of ours)."))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    p.add_argument("--models", type=csv, default=list(MODELS), help="torchvision model names (default: vgg19,resnet50)")
    p.add_argument("--batches", type=lambda s: [int(v) for v in csv(s)], default=[1, 8],
                   help="batch sizes (default 1,8)")
    p.add_argument("--scenarios", type=csv, default=list(SCENARIOS), help=f"any of {','.join(SCENARIOS)}")
    p.add_argument("--contenders", type=csv, default=list(CONTENDERS), help=f"any of {','.join(CONTENDERS)}")
    p.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per contender (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per contender first (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory pass")
    p.add_argument("--json", type=Path, default=None, help="also write the results and the machine as JSON")
    p.add_argument("--malloc", choices=("default", "no-mmap"), default="default",
                   help="no-mmap: re-run this script with glibc's mmap off (MALLOC_MMAP_MAX_=0) and freed memory "
                        "kept (MALLOC_TRIM_THRESHOLD_), so large tensors cost no page faults")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 32x32 inputs, batches 1,2, 2 repeats (timings meaningless)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.warmup = 32, 2, 1
        if args.batches == [1, 8]:
            args.batches = [1, 2]
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    for c in args.contenders:
        if c not in CONTENDERS:
            p.error(f"unknown contender {c!r}; choose from {', '.join(CONTENDERS)}")
    for m in args.models:
        if not hasattr(torchvision.models, m):
            p.error(f"unknown torchvision model {m!r}")
    return args


def available_peers() -> set[str]:
    found = {"ours"}
    for label, module in (("captum", "captum"), ("zennit", "zennit"), ("gradcam", "pytorch_grad_cam")):
        try:
            __import__(module)
            found.add(label)
        except ImportError:
            print(f"note: {module} is not installed; {label} is skipped (pip install -e '.[bench]')", file=sys.stderr)
    return found


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns on every call
        yield


#: glibc settings of ``--malloc no-mmap``: every allocation served from the heap and freed memory kept (no
#: mmap/munmap and no page faults per large tensor). Read when the process starts.
NO_MMAP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30)}


def rerun_without_mmap() -> None:
    """Re-run this script with :data:`NO_MMAP_ENV` (glibc reads it only at start-up), unless already set."""
    if any(os.environ.get(k) != v for k, v in NO_MMAP_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **NO_MMAP_ENV})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.malloc == "no-mmap":
        rerun_without_mmap()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if device.type == "cuda":
        # guided-backprop turns TF32 off during its calls (TF32 changes maps by up to ~10% of their max);
        # the peers and the floor get the same full float32 math, so that times and maps compare.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    available = available_peers()
    env = environment(device)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{env['cpu']}, {env['torch_threads']} threads, device {device}, load {env['load_average_start']}")
    results: list[Result] = []
    with _quiet():
        for name in args.models:
            model = build_model(name, device)
            gradcam_model = copy.deepcopy(model) if "gradcam" in available and "gradcam" in args.contenders else None
            for batch in args.batches:
                for scenario in args.scenarios:
                    results += run_scenario(name, model, gradcam_model, batch, scenario, args, available, device, log)
            del model, gradcam_model
            gc.collect()
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    for r in results:  # the forward's share of the one-map floor
        if r.scenario == "forward":
            one = [f for f in results if (f.model, f.batch, f.scenario, f.contender) == (r.model, r.batch, "one",
                                                                                        "pytorch floor")]
            r.x_floor = r.ms_per_image / one[0].ms_per_image if one else None
    table = markdown(results, env, args)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                     for k, v in vars(args).items()},
                   "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=1))
    return 1 if any("MISMATCH" in r.check for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
