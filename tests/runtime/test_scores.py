"""Score math: KL closed form, likelihoods, thresholds and p-values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgevae.runtime import TailFit, fit_tail, kl_divergence, log_likelihood, p_values, threshold_at_fpr
from edgevae.runtime.scores import reference_tail, survival_curve, tail_model

pytestmark = pytest.mark.runtime

finite = st.floats(-5, 5, allow_nan=False, width=32)


def test_kl_is_zero_at_the_prior() -> None:
    assert kl_divergence(np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)).tolist() == [0.0, 0.0]


def test_kl_known_value() -> None:
    mu = np.array([[1.0, 2.0]], np.float32)
    logvar = np.array([[math.log(2.0), 0.0]], np.float32)
    expected = 0.5 * ((1 + 2 - math.log(2) - 1) + (4 + 1 - 0 - 1))
    assert kl_divergence(mu, logvar)[0] == pytest.approx(expected, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, (3, 5), elements=finite), arrays(np.float32, (3, 5), elements=finite))
def test_kl_is_non_negative(mu: np.ndarray, logvar: np.ndarray) -> None:
    assert (kl_divergence(mu, logvar) >= -1e-4).all()


def test_bernoulli_log_likelihood_matches_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 4, 4), dtype=np.float32)
    logits = rng.standard_normal((2, 1, 4, 4), dtype=np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = (x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(2, -1).sum(1)
    np.testing.assert_allclose(log_likelihood(x, "bernoulli", p.astype(np.float32), logits), expected, rtol=1e-5)


def test_gaussian_log_likelihood_matches_definition() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((2, 1, 4, 4), dtype=np.float32)
    mean = rng.random((2, 1, 4, 4), dtype=np.float32)
    logvar = np.array([[0.0], [-1.0]], np.float32)
    var = np.exp(logvar.astype(np.float64)).reshape(2, 1)
    diff = (x - mean).astype(np.float64).reshape(2, -1)
    expected = (-0.5 * diff**2 / var - 0.5 * np.log(2 * np.pi * var)).sum(1)
    np.testing.assert_allclose(log_likelihood(x, "gaussian", mean, logvar), expected, rtol=1e-5)


def test_threshold_and_p_values() -> None:
    cal = np.arange(100, dtype=np.float32)  # 0..99
    thr = threshold_at_fpr(cal, 0.05)
    assert np.mean(cal > thr) <= 0.05
    p = p_values(np.array([-1.0, 99.0, 1000.0], np.float32), cal)
    assert p[0] == pytest.approx(1.0) and p[1] == pytest.approx(2 / 101) and p[2] == pytest.approx(1 / 101)
    # between calibration scores the p-value is interpolated: (1 + #{>= 49}) / 101 = 52 / 101 at 49, 51 / 101 at 50
    assert p_values(np.array([49.5]), cal)[0] == pytest.approx(51.5 / 101)
    tail = tail_model(cal)  # the tail every calibration stores: beyond the largest score p keeps falling
    beyond = p_values(np.array([99.5, 100.0, 120.0, 1000.0]), cal, tail)
    assert (np.diff(beyond) < 0).all() and beyond[-1] > 0
    with pytest.raises(ValueError, match="fpr"):
        threshold_at_fpr(cal, 0.0)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, st.integers(2, 200), elements=st.floats(-1e6, 1e6)),
       st.floats(0.001, 0.5), st.floats(0.001, 0.5))
def test_thresholds_monotone_and_p_values_in_unit_interval(cal: np.ndarray, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert threshold_at_fpr(cal, lo) >= threshold_at_fpr(cal, hi)
    p = p_values(cal.astype(np.float32), cal)
    assert ((p > 0) & (p <= 1)).all()
    tail = fit_tail(cal)
    assert threshold_at_fpr(cal, lo, tail) >= threshold_at_fpr(cal, hi, tail)
    probe = np.sort(np.concatenate([cal, cal + 1.0, [cal.max() * 2 + 1]]))
    p = p_values(probe, cal, tail)
    assert ((p >= 0) & (p <= 1)).all()
    assert (np.diff(p) <= 1e-12).all(), "p-values must not rise with the score"


def _gpd_sample(rng: np.random.Generator, n: int, shape: float, scale: float) -> np.ndarray:
    """Draws from a generalised Pareto distribution by inverting its survival function."""
    u = rng.uniform(size=n)
    return scale / shape * (u ** -shape - 1.0) if shape != 0 else -scale * np.log(u)


@pytest.mark.parametrize("shape", [-0.2, 0.0, 0.25])
def test_fit_tail_recovers_a_known_generalised_pareto_tail(shape: float) -> None:
    rng = np.random.default_rng(0)
    cal = _gpd_sample(rng, 20_000, shape, 1.0)
    tail = fit_tail(cal)
    assert tail is not None and tail.fraction == pytest.approx(0.2)
    # Excesses of a GPD over any level are GPD with the same shape (scale grows by shape * level).
    assert tail.shape == pytest.approx(shape, abs=0.06)
    assert tail.scale == pytest.approx(1.0 + shape * tail.start, rel=0.06)
    true_q = (0.01 ** -shape - 1.0) / shape if shape != 0 else -np.log(0.01)
    assert threshold_at_fpr(cal, 0.01, tail) == pytest.approx(true_q, rel=0.05)


def test_tail_threshold_holds_its_rate_on_fresh_samples_better_than_the_empirical_quantile() -> None:
    """Thresholds from 400 lognormal scores: the tail model's false-positive rates land near the target more often."""
    rng = np.random.default_rng(0)
    fresh = rng.lognormal(0.0, 0.6, 200_000)
    rates = {"empirical": [], "tail": []}
    for _ in range(300):
        cal = rng.lognormal(0.0, 0.6, 400)
        rates["empirical"].append(np.mean(fresh > threshold_at_fpr(cal, 0.01)))
        rates["tail"].append(np.mean(fresh > threshold_at_fpr(cal, 0.01, fit_tail(cal))))
    emp, tail = np.array(rates["empirical"]), np.array(rates["tail"])
    assert 0.007 < tail.mean() < 0.014
    in_range = lambda r: np.mean((r >= 0.005) & (r <= 0.02))  # noqa: E731
    assert in_range(tail) > in_range(emp)


