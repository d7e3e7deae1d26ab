"""Calibrate score methods on held-out normal images: thresholds at a false-positive rate, score quantiles for
p-values and, with enough images, a fitted tail. numpy only, so a bundle can be re-calibrated on a device."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import CalibrationError
from .manifest import Calibration, MapEntry
from .methods import METHODS, SCORE_METHODS
from .maps import Combination, MapStats, Reference, fit_combination, residual_magnitude
from .model import Scorer
from .scores import smallest_fpr, tail_model, threshold_at_fpr

if TYPE_CHECKING:
    from .tiles import Positional, Tiling

# Largest number of sorted scores a method's calibration keeps (as evenly spaced quantiles beyond that).
MAX_CALIBRATION_SCORES = 5000
# Fewest held-out images a calibration accepts.
MIN_CALIBRATION_IMAGES = 10
# Images per raw_scores call while calibrating, to bound memory of the Monte-Carlo methods.
CALIBRATION_BATCH = 256


@dataclass(frozen=True)
class Measured:
    """Raw scores of calibration images: per method (image order), the combined score's parts per image, the
    combinations they calibrate, and the combination's part weights (None: equal)."""

    scores: Mapping[str, NDArray[np.float64]]
    part_scores: Mapping[str, NDArray[np.float64]] | None
    combinations: tuple[str, ...]
    weights: tuple[float, ...] | None = None

    @property
    def n(self) -> int:
        first = next(iter(self.scores.values()), None)
        if first is None and self.part_scores:
            first = next(iter(self.part_scores.values()))
        return 0 if first is None else int(first.shape[0])


def scores_in_batches(scorer: Scorer, images: NDArray[Any], method: str, samples: int | None = None) -> NDArray[np.float64]:
    """Raw scores of ``images`` (N,) as float64, ``CALIBRATION_BATCH`` images per call."""
    parts = [scorer.raw_scores(images[i:i + CALIBRATION_BATCH], method, samples=samples)
             for i in range(0, images.shape[0], CALIBRATION_BATCH)]
    return np.concatenate(parts).astype(np.float64)


def measure(scorer: Scorer, images: NDArray[Any], methods: Sequence[str] = SCORE_METHODS) -> Measured:
    """Every computable method's raw scores of ``images`` (float64, in image order), and each image's scores of
    the combined score's parts when a combination is among ``methods`` (methods the scorer cannot compute, such as
    ``local`` without map statistics, are left out).

    Raises:
        CalibrationError: fewer than ``MIN_CALIBRATION_IMAGES`` images, or scores that are not finite.
    """
    if images.shape[0] < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(f"calibration needs at least {MIN_CALIBRATION_IMAGES} held-out images, "
                               f"got {images.shape[0]}")
    parts = scorer.spec.combined_parts
    computable = set(scorer.computable_methods)
    scores = {m: _finite(scores_in_batches(scorer, images, m), m)
              for m in methods if m in computable and METHODS[m].kind != "combination"}
    combinations = tuple(m for m in methods if METHODS[m].kind == "combination" and all(p in computable for p in parts))
    part_scores = None
    if combinations:
        batches = [scorer.combined_parts(images[i:i + CALIBRATION_BATCH])
                   for i in range(0, images.shape[0], CALIBRATION_BATCH)]
        part_scores = {p: _finite(np.concatenate([b[p] for b in batches]).astype(np.float64), p) for p in parts}
    return Measured(scores, part_scores, combinations, scorer.spec.combined_weights)


def calibrated_methods(measured: Measured, fpr: float) -> dict[str, Any]:
    """The manifest's ``calibration.methods`` from measured scores: per method the threshold at ``fpr``, the sorted
    held-out scores (at most ``MAX_CALIBRATION_SCORES`` quantiles) and, with enough images, a generalised Pareto
    model of their upper tail (``scores.tail_model``). ``combined`` also gets its parts' ``references`` (their
    scores on these images) and ``paired`` (each image's part scores, in one order: what pooling a later
    calibration with this one needs), and its threshold comes from leave-one-out statistics
    (``maps.fit_combination``)."""
    calibration = {m: _calibrated(v, fpr) for m, v in measured.scores.items()}
    for name in measured.combinations:
        assert measured.part_scores is not None
        combination, loo = fit_combination(tuple(measured.part_scores), measured.part_scores, measured.weights)
        calibration[name] = {**_calibrated(loo.astype(np.float64), fpr),
                             "references": combination.references_entry(),
                             "rule": "leave-one-out: each calibration image's parts against the other images"}
        if measured.n <= MAX_CALIBRATION_SCORES:
            calibration[name]["paired"] = {p: [float(v) for v in np.asarray(s, np.float32)]
                                           for p, s in measured.part_scores.items()}
    return {m: calibration[m] for m in SCORE_METHODS if m in calibration}


