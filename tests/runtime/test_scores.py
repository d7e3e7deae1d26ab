"""Score math: KL closed form, likelihoods, thresholds and p-values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgevae.runtime import kl_divergence, log_likelihood, p_values, threshold_at_fpr

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
