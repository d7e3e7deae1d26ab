"""Score math in numpy: KL from the prior, log-likelihoods, Monte-Carlo ELBO, calibration and p-values.

Every function here has a PyTorch twin in ``edgevae.training.objectives``; tests check they agree.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import numpy as np
from numpy.typing import NDArray

from .options import LIKELIHOODS, SMOOTH_SIGMA

from .errors import CalibrationWarning

if TYPE_CHECKING:
    from .maps import MapStats

F32 = NDArray[np.float32]
_LOG_2PI = math.log(2.0 * math.pi)


def kl_divergence(mu: F32, logvar: F32) -> F32:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in nats: 0.5 * sum(mu^2 + e^logvar - logvar - 1)."""
    out: F32 = (0.5 * np.sum(mu * mu + np.exp(logvar) - logvar - 1.0, axis=-1)).astype(np.float32)
    return out


def log_likelihood(x: F32, likelihood: str, x_mean: F32, x_param: F32) -> F32:
    """log p(x | t) per image, summed over pixels, in nats.

    Args:
        x: images (N, C, H, W) in [0, 1].
        likelihood: one of ``LIKELIHOODS``.
        x_mean: decoded mean (R * N, C, H, W) (unused for Bernoulli, which uses the logits): R codes per image,
            in R blocks of N rows (R = 1 for one code per image).
        x_param: Bernoulli logits (R * N, C, H, W), or the Gaussian log-variance (R * N, 1).

    Returns:
        (R * N,) in the rows' order.
    """
    n = x.shape[0]
    xf = x.reshape(n, -1)
    if likelihood == "bernoulli":  # sum x * logits - softplus(logits)
        logits = x_param.reshape(-1, n, xf.shape[1])
        out: F32 = row_dots(xf, logits) - np.add.reduce(softplus(logits), axis=-1, dtype=np.float32)
        return out.reshape(-1)
    if likelihood in ("gaussian", "gaussian_learned"):
        logvar = x_param.reshape(-1)
        d = x_mean.reshape(-1, n, xf.shape[1]) - xf
        sq = row_dots(d, d).reshape(-1)
        out = (-0.5 * sq * np.exp(-logvar) - 0.5 * xf.shape[1] * (logvar + _LOG_2PI)).astype(np.float32)
        return out
    raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}")


def softplus(v: F32) -> F32:
    """log(1 + e^v) elementwise, stably: max(v, 0) + log1p(e^-|v|).

    The same function as ``np.logaddexp(0, v)``, written with ufuncs numpy vectorises (exp, log1p), which is
    several times faster than logaddexp, evaluated one element at a time (docs/benchmarks.md, batch-1 overhead).
    """
    out = np.abs(v)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.log1p(out, out=out)
    result: F32 = np.add(out, np.maximum(v, np.float32(0.0)), out=out)
    return result


# Rows up to this many values are reduced by numpy's dot kernel (``np.vecdot``), one call for the batch; BLAS
# keeps such short dot products on one thread, so they never wake its thread pool beside onnxruntime's.
ROW_DOT_MAX = 8192
_VECDOT = getattr(np, "vecdot", None)  # numpy >= 2.0


def row_dots(a: F32, b: F32) -> F32:
    """sum(a * b) over the last axis of two float32 arrays that broadcast, e.g. (N, M) and (R, N, M)."""
    if _VECDOT is not None and a.shape[-1] <= ROW_DOT_MAX:
        out: F32 = _VECDOT(a, b)
        return out
    out = np.multiply(a, b).sum(axis=-1, dtype=np.float32)
    return out


def reconstruction_error(x: F32, x_mean: F32) -> F32:
    """Sum of squared differences between each image and its reconstruction (N,)."""
    d = np.subtract(x, x_mean).reshape(x.shape[0], -1)
    return row_dots(d, d)


def relative_reconstruction_error(x: F32, x_mean: F32, *, energy: F32 | None = None) -> F32:
    """Scale-free reconstruction error per image: sum (x - x_mean)^2 / (sum x^2 + sum x_mean^2 + 1), in [0, 1).

    Dividing by the images' energy removes the advantage that images with little ink (a thin "1") have
    under the plain squared error, whatever the normal class is. ``energy`` (``image_energy``), when a caller
    has it already, is used instead of being computed again.
    """
    out: F32 = reconstruction_error(x, x_mean) / (image_energy(x, x_mean) if energy is None else energy)
    return out


