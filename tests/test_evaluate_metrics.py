"""The similarity metrics of Adebayo et al. on hand-made maps, and the summaries over images."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from guided_backprop.errors import UnknownNameError
from guided_backprop.evaluate import similarity
from guided_backprop.evaluate.results import summarize
from guided_backprop.evaluate.similarity import Reference, hog, similarities, spearman, spearman_abs, ssim


def _map(seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_maps_score_one_on_every_metric() -> None:
    m = _map(0)
    values = similarities(m, m.clone())
    assert set(values) == {"spearman_abs", "spearman", "ssim", "hog"}
    for name, v in values.items():
        assert v == pytest.approx(1.0, abs=1e-12), name


def test_independent_noise_scores_about_zero() -> None:
    a, b = _map(1, (3, 64, 64)), _map(2, (3, 64, 64))
    assert abs(spearman_abs(a, b)) < 0.05
    assert abs(spearman(a, b)) < 0.05
    assert abs(hog(a, b)) < 0.15
    assert abs(ssim(a, b)) < 0.1


def test_spearman_matches_scipy_with_ties_and_sign() -> None:
    a = _map(3)
    b = a + 0.5 * _map(4)
    a[:, :8] = 0  # many exact ties, as ReLU-gated maps have
    ref = spearmanr(np.abs(a.numpy()).sum(0).ravel(), np.abs(b.numpy()).sum(0).ravel())[0]
    assert spearman_abs(a, b) == pytest.approx(ref, abs=1e-12)
    ref_signed = spearmanr(a.numpy().sum(0).ravel(), b.numpy().sum(0).ravel())[0]
    assert spearman(a, b) == pytest.approx(ref_signed, abs=1e-12)
    # spearman_abs ignores the sign, spearman does not
    assert spearman_abs(a, -a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_ranks_equal_scipys_average_ranks_bit_for_bit() -> None:
    """rank_of (NumPy's quicksort, ties averaged) gives scipy.stats.rankdata's values exactly: many ties,
    runs at both ends, one value, rows of a batch, and NaN (the row becomes NaN, as scipy propagates)."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(1, 200))
        a = rng.integers(0, int(rng.integers(1, 12)), size=(3, n)).astype(np.float64) * 0.1
        assert np.array_equal(similarity.rank_of(a), rankdata(a, axis=-1))
    assert np.array_equal(similarity.rank_of(np.array([2.0, 2.0, 2.0])), [2.0, 2.0, 2.0])
    assert np.array_equal(similarity.rank_of(np.array([5.0])), [1.0])
    with_nan = np.array([[1.0, np.nan, 0.0], [3.0, 1.0, 1.0]])
    got = similarity.rank_of(with_nan)
    assert np.isnan(got[0]).all() and np.array_equal(got[1], [3.0, 1.5, 1.5])


def test_ssim_is_blind_to_scale_and_offset_of_the_magnitude() -> None:
    m = _map(5)
    assert ssim(m, 10 * m) == pytest.approx(1.0)
    assert ssim(m, m + _map(6)) < 0.9


def test_constant_map_gives_nan_without_warnings() -> None:
    m = _map(7)
    zero = torch.zeros_like(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = similarities(m, zero)
        summary = summarize(np.array([math.nan, math.nan]))
    assert math.isnan(values["spearman_abs"]) and math.isnan(values["spearman"]) and math.isnan(values["hog"])
    assert math.isfinite(values["ssim"])
    assert similarities(zero, zero, ["ssim"])["ssim"] == pytest.approx(1.0)
    assert math.isnan(summary.mean) and summary.n == 0


def test_reference_compares_like_the_plain_functions() -> None:
    a, b = _map(8), _map(9)
    ref = Reference(a, ["hog", "spearman"])
    assert ref.compare(b) == {"hog": pytest.approx(hog(a, b)), "spearman": pytest.approx(spearman(a, b))}


def test_one_channel_and_small_maps() -> None:
    a = _map(10, (1, 12, 12))
    assert similarities(a, a)["hog"] == pytest.approx(1.0)
    assert similarities(a[0], a[0])["ssim"] == pytest.approx(1.0)


def test_summary_skips_nan_and_one_image_has_zero_spread() -> None:
    s = summarize(np.array([0.2, math.nan, 0.4]))
    assert s.mean == pytest.approx(0.3) and s.std == pytest.approx(0.1) and s.n == 2
    one = summarize(np.array([0.7]))
    assert one.mean == pytest.approx(0.7) and one.std == 0.0 and one.n == 1
    assert one.to_json() == {"mean": 0.7, "std": 0.0, "n": 1}
    assert summarize(np.array([math.nan])).to_json()["mean"] is None


def test_unknown_metric_names_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="spearman_abs"):
        similarity.parse_metrics(["spearman_ab"])
    assert similarity.parse_metrics(["SSIM", "spearman-abs", "ssim"]) == ("ssim", "spearman_abs")
