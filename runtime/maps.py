"""Per-pixel anomaly maps, the local score built on them, and the combined score (numpy only).

The map of an image is its residual against its reconstruction (the decoded posterior mean), smoothed with a
Gaussian per channel, taken as a magnitude over channels, and standardised pixel by pixel by the mean and spread
that normal training images' residuals have there. A bundle stores the two (H, W) arrays in a file of its own
(``scoring.map`` in the manifest, covered by its checksums), so a program in any language reads the same numbers.

``local`` is the mean of the top share of an image's map values: a small defect lifts a few pixels far above
what normal images show there, which a whole-image average dilutes. ``combined`` joins a local and a global
score through their calibrated p-values (each part's scores on the held-out calibration images, with their
tail model): its statistic is ``-log(min_i p_i)``. Its threshold is calibrated on the same images with
leave-one-out p-values (each calibration image's parts are compared with the other images' scores only, as a
new image's are compared with all of them), so the combined flag keeps the stated false-positive rate as a whole.

Every function here has a PyTorch twin in ``edgevae.training.objectives``; tests check they agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from .methods import PART_METHODS
from .options import COMBINED_PARTS, LOCAL_TOP_FRACTION
from .scores import Residuals, SurvivalCurve, TailFit, log_p_values, p_values, reference_tail, smoothed_residual, survival_curve

F32 = NDArray[np.float32]
# Name of the map statistics file in a bundle: float32 little-endian, row-major (2, H, W): mean, then spread.
MAP_FILE = "map_stats.f32"
# The spread of each pixel is floored at this share of the mean spread over the image, so pixels where normal
# residuals are nearly constant (an always-dark border) do not turn sensor noise into huge map values.
SPREAD_FLOOR = 0.25
# Reference scores a combined part keeps (evenly spaced quantiles of the training images' scores).
MAX_REFERENCE_SCORES = 512
# The combined statistic's ceiling: only a part past a bounded tail's end (log p = -inf) reaches it.
MAX_STATISTIC = 1e30
# The key under which :meth:`Scorer.combined_parts` returns residual magnitudes beside the parts (not a method).
MAGNITUDES = "residual_magnitudes"


def residual_magnitude(x: F32, x_mean: F32, sigma: float, *, residual: F32 | None = None) -> F32:
    """The smoothed residual's magnitude (N, H, W): sqrt(sum over channels of (G_sigma * (x - x_mean))^2).

    The Gaussian G (``scores.smoothing_matrix``; zero beyond the edges) keeps residuals that form blobs and
    strokes and damps the thin, sign-alternating ones a slightly shifted edge leaves. ``residual``
    (``scores.smoothed_residual``), when a caller has it already, is used instead of being computed again.
    """
    n, c, h, w = x.shape
    r = smoothed_residual(x, x_mean, sigma) if residual is None else residual
    out: F32 = np.square(r)
    if c > 1:
        out = out.reshape(n, c, h, w).sum(axis=1, dtype=np.float32)
    else:
        out = out.reshape(n, h, w)
    np.sqrt(out, out=out)
    return out


def residual_local(r: Residuals) -> F32:
    """The registry's ``local``: the mean of the top of each image's anomaly map (N,); the smoothed residual is
    shared with ``smooth_recon`` where both use one width.

    Raises:
        ValueError: no map statistics.
    """
    stats = r.maps
    if stats is None:
        raise ValueError("the local score needs the anomaly-map statistics of a bundle")
    residual = r.smoothed if stats.sigma == r.sigma else None
    return stats.local_score(stats.standardise(residual_magnitude(r.x, r.mean, stats.sigma, residual=residual)))


def defect_score(logits: NDArray[Any], window: int) -> F32:
    """The registry's ``defect``: per image, the largest mean of the defect head's logits over a ``window`` x
    ``window`` square (clipped to the image), (N,).

    Averaging over a window makes one noisy pixel count for little and a defect of a few pixels count fully; the
    logits, not the probabilities, are averaged, so that clear defects keep distinct scores (probabilities
    saturate at 1 in float32). Sums run in float64 through an integral image (each window's sum from four
    corners), so programs in other languages reach the same value.

    Args:
        logits: the head's output (N, 1, H, W) or (N, H, W).
        window: side of the square, >= 1.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z.reshape(z.shape[0], z.shape[-2], z.shape[-1])
    n, h, w = z.shape
    kh, kw = min(window, h), min(window, w)
    integral = np.zeros((n, h + 1, w + 1), dtype=np.float64)
    np.cumsum(np.cumsum(z, axis=1), axis=2, out=integral[:, 1:, 1:])
    sums = (integral[:, kh:, kw:] - integral[:, :-kh, kw:] - integral[:, kh:, :-kw] + integral[:, :-kh, :-kw])
    out: F32 = (sums.reshape(n, -1).max(axis=1) / (kh * kw)).astype(np.float32)
    return out