def image_energy(x: F32, x_mean: F32) -> F32:
    """The denominator of the relative errors, per image (N,): sum x^2 + sum x_mean^2 + 1."""
    n = x.shape[0]
    xf, mf = x.reshape(n, -1), x_mean.reshape(n, -1)
    out: F32 = row_dots(xf, xf) + row_dots(mf, mf) + np.float32(1.0)
    return out


@functools.lru_cache(maxsize=16)
def smoothing_matrix(size: int, sigma: float = SMOOTH_SIGMA) -> F32:
    """(size, size) matrix S with (S @ v)[i] = sum_k g(k) v[i + k]: a Gaussian filter along one image axis.

    g is exp(-k^2 / (2 sigma^2)) for |k| <= ceil(4 sigma), normalised to sum 1; pixels beyond the edge
    count as 0. Read-only and cached.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = int(math.ceil(4.0 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    g /= g.sum()
    k = np.arange(size)[None, :] - np.arange(size)[:, None]  # column - row
    out: F32 = np.where(np.abs(k) <= radius, g[np.clip(k + radius, 0, 2 * radius)], 0.0).astype(np.float32)
    out.flags.writeable = False
    return out


def smoothed_residual(x: F32, x_mean: F32, sigma: float = SMOOTH_SIGMA) -> F32:
    """The residual x - x_mean blurred by a Gaussian of ``sigma`` pixels per channel (zero beyond the edges),
    as (N * C, H, W): what ``smooth_recon`` and the anomaly maps (``maps.residual_magnitude``) both start from."""
    n, c, h, w = x.shape
    # One small product per image and channel (numpy loops over them), rather than one large product: a
    # large one would wake the BLAS library's own thread pool, which then competes with onnxruntime's.
    out: F32 = smoothing_matrix(h, sigma) @ (x - x_mean).reshape(n * c, h, w) @ _transposed_smoothing(w, sigma)
    return out


@functools.lru_cache(maxsize=16)
def _transposed_smoothing(size: int, sigma: float) -> F32:
    """``smoothing_matrix(size, sigma).T`` as a contiguous array (read-only, cached): products with it run faster
    than with the transposed view."""
    out: F32 = np.ascontiguousarray(smoothing_matrix(size, sigma).T)
    out.flags.writeable = False
    return out


def smoothed_relative_reconstruction_error(x: F32, x_mean: F32, sigma: float = SMOOTH_SIGMA, *,
                                           residual: F32 | None = None, energy: F32 | None = None) -> F32:
    """``rel_recon`` of the Gaussian-smoothed residual: sum (G * (x - x_mean))^2 / (sum x^2 + sum x_mean^2 + 1).

    Smoothing (sigma in pixels, per channel, zero beyond the edges) keeps residuals that form strokes or
    blobs, where the image has structure its reconstruction lacks, and damps the thin, sign-alternating
    residuals that a slightly shifted or thinner stroke of a normal image leaves along its edges.
    ``residual`` (``smoothed_residual``) and ``energy`` (``image_energy``), when a caller has them already, are
    used instead of being computed again.
    """
    r = (smoothed_residual(x, x_mean, sigma) if residual is None else residual).reshape(x.shape[0], -1)
    out: F32 = row_dots(r, r) / (image_energy(x, x_mean) if energy is None else energy)
    return out


class Residuals:
    """Images, their reconstructions (the decoded posterior means) and what the reconstruction scores share,
    each computed once on first use: the images' energy (``rel_recon`` and ``smooth_recon``) and the smoothed
    residual (``smooth_recon`` and ``local``, when the map statistics use the same width).

    Args:
        x: images (N, C, H, W) in [0, 1].
        mean: their reconstructions (N, C, H, W).
        sigma: the ``smooth_recon`` blur width (pixels).
        maps: the anomaly-map statistics, for ``local``; None where a bundle has none.
    """

    def __init__(self, x: F32, mean: F32, sigma: float, maps: "MapStats | None" = None) -> None:
        self.x, self.mean, self.sigma, self.maps = x, mean, sigma, maps
        self._energy: F32 | None = None
        self._smoothed: F32 | None = None

    @property
    def energy(self) -> F32:
        if self._energy is None:
            self._energy = image_energy(self.x, self.mean)
        return self._energy

    @property
    def smoothed(self) -> F32:
        """``smoothed_residual`` at ``sigma`` as (N * C, H, W)."""
        if self._smoothed is None:
            self._smoothed = smoothed_residual(self.x, self.mean, self.sigma)
        return self._smoothed


def residual_recon(r: Residuals) -> F32:
    """The registry's ``recon``: ``reconstruction_error``."""
    return reconstruction_error(r.x, r.mean)


