"""Re-measure a bundle's calibration on a user's own held-out normal images (``edgevae calibrate``), numpy only.

Every method of the fp32 graphs and of every variant is calibrated again by the same code export uses
(:func:`edgevae.runtime.calibration.calibration_section`); the manifest keeps the previous calibration under
``calibration_history``; the bundle is rewritten by the one bundle writer (:mod:`edgevae.runtime.writer`), which
updates the graphs' embedded manifest and the checksums and swaps the folder into place only once it loads, so an
interrupted run leaves the old bundle as it was.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .bundle import load
from .calibration import Measured, calibrate_positional, calibrate_tiled, calibration_section, measure, section_of
from .errors import CalibrationError, CalibrationWarning
from .files import read_manifest
from .manifest import Calibration, Manifest
from .scores import warn_if_unpromisable
from .signing import SIGNATURE_FILE, KeySource
from .tiles import Tiling, grid_tiles, image_level_methods, tile_view
from .writer import bundle_files, write_bundle


# How a recalibration treats the stored calibration: ``auto`` pools the new images with the stored ones when their
# scores are consistent with them (else replaces it), ``pool`` always pools, ``replace`` always replaces.
MODES = ("auto", "pool", "replace")
# Significance level of the consistency check over all methods together (Bonferroni over the methods).
CONSISTENCY_ALPHA = 0.05


def ks_two_sample(a: NDArray[Any], b: NDArray[Any]) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic D of ``a`` and ``b`` and its asymptotic p-value (the
    Kolmogorov distribution at (sqrt(Ne) + 0.12 + 0.11 / sqrt(Ne)) D, Ne = n m / (n + m): Stephens' approximation,
    as given in Press et al., Numerical Recipes, section 14.3)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    both = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, both, side="right") / a.size
                            - np.searchsorted(b, both, side="right") / b.size)))
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:  # Q(0.2) = 1 to double precision; the series below converges slowly there
        return d, 1.0
    j = np.arange(1, 101, dtype=np.float64)
    p = float(2.0 * np.sum((-1.0) ** (j - 1) * np.exp(-2.0 * j * j * lam * lam)))
    return d, min(1.0, max(0.0, p))


def _stored_scores(stored: Calibration, measured: Measured) -> Measured | None:
    """The stored calibration's own scores in the shape of ``measured`` (every method's scores, each image's part
    scores for the combination), or None when it does not keep them all: more images than it stores scores for
    (``MAX_CALIBRATION_SCORES``), methods it did not calibrate, or a combination without per-image part scores
    (bundles exported before edgevae kept them)."""
    n = stored.n
    if n is None or any(m not in stored.methods or stored.methods[m].sorted_scores.size != n for m in measured.scores):
        return None
    parts = None
    if measured.part_scores is not None:
        paired = {name: ((stored.raw.get("methods") or {}).get(name) or {}).get("paired") for name in measured.combinations}
        first = next(iter(paired.values()), None)
        if not first or any(p not in first or len(first[p]) != n for p in measured.part_scores):
            return None
        parts = {p: np.asarray(first[p], np.float64) for p in measured.part_scores}
    return Measured({m: stored.methods[m].sorted_scores for m in measured.scores}, parts, measured.combinations,
                    measured.weights)


def _consistency(stored: Measured, new: Measured) -> dict[str, float]:
    """Each method's KS p-value of the new images' scores against the stored calibration images' (the new ones
    rounded to float32, as stored)."""
    return {m: ks_two_sample(stored.scores[m], np.asarray(new.scores[m], np.float32))[1] for m in new.scores}


def _pooled(stored: Measured, new: Measured) -> Measured:
    parts = None if new.part_scores is None or stored.part_scores is None else {
        p: np.concatenate([stored.part_scores[p], new.part_scores[p]]) for p in new.part_scores}
    return Measured({m: np.concatenate([stored.scores[m], new.scores[m]]) for m in new.scores}, parts,
                    new.combinations, new.weights)


def _decide(mode: str, stored: Calibration | None, new: Measured, strict: bool = True) -> tuple[Measured | None, dict[str, Any]]:
    """The stored scores to pool with (None: replace) and the record of the decision; ``strict``: ``pool`` with a
    calibration that cannot be pooled is an error (else it is replaced)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    kept = _stored_scores(stored, new) if mode != "replace" and stored is not None else None
    if mode == "pool" and kept is None and strict:
        raise CalibrationError("the stored calibration cannot be pooled with new images: it does not keep every "
                               "calibration image's scores (more than 5,000 images, or a bundle exported before "
                               "edgevae kept them); recalibrate with --mode replace")
    if kept is None:
        reason = ("asked to replace it" if mode == "replace" else
                  "the stored calibration does not keep its images' scores, so it cannot be pooled")
        return None, {"decision": "replaced", "mode": mode, "reason": reason}
    p = _consistency(kept, new)
    worst = min(p, key=p.__getitem__)
    level = CONSISTENCY_ALPHA / len(p)
    record = {"mode": mode, "stored_images": int(kept.n), "new_images": int(new.n), "ks_p_values": p,
              "alpha": CONSISTENCY_ALPHA}
    if mode == "auto" and p[worst] < level:
        return None, {**record, "decision": "replaced",
                      "reason": f"the new images' {worst} scores differ from the stored calibration images' (KS p = "
                                f"{p[worst]:.2g} < {level:.2g}): the images changed, so the new images alone calibrate"}
    return kept, {**record, "decision": "pooled",
                  "reason": ("asked to pool" if mode == "pool" else
                             f"the new images' scores are consistent with the stored calibration images' (smallest KS "
                             f"p = {p[worst]:.2g}, {worst}; level {level:.2g})")
                            + f": {kept.n} stored + {new.n} new images calibrate together"}


