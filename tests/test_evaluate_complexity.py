"""Efficient MPRT and Smooth MPRT (Hedström et al. 2023, arXiv:2401.06465) on hand-made cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from guided_backprop import ModelSpec
from guided_backprop.evaluate import (
    ComplexityResult,
    CurveResult,
    Smoothing,
    discrete_entropy,
    efficient_mprt,
    model_randomization,
    randomization_steps,
    randomized_models,
)
from tests.fixtures.cli_images import write_plain

REPO = Path(__file__).resolve().parents[1]


def test_a_constant_map_has_zero_entropy() -> None:
    assert discrete_entropy(torch.zeros(3, 8, 8)) == 0.0
    assert discrete_entropy(torch.full((3, 8, 8), -2.5)) == 0.0


def test_a_map_with_a_uniform_histogram_has_the_maximum() -> None:
    plane = torch.arange(1000, dtype=torch.float64).reshape(10, 100)  # 10 values in each of 100 bins
    assert discrete_entropy(plane) == pytest.approx(math.log(100), abs=1e-12)
    noisy = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert 0 < discrete_entropy(noisy) < math.log(100)
    # the definition: scipy's entropy of numpy's histogram of |map| summed over channels
    expected = scipy.stats.entropy(np.histogram(noisy.abs().sum(0).numpy(), bins=100)[0])
    assert discrete_entropy(noisy) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(discrete_entropy(torch.tensor([[1.0, float("nan")]])))


class _Fixed(nn.Module):
    """ReLU, then a fixed linear map (a buffer, not a parameter): the maps cannot depend on any weight."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(5, 3 * 6 * 6, generator=torch.Generator().manual_seed(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).flatten(1) @ self.w.T


class _Bias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(5))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.b)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.b


def test_randomising_a_model_whose_maps_cannot_change_gives_no_rise() -> None:
    net = nn.Sequential(_Fixed(), _Bias())
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    res = efficient_mprt(net, x, methods=["saliency", "guided_backprop"], seed=2)
    for m in res.methods:
        np.testing.assert_array_equal(res.trained[m], res.randomized[m])
        np.testing.assert_array_equal(res.rise[m], 0.0)
    assert res.to_json()["methods"]["saliency"]["complexity_rise"] == {"mean": 0.0, "std": 0.0, "n": 3}


def test_the_randomised_model_is_the_one_mprt_ends_with() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 6))
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    res = efficient_mprt(net, x, methods=["saliency"], seed=4, granularity="modules")
    steps = randomization_steps(net, x, "modules")
    *_, (_name, last) = randomized_models(net, steps, seed=4, recurse=False)
    classes = net(x).argmax(1)
    grads = torch.autograd.grad(last(x.requires_grad_()).gather(1, classes[:, None]).sum(), x)[0]
    assert res.randomized["saliency"] == pytest.approx([discrete_entropy(g) for g in grads], abs=1e-9)
    assert not torch.equal(last[0].weight, net[0].weight)  # the caller's model is untouched


def test_smooth_mprt_with_one_noise_free_sample_is_mprt() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    plain = model_randomization(net, x, methods=["saliency"], metrics=["spearman_abs"], seed=1)
    smooth = model_randomization(net, x, methods=["saliency"], metrics=["spearman_abs"], seed=1,
                                 smoothing=Smoothing(samples=1, noise=0.0))
    np.testing.assert_allclose(smooth.values["saliency"]["spearman_abs"], plain.values["saliency"]["spearman_abs"],
                               atol=1e-12)
    assert smooth.to_json()["smoothgrad"] == {"samples": 1, "noise": 0.0}
    noisy = model_randomization(net, x, methods=["saliency"], metrics=["spearman_abs"], seed=1,
                                smoothing=Smoothing(samples=4, noise=0.3))
    before = plain.values["saliency"]["spearman_abs"][:, 1:]
    assert not np.allclose(noisy.values["saliency"]["spearman_abs"][:, 1:], before)