def sigmoid(z: NDArray[Any]) -> F32:
    """1 / (1 + e^-z) elementwise, without overflow (the defect map as probabilities)."""
    z = np.asarray(z, dtype=np.float32)
    e = np.exp(-np.abs(z))
    out: F32 = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)
    return out


def top_k(height: int, width: int, fraction: float = LOCAL_TOP_FRACTION) -> int:
    """Pixels the local score averages: ``fraction`` of the image, at least one."""
    return max(1, int(round(fraction * height * width)))


@dataclass(frozen=True)
class MapStats:
    """Per-pixel standardisation of residual magnitudes, measured on normal training images.

    Attributes:
        mean: (H, W) mean residual magnitude of normal images.
        spread: (H, W) their standard deviation, floored (``SPREAD_FLOOR``); always > 0.
        sigma: the smoothing width (pixels) the magnitudes were measured with.
        top_k: pixels the ``local`` score averages.
    """

    mean: F32
    spread: F32
    sigma: float
    top_k: int

    def __post_init__(self) -> None:
        if self.mean.ndim != 2 or self.mean.shape != self.spread.shape:
            raise ValueError(f"map mean and spread must be two (H, W) arrays of one shape, got {self.mean.shape} "
                             f"and {self.spread.shape}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.spread).all() and (self.spread > 0).all()):
            raise ValueError("map statistics must be finite with a positive spread")
        if not 1 <= self.top_k <= self.mean.size:
            raise ValueError(f"top_k must be in 1..{self.mean.size}, got {self.top_k}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a positive number, got {self.sigma}")

    @classmethod
    def fit(cls, magnitudes: Sequence[F32], sigma: float, fraction: float = LOCAL_TOP_FRACTION) -> "MapStats":
        """Statistics of residual magnitudes (batches of (n, H, W)) of normal images."""
        total, squares, n = None, None, 0
        for batch in magnitudes:
            b = batch.astype(np.float64)
            total = b.sum(axis=0) if total is None else total + b.sum(axis=0)
            squares = np.square(b).sum(axis=0) if squares is None else squares + np.square(b).sum(axis=0)
            n += b.shape[0]
        if total is None or squares is None or n < 2:
            raise ValueError(f"map statistics need at least 2 images, got {n}")
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - np.square(mean), 0.0) * n / (n - 1))
        spread = np.maximum(std, SPREAD_FLOOR * max(float(std.mean()), 1e-6))
        h, w = mean.shape
        return cls(mean.astype(np.float32), spread.astype(np.float32), sigma, top_k(h, w, fraction))

    def to_bytes(self) -> bytes:
        """The bundle file: float32 little-endian (2, H, W), mean then spread."""
        return np.stack([self.mean, self.spread]).astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, shape: Sequence[int], sigma: float, k: int) -> "MapStats":
        arr = np.frombuffer(data, dtype="<f4").reshape(tuple(shape)).astype(np.float32)
        return cls(arr[0].copy(), arr[1].copy(), sigma, k)

    def standardise(self, magnitude: F32) -> F32:
        """Anomaly maps (N, H, W): (magnitude - mean) / spread, per pixel."""
        out: F32 = np.subtract(magnitude, self.mean, dtype=np.float32)
        out /= self.spread
        return out

    def local_score(self, maps: F32) -> F32:
        """Mean of each map's ``top_k`` largest values (N,)."""
        flat = maps.reshape(maps.shape[0], -1)
        top = np.partition(flat, flat.shape[1] - self.top_k, axis=1)[:, flat.shape[1] - self.top_k:]
        # the mean as ndarray.mean computes it (a float32 sum, then a division by the count), without its overhead
        out: F32 = np.add.reduce(top, axis=1, dtype=np.float32)
        out /= np.float32(self.top_k)
        return out

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's ``scoring.map`` section (the arrays are in ``MAP_FILE``)."""
        h, w = self.mean.shape
        return {"file": MAP_FILE, "shape": [2, h, w], "dtype": "float32", "byte_order": "little",
                "layout": "row-major (2, H, W): per-pixel mean, then spread", "sigma": self.sigma, "top_k": self.top_k,
                "definition": "map = (sqrt(sum_c (G_sigma * (x - x_mean))_c^2) - mean) / spread with x_mean the decoded "
                              "posterior mean and G_sigma a Gaussian (radius ceil(4 sigma), zero beyond the edges); "
                              "local = mean of the top_k largest map values"}