def test_a_bounded_tail_is_stored_as_the_exponential_of_the_same_top_scores() -> None:
    """Normal scores have a light tail: their Pareto fits come out bounded (shape < 0). A method's stored tail is the
    exponential with the top fifth's mean excess, whose 1 % thresholds keep a rate near 1 % on fresh scores; the
    bounded fit's own scale with its shape set to 0 (``reference_tail``, which combined's parts keep) overstates
    the tail and flags about 0.3 %."""
    from scipy.stats import norm

    from edgevae.runtime.scores import exponential_top

    rng = np.random.default_rng(0)
    stored, heavy = [], []
    for _ in range(200):
        cal = np.sort(rng.standard_normal(400))
        fit, tail, ref = fit_tail(cal), tail_model(cal), reference_tail(cal)
        if fit is not None and fit.shape >= 0:
            assert tail == ref == fit
            continue
        assert tail == exponential_top(cal) and tail.shape == 0.0 and tail.fraction == pytest.approx(0.2)
        assert tail.scale == pytest.approx(float(np.mean(cal[-80:] - cal[-81])))  # the top fifth's mean excess
        stored.append(norm.sf(threshold_at_fpr(cal, 0.01, tail)))
        if fit is not None:  # a bounded fit (None: one that ends below the largest score)
            assert ref == TailFit(fit.start, fit.fraction, 0.0, fit.scale)
            heavy.append(norm.sf(threshold_at_fpr(cal, 0.01, ref)))
        else:
            assert ref == tail
    assert len(stored) > 180 and len(heavy) > 150  # normal scores: almost always bounded
    assert 0.005 < np.mean(stored) < 0.012
    assert np.mean(heavy) < 0.004  # what the heavier rule promises as 1 %
    in_range = lambda r: np.mean((np.asarray(r) >= 0.005) & (np.asarray(r) <= 0.02))  # noqa: E731
    assert in_range(stored) > 0.5 > in_range(heavy)