@pytest.mark.slow
def test_evaluate_writes_efficient_and_smooth_mprt(tmp_path: Path) -> None:
    from guided_backprop.cli.commands import main

    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "in"), "-o", str(out), "--model",
                                       f"{REPO / 'tests' / 'fixtures' / 'cli_models.py'}:tiny", "--input-size", "32",
                                       "--methods", "saliency,gradcam", "--checks", "emprt,smprt"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    for m in ("saliency", "gradcam"):
        assert set(doc["efficient_mprt"]["methods"][m]["complexity_rise"]) == {"mean", "std", "n"}
        assert len(doc["smooth_mprt"]["methods"][m]["spearman_abs"]["mean"]) == len(doc["smooth_mprt"]["steps"])
    assert doc["smooth_mprt"]["smoothgrad"] == {"samples": 50, "noise": 0.1}
    assert set(doc["figures"]) == {"efficient_mprt", "smooth_mprt"}
    checks = {line.split(",")[1] for line in (out / "evaluation.csv").read_text(encoding="utf-8").splitlines()[1:]}
    assert checks == {"efficient_mprt", "smooth_mprt_cascading"}
    assert "EMPRT rise" in result.output


def test_the_readings_say_what_fails_with_the_stated_thresholds() -> None:
    from guided_backprop.evaluate import ClassSensitivityResult, ComplexityResult, CurveResult, Evaluation
    from guided_backprop.evaluate.results import RandomizationResult
    from guided_backprop.evaluate.verdict import readings, summary_table

    methods = ("guided_backprop", "gradcam")
    rnd = RandomizationResult(
        order="cascading", granularity="blocks", steps=["original", "top", "bottom"], methods=methods,
        metrics=("spearman_abs",), classes=[0, 0],
        values={"guided_backprop": {"spearman_abs": np.array([[1, 0.99, 0.6], [1, 0.97, 0.5]])},
                "gradcam": {"spearman_abs": np.array([[1, 0.1, np.nan], [1, -0.1, 0.0]])}},
        constant={"guided_backprop": np.zeros((2, 3), bool), "gradcam": np.array([[0, 0, 1], [0, 0, 0]], bool)})
    cls = ClassSensitivityResult(methods=methods, metrics=("spearman_abs",), predicted=[0, 0], random_classes=[1, 1],
                                 second_classes=[2, 2],
                                 values={k: {"guided_backprop": {"spearman_abs": np.array([0.99, 0.98])},
                                             "gradcam": {"spearman_abs": np.array([0.1, 0.2])}}
                                         for k in ("random", "second")})
    em = ComplexityResult(methods=methods, trained={m: np.array([2.0, 2.0]) for m in methods},
                          randomized={"guided_backprop": np.array([2.05, 2.0]), "gradcam": np.array([3.0, 3.0])},
                          steps=["top", "bottom"], classes=[0, 0])
    fractions = np.array([0.0, 0.5, 1.0])
    deletion = CurveResult(mode="deletion", fractions=fractions, classes=[0, 0],
                           curves={"guided_backprop": np.array([[1, 0.1, 0]] * 2),
                                   "gradcam": np.array([[1, 0.9, 0]] * 2)},
                           random=np.array([[1, 0.5, 0]] * 2))
    ev = Evaluation(model="m", images=["a", "b"], seed=0, randomization=rnd, class_sensitivity=cls,
                    efficient_mprt=em, deletion=deletion)
    gbp_words = " ".join(readings(ev, "guided_backprop"))
    assert "fails the randomisation check at the top" in gbp_words and "after full randomisation" in gbp_words
    assert "not class-sensitive" in gbp_words and "Efficient MPRT fails" in gbp_words  # rise 1.25 % <= 5 %
    assert "deletion" not in gbp_words
    cam_words = " ".join(readings(ev, "gradcam"))
    assert "worse than a random pixel order on deletion" in cam_words
    assert "became constant after full randomisation on 1 image(s)" in cam_words
    assert "randomisation check" not in cam_words and "class-sensitive" not in cam_words
    table = summary_table(ev)
    assert table[0].split()[:3] == ["method", "top", "block"] and len(table) == 1 + 2 + 1 + 2
    # a fall in complexity is said as a fall, not as "no rise"
    ev.efficient_mprt = ComplexityResult(methods=methods, trained={m: np.array([2.0, 2.0]) for m in methods},
                                         randomized={m: np.array([1.0, 1.0]) for m in methods},
                                         steps=["top", "bottom"], classes=[0, 0])
    fell = " ".join(readings(ev, "guided_backprop"))
    assert "a 50% fall in complexity" in fell and "no rise" not in fell
    ev.efficient_mprt.randomized = {m: np.array([0.28, 0.28]) for m in methods}  # an 86% fall: "an", as it is read
    assert "an 86% fall in complexity" in " ".join(readings(ev, "guided_backprop"))