@dataclass(frozen=True)
class Reference:
    """A part's scores on normal held-out images (and their tail model), which turn its scores into p-values."""

    scores: NDArray[np.float64]
    tail: TailFit | None
    # the tail as p-values read it (see p_values) and the scores' survival curve, made once
    read_tail: TailFit | None = field(init=False, repr=False, compare=False)
    curve: SurvivalCurve = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s = np.asarray(self.scores, dtype=np.float64)
        if s.size > 1 and (s[1:] < s[:-1]).any():
            s = np.sort(s)
        object.__setattr__(self, "scores", s)  # ascending: p-values search it without checking again
        tail = self.tail
        if tail is not None and tail.shape < 0:
            tail = TailFit(tail.start, tail.fraction, 0.0, tail.scale)
        object.__setattr__(self, "read_tail", tail)
        object.__setattr__(self, "curve", survival_curve(s))

    @classmethod
    def fit(cls, scores: NDArray[Any]) -> "Reference":
        s = np.sort(np.asarray(scores, dtype=np.float64))
        if s.size < 2 or not np.isfinite(s).all():
            raise ValueError("a reference needs at least 2 finite scores")
        tail = reference_tail(s)
        kept = s if s.size <= MAX_REFERENCE_SCORES else np.quantile(s, np.linspace(0, 1, MAX_REFERENCE_SCORES))
        return cls(kept.astype(np.float32).astype(np.float64), tail)

    def p_values(self, scores: NDArray[Any]) -> NDArray[np.float64]:
        """p-values as calibration computes them (``scores.p_values``). A bounded tail (shape < 0), which bundles
        from before ``reference_tail`` may hold, is read as exponential (shape 0): past a bounded fit's end a p-value
        would be exactly 0, and one normal image a little beyond it would tie with the most extreme anomalies."""
        return p_values(scores, self.scores, self.read_tail, curve=self.curve)

    def log_p_values(self, scores: NDArray[Any]) -> NDArray[np.float64]:
        """The natural log of :meth:`p_values`, without underflow far beyond the references."""
        return log_p_values(scores, self.scores, self.read_tail, curve=self.curve)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scores": [float(v) for v in self.scores]}
        if self.tail is not None:
            out["tail"] = self.tail.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Reference":
        tail = data.get("tail")
        return cls(np.sort(np.asarray(data["scores"], dtype=np.float64)),
                   TailFit.from_dict(tail) if tail is not None else None)


@dataclass(frozen=True)
class Combination:
    """How ``combined`` joins its parts: their names, each one's reference distribution, and optionally each one's
    weight (its share of the false-alarm budget; None: equal shares)."""

    parts: tuple[str, ...]
    references: Mapping[str, Reference]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_parts(self.parts)
        missing = [p for p in self.parts if p not in self.references]
        if missing:
            raise ValueError(f"combined score has no reference scores for {missing}")
        if self.weights is not None:
            object.__setattr__(self, "weights", check_weights(self.parts, self.weights))

    @property
    def log_shares(self) -> tuple[float, ...] | None:
        """ln(k w_i / sum(w)) per part (k parts): 0 for every part when the weights are equal (None)."""
        return log_shares(self.weights)

    def statistic(self, part_scores: Mapping[str, NDArray[Any]]) -> F32:
        """-log(min over parts of the part's p-value over its share), per image (N,); each part's p-value is
        :meth:`Reference.p_values`, the one p-value rule of :func:`edgevae.runtime.scores.log_p_values`, read in
        log space: far beyond the references the statistic keeps growing instead of stopping at a floor. With
        weights, part i's p-value is divided by k w_i / sum(w) (a weighted Bonferroni rule: part i gets that share
        of the false-alarm budget); equal weights give the unweighted rule exactly."""
        shares = self.log_shares
        log_p = np.minimum.reduce([self.references[part].log_p_values(part_scores[part])
                                   - (shares[i] if shares is not None else 0.0) for i, part in enumerate(self.parts)])
        out: F32 = np.minimum(-log_p, MAX_STATISTIC).astype(np.float32)
        return out

    def references_entry(self) -> dict[str, Any]:
        """The ``references`` of the manifest's ``calibration.methods.combined``."""
        return {p: self.references[p].to_dict() for p in self.parts}

    @classmethod
    def from_manifest(cls, parts: Sequence[str], references: Mapping[str, Any],
                      weights: Sequence[float] | None = None) -> "Combination":
        return cls(tuple(parts), {p: Reference.from_dict(references[p]) for p in parts},
                   tuple(weights) if weights is not None else None)