def residual_rel_recon(r: Residuals) -> F32:
    """The registry's ``rel_recon``: ``relative_reconstruction_error``."""
    return relative_reconstruction_error(r.x, r.mean, energy=r.energy)


def residual_smooth_recon(r: Residuals) -> F32:
    """The registry's ``smooth_recon``: ``smoothed_relative_reconstruction_error``."""
    return smoothed_relative_reconstruction_error(r.x, r.mean, r.sigma, residual=r.smoothed, energy=r.energy)


def log_prior_over_posterior(eps: F32, t: F32, logvar: F32) -> F32:
    """log p(t) - log q(t|x) for t = mu + exp(logvar / 2) * eps, summed over latent dimensions (last axis).

    The three arrays broadcast against each other (e.g. eps (K, 1, D), t (K, N, D), logvar (N, D)).
    """
    out: F32 = np.add.reduce(np.square(eps) - np.square(t) + logvar, axis=-1, dtype=np.float32) * np.float32(0.5)
    return out


def logmeanexp(values: NDArray[np.float32], axis: int = 0) -> F32:
    """log(mean(exp(values))) along an axis, computed stably in float64."""
    v = values.astype(np.float64)
    top = v.max(axis=axis, keepdims=True)
    mean = np.add.reduce(np.exp(v - top), axis=axis) / v.shape[axis]
    out: F32 = (np.log(mean) + np.squeeze(top, axis=axis)).astype(np.float32)
    return out


@functools.lru_cache(maxsize=16)
def prior_noise(samples: int, latent_dim: int, seed: int) -> F32:
    """The fixed standard-normal noise (K, D) shared by every image for Monte-Carlo scores (read-only, cached).

    Sharing one draw across images makes an image's score independent of its batch and position.
    """
    noise = np.random.default_rng(seed).standard_normal((samples, latent_dim), dtype=np.float32)
    noise.flags.writeable = False
    return noise