def _calibration(bundle: Path, variant: str | None, stored: Calibration | None, images: NDArray[Any], fpr: float,
                 mode: str, source: str, strict: bool = True) -> Calibration:
    """One graph set's new calibration (the fp32 graphs' or a variant's): measured on ``images``, then pooled with
    or replacing ``stored`` (``_decide``); the section records the decision under ``recalibration``."""
    with load(bundle, ["CPUExecutionProvider"], variant=variant, trusted_keys=[], slice_workers=1) as model:
        new = measure(model, images)
    kept, record = _decide(mode, stored, new, strict)
    if kept is None or stored is None:
        return section_of(new, fpr, source=source, recalibration=record)
    return section_of(_pooled(kept, new), fpr, recalibration=record,
                      source=f"{stored.raw.get('source', 'the stored calibration images')}, pooled with {source}")


def _tiled_manifest(bundle: Path, manifest: Manifest, images: Sequence[NDArray[Any]], fpr: float) -> Manifest:
    """A tiled bundle calibrated again on whole images ((C, H, W) each, any sizes at least one tile): the tiles'
    own calibration on a grid of their tiles, then the image-level one on the images whole, as export does."""
    tiling = manifest.tiling
    if tiling is None:
        raise ValueError("not a tiled bundle")
    previous = tiling.calibration
    whole = [tile_view(im, manifest.contract.channels) for im in images]
    tiles = grid_tiles(whole, tiling.tile[0])
    tile_source = f"{len(whole)} whole normal images given to 'edgevae calibrate' ({tiles.shape[0]} grid tiles)"
    source = f"{len(whole)} whole normal images given to 'edgevae calibrate'"
    sections: dict[str | None, Calibration] = {}
    image_levels: dict[str | None, Calibration] = {}
    fixed: Tiling | None = None  # a fixed camera's new tiling section (references per position)
    for variant in (None, *manifest.variants):  # the fp32 graphs, then each edge variant on its own
        with load(bundle, ["CPUExecutionProvider"], trusted_keys=[], slice_workers=1, variant=variant) as model:
            main = calibration_section(model, tiles, fpr, source=tile_source)
            combination = main.combination(manifest.scoring.combined_parts, manifest.scoring.combined_weights)
            scorer = model.with_maps(model.maps, combination) if model.maps is not None else model
            methods = image_level_methods([m for m in main.methods if m in scorer.computable_methods])
            if model.positional is not None:  # a fixed camera (no variants): references and scores per position
                fixed, _ = calibrate_positional(scorer, model.positional, whole, tiling, fpr, methods, source=source)
                image_level = fixed.calibration
            else:
                image_level = calibrate_tiled(scorer, whole, tiling, fpr, methods, source=source)
        assert image_level is not None
        sections[variant], image_levels[variant] = main, image_level
    tiling = fixed if fixed is not None else replace(tiling, calibration=image_levels[None])
    warn_if_unpromisable(fpr, len(whole), tail=any(c.tail is not None for c in image_levels[None].methods.values()))
    named = list(manifest.variants)
    new = manifest.with_calibration(sections[None], {v: sections[v] for v in named},
                                    {v: image_levels[v] for v in named})
    raw = dict(new.raw)
    history = [dict(h) for h in raw.get("calibration_history", [])]
    if history and previous is not None:  # the image-level calibration it replaces, beside the tiles'
        history[-1]["tiling"] = previous.to_dict()
    raw["calibration_history"] = history
    return replace(new, raw=raw, tiling=tiling)


