#!/usr/bin/env python
"""How far below PyTorch's floor can one map go, and what does it cost in accuracy?

The floor is plain autograd: one forward and one input-only backward (the saliency map, i.e. the
input gradient of one class score). This script times it in four ways, alternating in one process,
and compares every variant's map with the same computation in float64:

    eager          float32, NCHW: what guided-backprop and its peers compute;
    channels_last  float32, the input converted to channels_last (oneDNN's preferred layout);
    compile        float32, ``torch.compile`` of the model (weights frozen for the compiled copy, so
                   its backward computes no weight gradients; compile time is reported apart);
    bf16           ``torch.autocast`` bfloat16.

Accuracy per sample: ``max |map - map64| / max |map64|``, and the share of pixels off by more than
1e-3 of that maximum. Maps of ReLU networks are discontinuous in their inputs (a gate whose input is
within rounding of 0 flips, and everything behind it changes), so any change of rounding can move
them; the float32 eager map is the yardstick for what "equal" can mean.

It also counts the floor's FLOPs (``torch.utils.flop_counter``) and reports the achieved GFLOP/s.
Random weights, random inputs (seeded); nothing is downloaded.

    python benchmarks/bench_floor.py                                # VGG19 and ResNet50, batch 8
    python benchmarks/bench_floor.py --models vgg19 --variants eager,channels_last --repeats 7
    python benchmarks/bench_floor.py --quick                        # smoke test (32x32, 2 repeats)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import Case, cpu_model, floor  # noqa: E402

VARIANTS = ("eager", "channels_last", "compile", "bf16")
CLASS = 3


def input_gradient(model: nn.Module, x0: torch.Tensor, *, channels_last: bool = False,
                   autocast: bool = False) -> torch.Tensor:
    """The floor of ``bench_attribution.py`` (the same function): d score[CLASS] / d input."""
    case = Case(model, x0, torch.full((x0.shape[0], 1), CLASS), x0.device)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        maps = floor(1, channels_last=channels_last)(case)
    return maps[:, 0].float()


def accuracy(g: torch.Tensor, g64: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per sample: max error / max |g64|, and the share of values off by more than 1e-3 of that max."""
    d = (g.double() - g64).abs().flatten(1)
    scale = g64.abs().flatten(1).amax(dim=1, keepdim=True).clamp_min(1e-300)
    rel = d / scale
    return rel.amax(dim=1).tolist(), (rel > 1e-3).double().mean(dim=1).tolist()


def floor_flops(model: nn.Module, x0: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    # A frozen copy and .backward(): the counter's module hooks do not support autograd.grad to a
    # leaf, and frozen weights keep weight gradients out of the count, as in the floor.
    frozen = copy.deepcopy(model).requires_grad_(False)
    x = x0.clone().requires_grad_(True)
    counter = FlopCounterMode(display=False)
    with counter:
        frozen(x)[:, CLASS].sum().backward()
    return int(counter.get_total_flops())


def run_model(name: str, args: argparse.Namespace) -> list[str]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x0 = torch.randn(args.batch, 3, args.size, args.size)
    lines = [f"### {name}, batch {args.batch}, {args.size}x{args.size}", ""]

    model64 = copy.deepcopy(model).double()
    g64 = input_gradient(model64, x0.double())
    del model64
    flops = floor_flops(model, x0)

    calls: dict[str, Callable[[], torch.Tensor]] = {}
    notes: dict[str, str] = {}
    for v in args.variants:
        if v == "eager":
            calls[v] = lambda: input_gradient(model, x0)
        elif v == "channels_last":
            calls[v] = lambda: input_gradient(model, x0, channels_last=True)
        elif v == "bf16":
            calls[v] = lambda: input_gradient(model, x0, autocast=True)
        elif v == "compile":
            frozen = copy.deepcopy(model).requires_grad_(False)
            compiled = torch.compile(frozen)
            t = time.perf_counter()
            input_gradient(compiled, x0)  # compiles
            notes[v] = f"compile and first call {time.perf_counter() - t:.1f} s"
            calls[v] = lambda net=compiled: input_gradient(net, x0)

    maps = {v: fn() for v, fn in calls.items()}  # warm-up, kept for the accuracy check
    times: dict[str, list[float]] = {v: [] for v in calls}
    order = list(calls)
    for r in range(args.repeats):
        for v in order[r % len(order):] + order[: r % len(order)]:
            t = time.perf_counter()
            calls[v]()
            times[v].append((time.perf_counter() - t) / args.batch * 1000)

    base = statistics.median(times["eager"]) if "eager" in times else None
    lines += ["| variant | ms/image | x eager | GFLOP/s | max error / max, per sample "
              "| pixels off > 1e-3, per sample | note |",
              "|---|---:|---:|---:|---|---|---|"]
    for v in calls:
        ms = statistics.median(times[v])
        err, off = accuracy(maps[v], g64)
        ratio = f"{ms / base:.2f}" if base else ""
        gflops = flops / args.batch / (ms / 1000) / 1e9
        lines.append(f"| {v} | {ms:.1f} | {ratio} | {gflops:.0f} | {' '.join(f'{e:.0e}' for e in err)} | "
                     f"{' '.join(f'{o:.1%}' for o in off)} | {notes.get(v, '')} |")
    lines += ["", f"Floor FLOPs: {flops / args.batch / 1e9:.1f} GFLOP per image (forward + input-only backward).", ""]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vgg19,resnet50", help="torchvision model names")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {','.join(VARIANTS)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke test: 32x32, batch 2, 2 repeats")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    bad = sorted(set(args.variants) - set(VARIANTS))
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    if args.quick:
        args.size, args.batch, args.repeats = 32, 2, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"## PyTorch floor variants ({time.strftime('%Y-%m-%dT%H:%M:%S')})\n")
    print(f"- CPU: {cpu_model()}, torch threads: {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"- median of {args.repeats} round-robin repeats after a warm-up; errors against float64\n")
    for name in args.models:
        print("\n".join(run_model(name, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