def calibrate(scorer: Scorer, images: NDArray[Any], fpr: float,
              methods: Sequence[str] = SCORE_METHODS) -> dict[str, Any]:
    """The manifest's ``calibration.methods`` for ``images``: :func:`calibrated_methods` of :func:`measure`.

    Raises:
        CalibrationError: fewer than ``MIN_CALIBRATION_IMAGES`` images, or scores that are not finite.
    """
    return calibrated_methods(measure(scorer, images, methods), fpr)


MIN_FPR_RULE = ("1 / (n + 1): the k-th largest of n exchangeable normal scores is exceeded by a new normal score "
                "with probability at most k / (n + 1)")


def calibration_section(scorer: Scorer, images: NDArray[Any], fpr: float, *, source: str) -> Calibration:
    """A whole calibration section (what export and ``edgevae calibrate`` both store): :func:`calibrate` on
    ``images``, their number, the smallest rate they can promise and where they came from.

    Raises:
        CalibrationError: as :func:`calibrate`.
    """
    return section_of(measure(scorer, images), fpr, source=source)


def section_of(measured: Measured, fpr: float, *, source: str, **extra: Any) -> Calibration:
    """The calibration section of measured scores (:func:`calibrated_methods`), with ``extra`` top-level fields."""
    n = measured.n
    return Calibration.from_dict({"fpr": fpr, "n": n, "min_fpr": smallest_fpr(n), "min_fpr_rule": MIN_FPR_RULE,
                                  "source": source, **extra, "methods": calibrated_methods(measured, fpr)})


def calibrate_tiled(scorer: Scorer, images: Sequence[NDArray[Any]], tiling: "Tiling", fpr: float,
                    methods: Sequence[str], *, source: str, positional: "Positional | None" = None) -> Calibration:
    """The image-level calibration of a tiled bundle (``tiling.calibration``): each method's aggregate of tile
    scores (``tiling.aggregate``) over every tile of each **whole** image of ``images`` ((C, H, W) each, of any
    sizes), calibrated like a method's scores (:func:`calibrate`). ``scorer`` carries the tile-level calibration
    that ``combined`` reads its parts' p-values from; ``positional`` a fixed camera's per-position statistics.

    Raises:
        CalibrationError: fewer than ``MIN_CALIBRATION_IMAGES`` images, or scores that are not finite.
    """
    from .tiles import aggregate, image_tile_scores

    if len(images) < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(f"a tiled bundle calibrates its image scores on whole held-out images: got "
                               f"{len(images)}, needs at least {MIN_CALIBRATION_IMAGES}; train on more images or "
                               "hold out a larger share (--val-fraction)")
    per_image: dict[str, list[float]] = {m: [] for m in methods}
    tiles: list[int] = []
    for image in images:
        grid = tiling.grid(int(image.shape[1]), int(image.shape[2]))
        scores = image_tile_scores(scorer, image, grid, tuple(methods), positional=positional)
        tiles.append(len(grid))
        for m in methods:
            per_image[m].append(aggregate(scores[m], tiling.aggregate))
    return _image_level(per_image, tiles, fpr, source)


def _image_level(per_image: Mapping[str, Sequence[float]], tiles: Sequence[int], fpr: float, source: str) -> Calibration:
    """A tiled bundle's image-level calibration from each method's image scores and the images' tile counts."""
    calibrated = {m: _calibrated(_finite(np.asarray(v, np.float64), m), fpr) for m, v in per_image.items()}
    n = len(tiles)
    return Calibration.from_dict({"fpr": fpr, "n": n, "min_fpr": smallest_fpr(n), "min_fpr_rule": MIN_FPR_RULE,
                                  "source": source, "tiles_per_image": [min(tiles), max(tiles)],
                                  "tiles_median": int(np.median(tiles)),
                                  "methods": {m: calibrated[m] for m in SCORE_METHODS if m in calibrated}})


