#!/usr/bin/env python
"""End-to-end timing of the ``guided-backprop`` command against the compute alone.

For each image count (default 200 and 1000) the script

1. generates that many JPEGs (photo-sized, 500x375, smooth random content; once, reused);
2. runs ``guided-backprop IMAGES -o OUT --model M --weights W --batch-size B --workers K -q`` as a
   subprocess (decode, compute, PNG encode, index files), timing it wall-clock and polling the
   peak RSS of the process and of its whole tree (the DataLoader decode workers included);
3. times the compute alone for the same images and model in this process (at the smallest count
   unless ``--compute-all``): the images are decoded and preprocessed first (untimed), then
   ``Explainer.explain`` runs batch after batch with the same batch size and methods.

It reports images/s of both, their ratio (the target: the command at >= 0.9x the compute-only
throughput, i.e. decoding and encoding overlap with the compute), the command's throughput
without its start-up (model load, imports) from the difference of two image counts, and the
peak RSS at each count (the target: flat from 200 to 1000 images).

    python benchmarks/bench_cli.py                         # 200 and 1000 images, VGG19 (random weights)
    python benchmarks/bench_cli.py --quick                 # smoke test: 12 and 24 small images
    python benchmarks/bench_cli.py --model efficientnet_lite0 --weights default --counts 200
    python benchmarks/bench_cli.py --malloc no-mmap        # the command with glibc's mmap switched off
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a source tree too
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import NO_MMAP_ENV, cpu_model  # noqa: E402

import guided_backprop as gbp  # noqa: E402


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def make_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``count`` JPEGs of ``size`` (w, h) in ``folder``: smooth colour fields with edges, like photos
    for the decoder (pure noise would make decoding unrealistically slow). Existing files are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng(seed + i)
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] = 128 + 80 * np.sin(fx * xx + ph) * np.cos(fy * yy)
        for _ in range(6):  # a few flat rectangles: edges
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            dy, dx = int(rng.integers(20, h // 2)), int(rng.integers(20, w // 2))
            img[y0 : y0 + dy, x0 : x0 + dx] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape)  # sensor noise
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return paths


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def _tree_rss(proc: Any) -> tuple[int, int]:
    """(RSS of the process, sum of RSS over it and its descendants) in bytes; shared pages are
    counted once per process in the sum, so the sum is an upper bound."""
    import psutil

    try:
        own = proc.memory_info().rss
    except psutil.Error:
        return 0, 0
    total = own
    try:
        children = proc.children(recursive=True)
    except psutil.Error:
        children = []
    for ch in children:
        try:
            total += ch.memory_info().rss
        except psutil.Error:
            pass
    return own, total


def run_command(images: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the command once; wall time, exit code, peak RSS (process, tree), outputs found."""
    import psutil

    exe = shutil.which("guided-backprop", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    cmd = [exe] if exe else [sys.executable, "-m", "guided_backprop"]
    cmd += [str(images), "-o", str(out), "--model", args.model, "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "--methods", args.methods, "--device", args.device, "-q", "--overwrite"]
    if args.weights:
        cmd += ["--weights", args.weights]
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))
    if args.malloc == "no-mmap":
        env.update(NO_MMAP_ENV)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    peak = {"own": 0, "tree": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            own, tree = _tree_rss(ps)
            peak["own"], peak["tree"] = max(peak["own"], own), max(peak["tree"], tree)
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        stdout, stderr = proc.communicate()
    finally:
        done.set()
        th.join()
    seconds = time.perf_counter() - t0
    ok = errors = 0
    index = out / "index.jsonl"
    if index.is_file():
        for line in index.read_text().splitlines():
            rec = json.loads(line)
            ok += rec.get("status") == "ok"
            errors += rec.get("status") != "ok"
    return {
        "command": " ".join(cmd), "seconds": seconds, "returncode": proc.returncode,
        "peak_rss_mib": peak["own"] / 2**20, "peak_tree_rss_mib": peak["tree"] / 2**20,
        "ok": ok, "errors": errors, "pngs": sum(1 for _ in out.glob("*.png")),
        "stderr_tail": stderr[-2000:], "stdout_tail": stdout[-2000:],
    }


# --------------------------------------------------------------------------------------------
# the compute alone
# --------------------------------------------------------------------------------------------
def compute_only(paths: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of ``Explainer.explain`` over the images, batch by batch (decoding not timed)."""
    from guided_backprop.images import load_image
    from guided_backprop.models import load_model

    device = torch.device("cpu" if args.device == "auto" and not torch.cuda.is_available() else
                          ("cuda" if args.device == "auto" else args.device))
    loaded = load_model(args.model, weights=args.weights or None, device=device)
    tensors = [loaded.preprocessing(load_image(p)) for p in paths]
    ex = gbp.Explainer(loaded.model)
    methods = gbp.parse_methods(args.methods.split(","))
    batches = [torch.stack(tensors[i : i + args.batch_size]).to(device) for i in range(0, len(tensors),
                                                                                          args.batch_size)]
    ex.explain(batches[0][:1], methods=methods)  # warm-up (one image)
    per_batch = []
    t0 = time.perf_counter()
    for b in batches:
        t = time.perf_counter()
        e = ex.explain(b, methods=methods)
        for m in e.maps.values():
            m.cpu()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        per_batch.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": len(paths), "median_batch_s": statistics.median(per_batch),
            "model": loaded.name, "weights": loaded.weights}


# --------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="200,1000", help="image counts, comma-separated (default 200,1000)")
    p.add_argument("--model", default="vgg19", help="model name for the command and load_model (default vgg19)")
    p.add_argument("--weights", default="random",
                   help="weights for the command ('random' default: nothing downloaded; '' for the model's own)")
    p.add_argument("--methods", default="guided_backprop", help="methods, comma-separated (default guided_backprop)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="decode workers of the command (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS / torch threads for both")
    p.add_argument("--size", default="500x375", help="JPEG size WxH (default 500x375)")
    p.add_argument("--images", type=Path, default=None, help="folder for the generated JPEGs (default: a temp dir)")
    p.add_argument("--malloc", choices=("default", "no-mmap"), default="default",
                   help="no-mmap: run the command with MALLOC_MMAP_MAX_=0 and a large MALLOC_TRIM_THRESHOLD_")
    p.add_argument("--no-compute", dest="compute", action="store_false", help="skip the compute-only timing")
    p.add_argument("--compute-all", action="store_true",
                   help="time the compute alone at every count (default: at the smallest only; its rate is per image)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the output folders")
    p.add_argument("--quick", action="store_true", help="smoke test: 12 and 24 images of 96x72 (timings meaningless)")
    args = p.parse_args(argv)
    if args.quick:
        args.size = "96x72"
        if args.counts == p.get_default("counts"):
            args.counts = "12,24"
    args.count_list = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    w, h = (int(v) for v in args.size.lower().split("x"))
    args.wh = (w, h)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("error: psutil is needed for the RSS polling: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="gbp-bench-cli-"))
    images_root = args.images or tmp / "images"
    env = {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
           "guided_backprop": gbp.__version__, "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    rows = []
    try:
        all_paths = make_jpegs(images_root / "all", max(args.count_list), args.wh)
        for n in args.count_list:
            folder = images_root / f"n{n}"
            if not folder.is_dir():  # a folder with exactly n images (links to the generated files)
                folder.mkdir(parents=True)
                for p in all_paths[:n]:
                    os.link(p, folder / p.name)
            print(f"command on {n} images ...", file=sys.stderr, flush=True)
            out = tmp / f"out{n}"
            cmd = run_command(folder, out, args)
            if cmd["returncode"] != 0 or cmd["ok"] != n:
                print(f"warning: the command exited {cmd['returncode']} with {cmd['ok']}/{n} ok:\n"
                      f"{cmd['stderr_tail']}", file=sys.stderr)
            comp = None
            if args.compute and (args.compute_all or n == args.count_list[0]):
                print(f"compute only on {n} images ...", file=sys.stderr, flush=True)
                comp = compute_only(all_paths[:n], args)
            rows.append({"images": n, "command": cmd, "compute": comp})
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.images is None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(markdown(rows, env, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "settings": {k: str(v) for k, v in vars(args).items()},
                                         "results": rows}, indent=1))
    return 0 if all(r["command"]["returncode"] == 0 for r in rows) else 1


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"## guided-backprop command benchmark ({env['date']})",
        "",
        f"- CPU: {env['cpu']} ({env['cpu_count']} logical CPUs), torch threads: {env['torch_threads']}; "
        f"torch {env['torch']}; guided-backprop {env['guided_backprop']}",
        f"- model {args.model} (weights: {args.weights or 'its own'}), methods {args.methods}, batch size "
        f"{args.batch_size}, {args.workers} decode worker(s), device {args.device}, malloc {args.malloc}; "
        f"JPEGs {args.wh[0]}x{args.wh[1]}",
        f"- load average {env['load_average_start']} at start, {env['load_average_end']} at end",
        "",
        "| images | command s | command img/s | compute-only img/s | command / compute | "
        "peak RSS MiB (process) | peak RSS MiB (tree, upper bound) | ok | PNGs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rate = next((r["compute"] for r in rows if r["compute"]), None)
    for r in rows:
        c, k = r["command"], r["compute"] or rate
        cmd_ips = r["images"] / c["seconds"]
        comp_ips = k["images"] / k["seconds"] if k else None
        ratio = f"{cmd_ips / comp_ips:.2f}" if comp_ips else ""
        lines.append(f"| {r['images']} | {c['seconds']:.1f} | {cmd_ips:.2f} | "
                     f"{'' if comp_ips is None else format(comp_ips, '.2f')} | {ratio} | {c['peak_rss_mib']:.0f} | "
                     f"{c['peak_tree_rss_mib']:.0f} | {c['ok']} | {c['pngs']} |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        extra = b["images"] - a["images"]
        marginal = extra / (b["command"]["seconds"] - a["command"]["seconds"])
        k = b["compute"] or rate
        ratio = f" = {marginal / (k['images'] / k['seconds']):.2f}x the compute-only rate" if k else ""
        lines += ["", f"Without start-up (the {extra} images between the two runs): {marginal:.2f} img/s{ratio}. "
                  f"Peak RSS {a['command']['peak_rss_mib']:.0f} -> {b['command']['peak_rss_mib']:.0f} MiB "
                  f"from {a['images']} to {b['images']} images."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