def recalibrated_manifest(bundle: Path, images: Any, fpr: float | None = None, mode: str = "auto") -> Manifest:
    """The bundle's manifest with every method (and every variant) calibrated again on ``images``: an array of
    images of the bundle's size, or for a tiled bundle a list of whole images of any sizes. ``mode`` (``MODES``)
    says whether the new images are pooled with the stored calibration images or replace them; a tiled bundle's
    calibration is always replaced."""
    manifest = read_manifest(bundle)
    if manifest.tiling is not None:
        if mode == "pool":
            raise CalibrationError("a tiled bundle's calibration is replaced, not pooled; use --mode replace or auto")
        return _tiled_manifest(bundle, manifest, list(images), fpr if fpr is not None else manifest.calibration_fpr)
    images = np.asarray(images)
    rate = fpr if fpr is not None else manifest.calibration_fpr
    source = f"{int(images.shape[0])} held-out normal images given to 'edgevae calibrate'"
    main = _calibration(bundle, None, manifest.calibration_section, images, rate, mode, source)
    decided = "pool" if main.raw["recalibration"]["decision"] == "pooled" else "replace"  # variants follow the fp32 graphs
    n = int(main.n or images.shape[0])
    warn_if_unpromisable(rate, n, tail=any(c.tail is not None for c in main.methods.values()))
    variants = {name: _calibration(bundle, name, v.calibration, images, rate, decided, source, strict=False)
                for name, v in manifest.variants.items()}
    return manifest.with_calibration(main, variants)


def recalibrate(bundle: str | os.PathLike[str], images: Any, fpr: float | None = None, *,
                sign_key: KeySource | None = None, mode: str = "auto") -> dict[str, Any]:
    """Calibrate a bundle again on ``images`` (held-out normal images: an array at the bundle's size, or for a
    tiled bundle a list of whole images of any sizes, (C, H, W) each) and rewrite it in place.

    ``mode``: ``auto`` (default) pools the new images with the stored calibration images when a Kolmogorov-Smirnov
    test per method (Bonferroni at ``CONSISTENCY_ALPHA``) finds their scores consistent with the stored ones, and
    otherwise lets the new images alone calibrate; ``pool`` and ``replace`` force either. Pooling needs the stored
    images' scores (bundles exported with this version keep them for up to 5,000 images); without them the
    calibration is replaced. The decision is recorded in ``calibration.recalibration``.

    A signature no longer matches a changed manifest: it is removed, unless ``sign_key`` signs the new manifest.
    ORT-format graphs keep the manifest they were exported with in their own metadata (their checksums and the
    manifest file are what loading uses).

    Returns:
        The new manifest.

    Raises:
        BundleError: the bundle does not load.
        CalibrationError: fewer than 10 images, or scores that are not finite.
    """
    path = Path(bundle)
    manifest = recalibrated_manifest(path, images, fpr, mode)
    if (path / SIGNATURE_FILE).exists() and sign_key is None:
        warnings.warn(f"{path} was signed; the new calibration changes its manifest, so the signature is removed. "
                      "Sign it again with 'edgevae sign' (or pass --sign KEY)", CalibrationWarning, stacklevel=2)
    return write_bundle(path, bundle_files(path), manifest, replace=True, sign_key=sign_key)