def calibrate_positional(scorer: Scorer, positional: "Positional", images: Sequence[NDArray[Any]], tiling: "Tiling",
                         fpr: float, methods: Sequence[str], *, source: str) -> tuple["Tiling", "Positional"]:
    """A fixed camera's tiling (export and ``edgevae calibrate`` both make it here): with the frame's per-position
    statistics (``positional.stats`` and, with a defect head, ``positional.defect``; its combination is not read),
    the references of ``combined``'s parts per tile of the held-out frames ``images`` (their ``local`` and
    ``defect`` read per position), then the image-level calibration of every method on those frames whole.

    Raises:
        CalibrationError: fewer than ``MIN_CALIBRATION_IMAGES`` frames, frames of another size, or scores that are
            not finite.
    """
    from .tiles import FRAME_MAP_FILE, Positional, aggregate, positional_frames

    stats, defect = positional.stats, positional.defect
    frame = positional.frame
    wrong = [tuple(int(v) for v in im.shape[1:]) for im in images if tuple(int(v) for v in im.shape[1:]) != frame]
    if wrong:
        raise CalibrationError(f"a fixed camera calibrates on frames of its size {frame[0]}x{frame[1]}; {len(wrong)} "
                               f"of {len(images)} are not (first: {wrong[0][0]}x{wrong[0][1]})")
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(f"a fixed camera calibrates on whole held-out frames: got {len(images)}, needs at "
                               f"least {MIN_CALIBRATION_IMAGES}")
    parts = tuple(scorer.spec.combined_parts)
    joined = "combined" in methods and all(p in scorer.computable_methods for p in parts)
    others = tuple(m for m in methods if m != "combined")
    grid = tiling.grid(*frame)
    per_image: dict[str, list[float]] = {m: [] for m in others}
    collected: dict[str, list[NDArray[Any]]] = {p: [] for p in parts} if joined else {}
    # one pass over the frames: every method's tiles and, for combined, its parts
    unjoined = Positional(stats, None, defect, positional.alignment)
    for got, _ in positional_frames(scorer, images, grid, others, unjoined, parts=joined):
        for m in others:
            per_image[m].append(aggregate(got[m], tiling.aggregate))
        for p in collected:
            collected[p].append(got[f"part:{p}"])
    references = None
    fitted = unjoined
    if joined:  # references of every frame's tiles, then each frame's combined read against them
        references = {p: Reference.fit(_finite(np.concatenate(v), p)) for p, v in collected.items()}
        combination = Combination(parts, references, scorer.spec.combined_weights)
        fitted = Positional(stats, combination, defect, positional.alignment)
        per_image["combined"] = [aggregate(combination.statistic({p: collected[p][i] for p in parts}), tiling.aggregate)
                                 for i in range(len(images))]
    cal = _image_level(per_image, [len(grid)] * len(images), fpr, source)
    entry = {**stats.manifest_entry(), "file": FRAME_MAP_FILE,
             "layout": "row-major (2, H, W) of the frame: per-pixel mean, then spread",
             "definition": "the residual magnitudes of a frame's tiles (as in scoring.map) stitched to the frame, "
                           "averaged where tiles overlap; map = (stitched - mean) / spread per pixel of the frame; a "
                           "tile's local = mean of the top_k largest map values under it"}
    return replace(tiling, positional=True, frame=frame, map=MapEntry.from_dict(entry), references=references,
                   calibration=cal, defect_map=defect.manifest_entry() if defect is not None else None,
                   alignment=positional.alignment.manifest_entry() if positional.alignment is not None else None), fitted


def _finite(scores: NDArray[np.float64], method: str) -> NDArray[np.float64]:
    if not np.isfinite(scores).all():
        raise CalibrationError(f"{method} scores of held-out images are not finite; the model is unusable")
    return scores


def _calibrated(scores: NDArray[np.float64], fpr: float) -> dict[str, Any]:
    """One method's entry: its sorted scores as stored (float32 values, at most ``MAX_CALIBRATION_SCORES``
    quantiles), the tail model of all its scores, and the threshold read off exactly what is stored, so that a
    program's p-value is below ``fpr`` exactly when its score is above the stored threshold."""
    kept = np.sort(scores)
    if kept.size > MAX_CALIBRATION_SCORES:
        kept = np.quantile(kept, np.linspace(0, 1, MAX_CALIBRATION_SCORES))
    stored = kept.astype(np.float32).astype(np.float64)
    tail = tail_model(scores)
    return {"threshold": threshold_at_fpr(stored, fpr, tail), "scores": [float(v) for v in stored],
            "tail": tail.to_dict()}


def fit_map_stats(scorer: Scorer, images: NDArray[Any]) -> Scorer:
    """A scorer like ``scorer`` with anomaly-map statistics measured on ``images`` (normal training images, never
    the calibration images: thresholds of the map-based scores then come from images the statistics did not see).

    Raises:
        CalibrationError: fewer than ``MIN_CALIBRATION_IMAGES`` images, or unusable statistics.
    """
    if images.shape[0] < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(f"anomaly-map statistics need at least {MIN_CALIBRATION_IMAGES} training images, "
                               f"got {images.shape[0]}")
    sigma = scorer.spec.smooth_sigma
    batches = (images[i:i + CALIBRATION_BATCH] for i in range(0, images.shape[0], CALIBRATION_BATCH))
    try:
        stats = MapStats.fit([residual_magnitude(xb, scorer.reconstruct(xb), sigma) for xb in batches], sigma)
    except ValueError as exc:
        raise CalibrationError(f"anomaly-map statistics of the training images are unusable: {exc}") from exc
    return scorer.with_maps(stats)


def auroc(labels: NDArray[Any], scores: NDArray[Any]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = anomaly), ties counted half.

    Computed by the rank-sum (Mann-Whitney U) identity with average ranks for ties.

    Raises:
        ValueError: the labels hold only one class.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} negative labels")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average rank of each run of equal scores: ranks first..last (1-based) share (first + last) / 2
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