STATISTIC = ("-ln(min over parts of p_part / share_part), share_part = k w_part / sum(w) for the k parts' weights "
             "scoring.combined.weights (1 for every part without them); p_part as calibration p-values are computed (the interpolated empirical "
             "survival curve: (1 + #{scores >= v}) / (n + 1) at each reference score v, linear between, 1 below the smallest; "
             "the tail model above its start, capped at the curve's value there, a bounded tail (shape < 0) read with shape "
             "0) against calibration.methods.combined.references[part]")


def fit_combination(parts: Sequence[str], part_scores: Mapping[str, NDArray[Any]],
                    weights: Sequence[float] | None = None) -> tuple[Combination, F32]:
    """The combination whose references are the parts' scores on held-out normal images, and those images'
    leave-one-out combined statistics (image j's parts against the other images' scores), from which its
    threshold is calibrated.

    Raises:
        ValueError: fewer than 3 images, or scores that are not finite.
    """
    n = len(next(iter(part_scores.values())))
    if n < 3:
        raise ValueError(f"the combined score needs at least 3 calibration images, got {n}")
    combination = Combination(tuple(parts), {p: Reference.fit(part_scores[p]) for p in parts},
                              tuple(weights) if weights is not None else None)
    shares = combination.log_shares or (0.0,) * len(parts)
    loo = np.empty(n, dtype=np.float64)
    for j in range(n):
        log_p = min(float(Reference.fit(np.delete(np.asarray(part_scores[part], np.float64), j)).log_p_values(
            np.asarray([part_scores[part][j]]))[0]) - shares[i] for i, part in enumerate(parts))
        loo[j] = min(-log_p, MAX_STATISTIC)
    return combination, loo.astype(np.float32)


def check_weights(parts: Sequence[str], weights: Sequence[float]) -> tuple[float, ...]:
    """Validate the weights of ``combined``'s parts: one finite positive number per part.

    Raises:
        ValueError: saying what is wrong.
    """
    out = tuple(float(w) for w in weights)
    if len(out) != len(parts) or not all(math.isfinite(w) and w > 0 for w in out):
        raise ValueError(f"combined needs one finite positive weight per part ({', '.join(parts)}); "
                         f"got {list(weights)}")
    return out


def log_shares(weights: Sequence[float] | None) -> tuple[float, ...] | None:
    """ln(k w_i / sum(w)) per part, or None (equal shares) for None or equal weights."""
    if weights is None or len(set(weights)) == 1:
        return None
    total = math.fsum(weights)
    return tuple(math.log(len(weights) * w / total) for w in weights)


def check_parts(parts: Sequence[str]) -> None:
    """Validate the parts of ``combined``: two or more distinct score methods other than ``combined`` itself.

    Raises:
        ValueError: with the allowed methods.
    """
    if len(parts) < 2 or len(set(parts)) != len(parts) or any(p not in PART_METHODS for p in parts):
        raise ValueError(f"combined needs two or more distinct parts from {', '.join(PART_METHODS)}; got {list(parts)} "
                         f"(default: {','.join(COMBINED_PARTS)})")


__all__: Sequence[str] = ("Combination", "MapStats", "Reference", "check_weights", "defect_score", "fit_combination", "sigmoid", "residual_magnitude", "top_k",
                          "MAP_FILE")