def test_tail_p_values_agree_with_the_tail_threshold() -> None:
    rng = np.random.default_rng(2)
    cal = rng.gamma(2.0, 1.0, 500)
    tail = fit_tail(cal)
    assert tail is not None
    thr = threshold_at_fpr(cal, 0.01, tail)
    probe = np.linspace(0, 3 * cal.max(), 2001)
    p = p_values(probe, cal, tail)
    np.testing.assert_array_equal(p < 0.01, probe > thr + 1e-9 * thr)
    assert p_values(np.array([thr]), cal, tail)[0] == pytest.approx(0.01)
    assert p[-1] < 1 / (cal.size + 1), "p-values keep falling past the largest calibration score"


def test_fit_tail_declines_small_or_degenerate_samples() -> None:
    assert fit_tail(np.arange(50.0)) is None  # 10 tail scores, fewer than MIN_TAIL_SCORES
    assert fit_tail(np.ones(1000)) is None
    assert fit_tail(np.r_[np.zeros(700), np.ones(300)]) is None  # the top fifth is all one value
    with pytest.raises(ValueError, match="below"):
        TailFit(start=0.0, fraction=0.2, shape=0.1, scale=1.0).quantile(0.5)


def test_smoothed_reconstruction_error_matches_its_definition() -> None:
    from edgevae.runtime.scores import smoothed_relative_reconstruction_error, smoothing_matrix

    rng = np.random.default_rng(3)
    x = rng.random((3, 2, 11, 7), dtype=np.float32)
    m = rng.random((3, 2, 11, 7), dtype=np.float32)
    sigma = 1.0
    radius = 4
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    g /= g.sum()
    r = (x - m).astype(np.float64)
    blurred = np.zeros_like(r)
    for i in range(11):  # direct 2-D convolution, zero outside the image
        for j in range(7):
            for di in range(-radius, radius + 1):
                for dj in range(-radius, radius + 1):
                    if 0 <= i + di < 11 and 0 <= j + dj < 7:
                        blurred[:, :, i, j] += g[di + radius] * g[dj + radius] * r[:, :, i + di, j + dj]
    den = (x.astype(np.float64) ** 2).reshape(3, -1).sum(1) + (m.astype(np.float64) ** 2).reshape(3, -1).sum(1) + 1
    want = (blurred ** 2).reshape(3, -1).sum(1) / den
    np.testing.assert_allclose(smoothed_relative_reconstruction_error(x, m, sigma), want, rtol=1e-5)
    assert smoothing_matrix(9, 1.0).shape == (9, 9) and not smoothing_matrix(9, 1.0).flags.writeable
    np.testing.assert_array_equal(smoothed_relative_reconstruction_error(x, x), np.zeros(3, np.float32))


def test_smoothing_damps_edge_residuals_more_than_blobs() -> None:
    """A stroke reconstructed one pixel off leaves +/- edge residuals that smoothing cancels; a missing blob stays."""
    from edgevae.runtime.scores import relative_reconstruction_error, smoothed_relative_reconstruction_error

    x = np.zeros((2, 1, 28, 28), np.float32)
    x[:, :, 4:24, 12:15] = 1.0  # a vertical stroke
    mean = x.copy()
    mean[0] = np.roll(x[0], 1, axis=-1)  # normal-looking: the same stroke shifted by one pixel
    mean[1, :, 10:17, 12:15] = 0.0  # anomalous: a third of the stroke missing
    rel = relative_reconstruction_error(x, mean)
    smooth = smoothed_relative_reconstruction_error(x, mean)
    assert rel[0] >= rel[1]  # the plain error ranks the shifted stroke at least as anomalous
    assert smooth[0] < smooth[1]  # the smoothed error does not


