"""Non-finite weights and results (issue 18.3): one error at load naming the tensor; a non-finite output is
that input's failure; every JSON file the main command writes is valid JSON (null, never NaN)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from guided_backprop.errors import CheckpointError, ExitCode, ModelError
from guided_backprop.models import checkpoints
from guided_backprop.records import json_text
from tests.fixtures.cli_images import write_plain
from tests.fixtures.cli_models import tiny
from tests.fixtures.runs import MODELS, TINY, cli_process

FAST = ("--input-size", "32", "--workers", "0")


def strict_json(text: str) -> object:
    """``json.loads`` that refuses NaN and Infinity, as JavaScript's ``JSON.parse`` does."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.slow
def test_non_finite_weights_are_one_error_at_load_naming_the_tensor(tmp_path: Path, value: float) -> None:
    state = tiny().state_dict()
    state["4.weight"][3, 1] = value
    weights = tmp_path / "broken.pt"
    torch.save(state, weights)
    write_plain(tmp_path / "in", 2)
    proc = cli_process(tmp_path / "in", "-o", tmp_path / "out", "--model", TINY, "--weights", weights, *FAST)
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.USAGE, stderr
    (line,) = stderr.strip().splitlines()  # one line: no RuntimeWarning from numpy, no traceback
    assert line.startswith("error: --weights: ") and "'4.weight'" in line and str(weights) in line
    assert ("NaN" if math.isnan(value) else "infinite") in line
    assert not (tmp_path / "out").exists()


def test_a_factory_that_builds_non_finite_weights_is_a_model_error() -> None:
    model = tiny()
    with torch.no_grad():
        model[0].bias[0] = math.nan
    with pytest.raises(ModelError, match=r"tensor '0.bias' holds 1 NaN value\(s\) of 4") as info:
        checkpoints.check_finite(model, source="model 'x'", checkpoint=False)
    assert not isinstance(info.value, CheckpointError)


@pytest.mark.slow
def test_a_non_finite_output_is_that_inputs_failure_and_the_json_stays_json(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    Image.new("RGB", (40, 40), (0, 0, 0)).save(tmp_path / "in" / "dark.png")
    out = tmp_path / "out"
    proc = cli_process(tmp_path / "in", "-o", out, "--model", f"{MODELS}:nan_on_dark", *FAST, "--batch-size", "3")
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.SOME_FAILED, stderr
    assert "RuntimeWarning" not in stderr
    rows = [strict_json(line) for line in (out / "index.jsonl").read_text().splitlines()]
    status = {Path(r["input"]).name: (r["status"], r["error"]) for r in rows}  # type: ignore[index]
    assert status["img000.png"] == ("ok", None) and status["img001.png"] == ("ok", None)
    assert status["dark.png"][0] == "error" and "holds NaN or infinity" in status["dark.png"][1]
    for path in [*out.glob("*.json"), *out.rglob(".guided-backprop/*.json")]:
        strict_json(path.read_text())
    for path in [out / "index.jsonl", *out.rglob("journal-*.jsonl")]:
        for line in path.read_text().splitlines():
            strict_json(line)


def test_json_text_writes_null_for_non_finite_floats() -> None:
    text = json_text({"p": math.nan, "top": [[1, "a", math.inf]], "ok": 0.5})
    assert strict_json(text) == {"p": None, "top": [[1, "a", None]], "ok": 0.5}