def test_efficient_mprt_costs_two_explanations_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trained model's maps are computed once (and checked for NaN) and shared by every check."""
    from guided_backprop.attribution import Explainer
    from guided_backprop.evaluate.run import EvaluateConfig, evaluate_folder

    real, calls = Explainer.explain, []

    def counted(self: Explainer, x: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(x.shape[0])
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", counted)
    write_plain(tmp_path / "in", 3)
    cfg = EvaluateConfig(model=ModelSpec(f"{REPO / 'tests' / 'fixtures' / 'cli_models.py'}:tiny",
                                         preprocessing={"input_size": 32}),
                         methods=["saliency", "gradcam"], checks=["emprt", "deletion"], steps=2, batch_size=2)
    run = evaluate_folder(tmp_path / "in", tmp_path / "out", cfg)
    assert run.evaluation.efficient_mprt is not None and len(run.evaluation.images) == 3
    assert calls == [2, 2, 1, 1]  # per batch (2 images, then 1): the trained maps, the randomised maps


def test_worse_than_random_needs_a_margin_beyond_the_spread_over_images() -> None:
    from guided_backprop.evaluate.figures import worse_than_random

    fractions = np.array([0.0, 0.5, 1.0])

    def deletion(method_middle: list[float], random_middle: list[float]) -> CurveResult:
        return CurveResult(mode="deletion", fractions=fractions, classes=[0] * len(method_middle),
                           curves={"m": np.array([[1, v, 0] for v in method_middle])},
                           random=np.array([[1, v, 0] for v in random_middle]))

    # means 0.01 apart in the middle point (AUC 0.005): within the margin, not a finding
    assert not worse_than_random(deletion([0.51, 0.51], [0.50, 0.50]), "m")
    # a mean above random by 0.1 in AUC, but the images disagree widely: within two standard errors
    assert not worse_than_random(deletion([0.9, 0.1, 0.9, 0.1, 1.0], [0.5, 0.5, 0.5, 0.5, 0.1]), "m")
    # every image worse by 0.2 in AUC: worse; and with one image, beyond the fixed margin: worse
    assert worse_than_random(deletion([0.9, 0.9, 0.8], [0.5, 0.5, 0.4]), "m")
    assert worse_than_random(deletion([0.9], [0.5]), "m")
    insertion = CurveResult(mode="insertion", fractions=fractions, classes=[0, 0],
                            curves={"m": np.array([[0, 0.1, 1], [0, 0.2, 1]])}, random=np.array([[0, 0.6, 1]] * 2))
    assert worse_than_random(insertion, "m")


def test_the_efficient_mprt_title_names_what_was_randomised_in_words() -> None:
    from guided_backprop.evaluate.figures import emprt_title

    def title(steps: int, granularity: str, images: int) -> str:
        return emprt_title(ComplexityResult(methods=("saliency",), trained={}, randomized={},
                                            steps=[f"s{i}" for i in range(steps)], classes=[0] * images,
                                            granularity=granularity))

    assert "(all 12 blocks)" in title(12, "blocks", 5) and "blocks steps" not in title(12, "blocks", 5)
    assert "(all 99 modules)" in title(99, "modules", 1) and "mean over 1 image;" in title(99, "modules", 1)
    assert "(all 1 named block)" in title(1, "named", 2)