def test_softplus_is_logaddexp_to_float32_rounding() -> None:
    from edgevae.runtime.scores import softplus

    v = np.concatenate([np.random.default_rng(0).normal(0, 30, 20_000),
                        [0.0, 1e-8, -1e-8, 88.0, -88.0, 100.0, -100.0, 1e30, -1e30]]).astype(np.float32)
    got, want = softplus(v), np.logaddexp(np.float32(0.0), v)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=1e-37)


def test_row_dots_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's dot kernel (short rows) and the multiply-and-sum fallback (long rows, or numpy < 2) agree, and
    both broadcast (R, N, M) against (N, M)."""
    from edgevae.runtime import scores

    rng = np.random.default_rng(1)
    a, b = rng.random((5, 784), dtype=np.float32), rng.random((3, 5, 784), dtype=np.float32)
    fast = scores.row_dots(a, b)
    monkeypatch.setattr(scores, "ROW_DOT_MAX", 0)
    slow = scores.row_dots(a, b)
    assert fast.shape == slow.shape == (3, 5) and fast.dtype == slow.dtype == np.float32
    np.testing.assert_allclose(fast, slow, rtol=1e-5)
    np.testing.assert_allclose(slow, np.einsum("nm,rnm->rn", a.astype(np.float64), b.astype(np.float64)), rtol=1e-5)


def test_log_likelihood_of_several_codes_per_image_is_per_block() -> None:
    """R decoded codes per image in R blocks of N rows give what N rows at a time give."""
    rng = np.random.default_rng(2)
    x = rng.random((4, 1, 6, 6), dtype=np.float32)
    logits = rng.normal(size=(3 * 4, 1, 6, 6)).astype(np.float32)
    means = rng.random((3 * 4, 1, 6, 6), dtype=np.float32)
    logvar = rng.normal(size=(3 * 4, 1)).astype(np.float32)
    for likelihood, mean, param in (("bernoulli", means, logits), ("gaussian", means, logvar)):
        whole = log_likelihood(x, likelihood, mean, param)
        blocks = np.concatenate([log_likelihood(x, likelihood, mean[r * 4:(r + 1) * 4], param[r * 4:(r + 1) * 4])
                                 for r in range(3)])
        np.testing.assert_allclose(whole, blocks, rtol=1e-6)


@settings(max_examples=100, deadline=None)
# scores are float32 values: their float64 copies are never subnormal, so neither are the generated ones
@given(arrays(np.float64, st.integers(10, 300), elements=st.floats(-1e3, 1e3, allow_subnormal=False)), st.floats(0.0005, 0.4))
def test_p_values_and_thresholds_agree_and_never_tie_beyond_the_range(cal: np.ndarray, fpr: float) -> None:
    from edgevae.runtime.scores import log_p_values

    tail = tail_model(cal)
    thr = threshold_at_fpr(cal, fpr, tail)
    beyond = cal.max() + np.abs(cal.max()) * np.array([1e-3, 1e-2, 0.1, 1.0]) + np.array([1e-3, 1e-2, 0.1, 1.0])
    log_p = log_p_values(beyond, cal, tail)
    assert (np.diff(log_p) < 0).all(), "distinct scores beyond the calibration range get distinct p-values"
    probe = np.sort(np.concatenate([cal, cal + 0.5]))
    got = p_values(probe, cal, tail)
    np.testing.assert_array_equal(got < fpr, probe > thr)


def test_survival_curve_counts_tied_scores_as_at_least_as_high() -> None:
    values, survival, end = survival_curve(np.array([1.0, 2.0, 2.0, 3.0]))
    assert values.tolist() == [1.0, 2.0, 3.0] and survival.tolist() == pytest.approx([5 / 5, 4 / 5, 2 / 5])
    assert end == pytest.approx(1 / 5)
