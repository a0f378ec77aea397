"""The benchmark scripts keep running (their figures are published in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_floor_benchmark_reports_every_variant_with_its_error(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_floor")
    assert bench.main(["--quick", "--models", "resnet18", "--variants", "eager,channels_last,bf16"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"eager", "channels_last", "bf16"} <= set(rows)
    # eager float32 against float64 on a 32x32 input: rounding-level, unless a gate flips;
    # bfloat16 is always far off. Both columns hold one error per sample (batch 2).
    bf16_errors = [float(v) for v in rows["bf16"].split("|")[5].split()]
    assert len(bf16_errors) == 2 and min(bf16_errors) > 1e-3
    assert "GFLOP per image" in out


def test_floor_benchmark_rejects_an_unknown_variant() -> None:
    bench = _load("bench_floor")
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "eager,fp8"])


def test_evaluate_benchmark_quick_agrees_with_quantus_when_installed(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_evaluate")
    have_quantus = importlib.util.find_spec("quantus") is not None
    assert bench.main(["--quick"] + ([] if have_quantus else ["--no-quantus"])) == 0
    out = capsys.readouterr().out
    assert "ours: MPRT" in out
    if have_quantus:  # same maps, steps and re-initialisation: the numbers agree to rounding
        assert "equals ours" in out and "within the tolerance" in out
        assert "| EfficientMPRT | saliency |" in out and "| SmoothMPRT | gradcam |" in out
        assert "ours/Quantus" in out and "ours/floor" in out and "ours/recomputing" in out and "(load " in out


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_explore_benchmark_quick_times_every_kind_of_click(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_explore")
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"new class", "method", "new image", "all"} <= set(rows)
    assert rows["all"].split("|")[2].strip() == "6" and "load average" in out
    assert {"forward (recorded)", "backward (click)", "PNG encoding", "panel (colour maps, layout)"} <= set(rows)
    assert rows["forward (recorded)"].split("|")[2].strip() == "2"  # one forward per image shown (2 of 6 clicks)