@dataclass(frozen=True)
class TailFit:
    """Generalised Pareto model of the upper tail of calibration scores (peaks over a threshold).

    Above ``start`` the survival function is ``fraction * (1 + shape * (s - start) / scale) ** (-1 / shape)``
    (``fraction * exp(-(s - start) / scale)`` when ``shape`` is 0). By the Pickands-Balkema-de Haan theorem
    excesses over a high threshold are close to this family for most score distributions, so the tail can be
    read between and beyond the few calibration scores that lie in it.

    Attributes:
        start: the score where the modelled tail begins (the (k+1)-th largest calibration score).
        fraction: share of calibration scores above ``start`` (k / n).
        shape: the tail's shape xi (> 0 heavy, 0 exponential, < 0 bounded at start - scale / shape).
        scale: the tail's scale sigma (> 0).
    """

    start: float
    fraction: float
    shape: float
    scale: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.start, self.fraction, self.shape, self.scale)):
            raise ValueError("tail parameters must be finite")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"tail fraction must be in (0, 1), got {self.fraction}")
        if self.scale <= 0.0:
            raise ValueError(f"tail scale must be positive, got {self.scale}")

    def survival(self, scores: NDArray[np.float64]) -> NDArray[np.float64]:
        """P(score > s) under the model, for scores at or above ``start`` (0 past a bounded tail's end)."""
        z = np.maximum(np.asarray(scores, dtype=np.float64) - self.start, 0.0) / self.scale
        if abs(self.shape) < 1e-9:
            out: NDArray[np.float64] = self.fraction * np.exp(-z)
            return out
        base = np.maximum(1.0 + self.shape * z, 0.0)
        with np.errstate(divide="ignore"):
            out = self.fraction * np.power(base, -1.0 / self.shape)
        return np.where(base > 0.0, out, 0.0)

    def log_survival(self, scores: NDArray[np.float64]) -> NDArray[np.float64]:
        """log P(score > s) under the model, for scores at or above ``start``; it never underflows (-inf only past
        a bounded tail's end), so scores far beyond the calibration keep distinct values."""
        z = np.maximum(np.asarray(scores, dtype=np.float64) - self.start, 0.0) / self.scale
        if abs(self.shape) < 1e-9:
            out: NDArray[np.float64] = math.log(self.fraction) - z
            return out
        base = 1.0 + self.shape * z
        with np.errstate(divide="ignore", invalid="ignore"):
            out = math.log(self.fraction) - np.log(np.maximum(base, 0.0)) / self.shape
        return np.where(base > 0.0, out, -np.inf)

    def quantile(self, fpr: float) -> float:
        """The score exceeded with probability ``fpr`` (which must be below ``fraction``)."""
        if not 0.0 < fpr < self.fraction:
            raise ValueError(f"the tail model covers false-positive rates below {self.fraction:g}, got {fpr!r}")
        ratio = self.fraction / fpr
        if abs(self.shape) < 1e-9:
            return self.start + self.scale * math.log(ratio)
        return self.start + self.scale / self.shape * (math.pow(ratio, self.shape) - 1.0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TailFit":
        return cls(start=float(data["start"]), fraction=float(data["fraction"]), shape=float(data["shape"]),
                   scale=float(data["scale"]))

    def to_dict(self) -> dict[str, float]:
        return {"start": self.start, "fraction": self.fraction, "shape": self.shape, "scale": self.scale}


# Share of the calibration scores the tail model is fitted to, and the fewest scores it is fitted to: with fewer
# the fit's thresholds came out low on the digits where the empirical quantile was unbiased (docs/scoring.md).
TAIL_FRACTION = 0.2
MIN_TAIL_SCORES = 40


def fit_tail(calibration_scores: Sequence[float] | NDArray[np.floating[Any]],
             fraction: float = TAIL_FRACTION) -> TailFit | None:
    """Fit a generalised Pareto tail to the top ``fraction`` of the scores; None when that is not possible.

    Uses the probability-weighted-moment estimator of Hosking & Wallis (1987, Technometrics 29(3)), which is
    closed-form and steadier than maximum likelihood for the 40-100 excesses a calibration split gives.
    Returns None with fewer than ``MIN_TAIL_SCORES`` scores in the tail, or when the excesses are degenerate
    (all equal, or outside the estimator's range); callers then use the empirical quantile.
    """
    s = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    n = s.size
    k = int(round(n * fraction))
    if k < MIN_TAIL_SCORES or k >= n or not np.isfinite(s).all():
        return None
    start = float(s[n - k - 1])
    excess = s[n - k:] - start
    a0 = float(excess.mean())
    a1 = float(np.mean(excess * (k - 1 - np.arange(k)) / (k - 1)))
    denom = a0 - 2.0 * a1
    if a0 <= 0.0 or denom <= 0.0:
        return None
    shape = 2.0 - a0 / denom
    scale = 2.0 * a0 * a1 / denom
    if scale <= 0.0 or not math.isfinite(shape) or not -1.0 < shape < 1.0:
        return None
    if shape < 0.0 and excess[-1] >= -scale / shape:
        return None  # a bounded fit that ends below the largest score contradicts the data it was fitted to
    return TailFit(start=start, fraction=k / n, shape=shape, scale=scale)


def smallest_fpr(n: int) -> float:
    """The smallest false-positive rate ``n`` calibration images can promise: 1 / (n + 1).

    For n exchangeable normal scores and one more normal image, the chance that the new score exceeds the k-th
    largest calibration score is at most k / (n + 1) (the new score's rank among the n + 1 is uniform); the
    largest calibration score (k = 1) is the highest threshold the data supports, so no threshold read off the
    data promises less than 1 / (n + 1).
    """
    return 1.0 / (n + 1)


def warn_if_unpromisable(fpr: float, n: int, tail: bool) -> None:
    """Warn (``CalibrationWarning``) when ``fpr`` is below what ``n`` calibration images can promise."""
    floor = smallest_fpr(n)
    if fpr < floor:
        how = ("the threshold there comes from the fitted tail model alone, an extrapolation that no finite-sample "
               "argument covers" if tail else "the stored threshold is the largest calibration score, which flags about "
               f"{floor:.2%} of normal images, not {fpr:g}")
        warnings.warn(f"false-positive rate {fpr:g} is below what {n} calibration images can promise (1/(n+1) = "
                      f"{floor:.4g}); {how}. Calibrate on at least {int(np.ceil(1 / fpr)) - 1} held-out normal images "
                      "for it", CalibrationWarning, stacklevel=3)


def exponential_tail(sorted_scores: NDArray[np.float64]) -> TailFit:
    """An exponential tail beyond the largest of n calibration scores, for calibrations too small (or too odd) for a
    generalised Pareto fit: survival 1 / (n + 1) at the largest score, as the empirical curve ends there, falling
    with the mean excess of the top ``TAIL_FRACTION`` of the scores over the score below them as its scale."""
    n = sorted_scores.size
    m = max(1, min(n - 1, int(round(TAIL_FRACTION * n))))
    scale = float(np.mean(sorted_scores[n - m:] - sorted_scores[n - m - 1]))
    if not (math.isfinite(scale) and scale > 0.0):  # the top scores are all equal: anything above them is far out
        scale = 1e-3 * max(1.0, abs(float(sorted_scores[-1])))
    return TailFit(start=float(sorted_scores[-1]), fraction=1.0 / (n + 1), shape=0.0,
                   scale=_floored(scale, float(sorted_scores[-1])))


def _floored(scale: float, level: float) -> float:
    """A tail scale no smaller than a billionth of the scores' magnitude: a scale of subnormal size (scores equal
    but for rounding) would send far-out scores' excesses to infinity, where their p-values tie."""
    return max(scale, 1e-9 * max(1.0, abs(level)))


def tail_model(calibration_scores: Sequence[float] | NDArray[np.floating[Any]]) -> TailFit:
    """The tail a method's own calibration stores (its threshold and its p-values): the generalised Pareto fit
    (``fit_tail``) where the scores allow one with a shape >= 0; else an exponential over the top fifth
    (``exponential_top``), else ``exponential_tail`` past the largest score. With it p-values keep falling beyond
    the calibration range, so no two different scores there share a p-value and no threshold is out of reach.

    A bounded fit (shape < 0) is not stored as it is (past its end every p-value would be 0 and tie) but as the
    exponential fitted to the same top scores: their mean excess as its scale. Keeping the bounded fit's own scale
    with the shape set to 0 (``reference_tail``, every method's rule before 2026-12-07) makes the tail heavier than
    the data: a generalised Pareto tail's mean excess is scale / (1 - shape), below its scale when the shape is
    negative, so thresholds came out high and false-positive rates low (on normal scores, about 0.3 % at a stated
    1 %; docs/scoring.md, "The model").

    Raises:
        ValueError: fewer than 2 scores, or scores that are not finite.
    """
    s = _tail_input(calibration_scores)
    return _unbounded(s, fit_tail(s))


def reference_tail(calibration_scores: Sequence[float] | NDArray[np.floating[Any]]) -> TailFit:
    """The tail of a part's references, which ``combined`` reads (``maps.Reference``): as ``tail_model``, but a
    bounded fit keeps its own scale with its shape set to 0, a tail heavier than the data's. ``combined`` ranks by
    the sum of its parts' -log p-values, so a part's tail sets how fast it gains weight beyond the calibration
    range; the lighter ``tail_model`` tail there cost ``combined`` ranking on the tiles benchmark's gravel (AUROC
    0.977 / 0.881 / 0.912 fell to 0.969 / 0.857 / 0.888, docs/scoring.md). ``combined``'s own threshold is read
    off its own scores with ``tail_model``.

    Raises:
        ValueError: fewer than 2 scores, or scores that are not finite.
    """
    s = _tail_input(calibration_scores)
    fit = fit_tail(s)
    if fit is not None and fit.shape < 0.0:
        return TailFit(fit.start, fit.fraction, 0.0, fit.scale)
    return _unbounded(s, fit)


def _unbounded(s: NDArray[np.float64], fit: TailFit | None) -> TailFit:
    """``tail_model`` of sorted scores ``s`` given their Pareto fit: the fit when it is not bounded, else an
    exponential over the top fifth, else one past the largest score."""
    if fit is not None and fit.shape >= 0.0:
        return fit
    top = exponential_top(s)
    return top if top is not None else exponential_tail(s)


def _tail_input(calibration_scores: Sequence[float] | NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    s = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    if s.size < 2 or not np.isfinite(s).all():
        raise ValueError("a tail model needs at least 2 finite scores")
    return s


# Fewest scores in the top fifth for an exponential tail fitted to them (below: ``exponential_tail`` at the maximum).
MIN_EXPONENTIAL_TAIL_SCORES = 10


def exponential_top(sorted_scores: NDArray[np.float64], fraction: float = TAIL_FRACTION) -> TailFit | None:
    """An exponential tail (a generalised Pareto tail with its shape fixed at 0) over the top ``fraction`` of the
    scores, for calibrations too small to estimate a shape (n < 200): its one parameter, the mean excess over the
    score below the top, rests on a fifth of the images instead of on the single largest one. None with fewer than
    ``MIN_EXPONENTIAL_TAIL_SCORES`` scores in the top, or no spread there."""
    n = sorted_scores.size
    k = int(round(n * fraction))
    if k < MIN_EXPONENTIAL_TAIL_SCORES or k >= n:
        return None
    start = float(sorted_scores[n - k - 1])
    scale = float(np.mean(sorted_scores[n - k:] - start))
    if not (math.isfinite(scale) and scale > 0.0):
        return None
    return TailFit(start=start, fraction=k / n, shape=0.0, scale=_floored(scale, float(sorted_scores[-1])))


class SurvivalCurve(NamedTuple):
    """Knots of the interpolated empirical survival function (``survival_curve``) and its value beyond them."""

    values: NDArray[np.float64]
    survival: NDArray[np.float64]
    end: float


def survival_curve(sorted_scores: NDArray[np.float64]) -> SurvivalCurve:
    """The knots of the interpolated empirical survival function of n sorted calibration scores: each distinct
    value v and (1 + #{scores >= v}) / (n + 1), the conformal p-value of a score v among n exchangeable normal
    ones (what edgevae's p-values were before they were interpolated). Between knots the p-value is linear in the
    score; beyond the largest it is 1 / (n + 1) (or the tail model's)."""
    values, first = np.unique(sorted_scores, return_index=True)
    n = sorted_scores.size
    survival: NDArray[np.float64] = ((n + 1.0 - first) / (n + 1.0)).astype(np.float64)
    return SurvivalCurve(values.astype(np.float64), survival, 1.0 / (n + 1.0))


def threshold_at_fpr(calibration_scores: Sequence[float] | NDArray[np.floating[Any]], fpr: float,
                     tail: TailFit | None = None) -> float:
    """Score threshold at which a share ``fpr`` of normal images is expected above it: the score whose p-value
    (``p_values``) is ``fpr``, so that p < fpr exactly when the score is above the threshold.

    Where the p-values reach ``fpr`` only above the ``tail`` model's start, the threshold is the model's quantile
    (or its start, for rates at or above its fraction); otherwise it is read off the interpolated empirical
    survival curve (``survival_curve``); without a tail and below the curve's end (1 / (n + 1)) it is the largest
    calibration score.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be strictly between 0 and 1, got {fpr!r}")
    scores = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    if scores.size == 0:
        raise ValueError("calibration has no scores")
    curve = survival_curve(scores)
    values, survival = curve.values, curve.survival
    if tail is not None and _at_start(tail, curve) >= fpr:  # the threshold is in the tail
        return tail.quantile(fpr) if fpr < tail.fraction else tail.start
    if fpr >= survival[0]:
        return float(values[0])
    if fpr <= survival[-1]:
        return float(values[-1])
    threshold = float(np.interp(fpr, survival[::-1], values[::-1]))
    if not math.isfinite(threshold):  # subnormal knot spacing
        return float(values[max(0, int(np.searchsorted(-survival, -fpr, side="right")) - 1)])
    for _ in range(4):  # rounded onto a score whose p-value is below fpr already: the float just below it
        if threshold <= values[0] or p_values(np.array([threshold]), scores, curve=curve)[0] >= fpr:
            break
        threshold = float(np.nextafter(threshold, -np.inf))
    return threshold


def log_p_values(scores: NDArray[np.floating[Any]], calibration_scores: NDArray[np.floating[Any]],
                 tail: TailFit | None = None, *, presorted: bool = False,
                 curve: SurvivalCurve | None = None) -> NDArray[np.float64]:
    """The natural log of the p-values: the share of normal images expected to score higher; small means unusual.
    The one p-value rule of edgevae (``p_values`` is its exponential; the combined score, C and JavaScript read
    scores the same way).

    Up to the tail model's start (or without one) they follow the interpolated empirical survival curve of the
    calibration scores (``survival_curve``: (1 + #{scores >= v}) / (n + 1) at each calibration score v, linear
    between, 1 below the smallest and 1 / (n + 1) beyond the largest);
    above it they are the model's survival function, capped at the curve's value at the start (ties there can
    leave the curve below the model's fraction), so they keep falling past the largest calibration score (in log
    space without underflow) and agree with ``threshold_at_fpr``. ``presorted`` promises ascending
    ``calibration_scores``; ``curve`` passes their ``survival_curve`` when a caller keeps it.
    """
    if curve is None:
        cal = np.asarray(calibration_scores, dtype=np.float64)
        if not presorted and cal.size > 1 and (cal[1:] < cal[:-1]).any():
            cal = np.sort(cal)
        curve = survival_curve(cal)
    values, survival, end = curve
    s = np.asarray(scores, dtype=np.float64)
    out: NDArray[np.float64] = np.interp(s, values, survival, left=1.0, right=end)
    if not np.isfinite(out.sum()):  # knots a subnormal distance apart overflow the slope: the knot's own value
        bad = ~np.isfinite(out) & ~np.isnan(s)
        out[bad] = survival[np.clip(values.searchsorted(s[bad], side="right") - 1, 0, values.size - 1)]
    out = np.log(out)
    if tail is not None:
        in_tail = s > tail.start
        if in_tail.any():  # capped at the curve's value at the start, so p never rises with the score
            cap = math.log(_at_start(tail, curve))
            out = np.where(in_tail, np.minimum(tail.log_survival(s), cap), out)
    return out


def p_values(scores: NDArray[np.floating[Any]], calibration_scores: NDArray[np.floating[Any]],
             tail: TailFit | None = None, *, presorted: bool = False,
             curve: SurvivalCurve | None = None) -> NDArray[np.float64]:
    """p-values (``log_p_values`` has the rule); below about 1e-308 they underflow to 0, their logs do not."""
    out: NDArray[np.float64] = np.exp(log_p_values(scores, calibration_scores, tail, presorted=presorted, curve=curve))
    return out


def _at_start(tail: TailFit, curve: SurvivalCurve) -> float:
    """The empirical curve's p-value at the tail's start: the most a score above the start can get."""
    return float(np.interp(tail.start, curve.values, curve.survival, left=1.0, right=curve.end))


@dataclass(frozen=True)
class MethodCalibration:
    """Calibration of one score method on held-out normal images."""

    threshold: float
    scores: tuple[float, ...]
    tail: TailFit | None = None
    # the scores as a sorted float64 array and their survival curve, made once: every scored batch needs them
    sorted_scores: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    curve: SurvivalCurve = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.scores) < 2:
            raise ValueError(f"calibration needs at least 2 scores, got {len(self.scores)}")
        if not all(math.isfinite(s) for s in self.scores):
            raise ValueError("calibration scores must be finite")
        if not math.isfinite(self.threshold):
            raise ValueError(f"calibration threshold must be finite, got {self.threshold!r}")
        ordered = np.sort(np.asarray(self.scores, dtype=np.float64))
        ordered.flags.writeable = False
        object.__setattr__(self, "sorted_scores", ordered)
        object.__setattr__(self, "curve", survival_curve(ordered))

    def p_values(self, scores: NDArray[Any]) -> NDArray[np.float64]:
        """:func:`p_values` against this calibration."""
        return p_values(scores, self.sorted_scores, self.tail, curve=self.curve)

    def log_p_values(self, scores: NDArray[Any]) -> NDArray[np.float64]:
        """:func:`log_p_values` against this calibration."""
        return log_p_values(scores, self.sorted_scores, self.tail, curve=self.curve)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MethodCalibration":
        tail = data.get("tail")
        return cls(threshold=float(data["threshold"]), scores=tuple(float(s) for s in data["scores"]),
                   tail=TailFit.from_dict(tail) if tail is not None else None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold, "scores": list(self.scores)}
        if self.tail is not None:
            out["tail"] = self.tail.to_dict()
        return out


@dataclass(frozen=True)
class ScoreResult:
    """Scores of a batch with one method; higher means more anomalous.

    Attributes:
        method: the score method.
        scores: (N,) float32 scores.
        p_values: (N,) p-values against the calibration set (see ``p_values``).
        is_outlier: (N,) bool, ``scores > threshold``.
        threshold: the threshold used.
    """

    method: str
    scores: F32
    p_values: NDArray[np.float64]
    is_outlier: NDArray[np.bool_]
    threshold: float
