"""Re-measure a bundle's calibration on a user's own held-out normal images (``edgevae calibrate``), numpy only.

Every method of the fp32 graphs and of every variant is calibrated again by the same code export uses
(:func:`edgevae.runtime.calibration.calibration_section`); the manifest keeps the previous calibration under
``calibration_history``; the bundle is rewritten by the one bundle writer (:mod:`edgevae.runtime.writer`), which
updates the graphs' embedded manifest and the checksums and swaps the folder into place only once it loads, so an
interrupted run leaves the old bundle as it was.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .bundle import load
from .calibration import calibrate_tiled, calibration_section
from .errors import CalibrationWarning
from .files import read_manifest
from .manifest import Calibration, Manifest
from .scores import warn_if_unpromisable
from .signing import SIGNATURE_FILE, KeySource
from .tiles import grid_tiles, image_level_methods, tile_view
from .writer import bundle_files, write_bundle


def _variant_calibration(bundle: Path, variant: str | None, images: NDArray[Any], fpr: float, source: str) -> Calibration:
    with load(bundle, ["CPUExecutionProvider"], variant=variant, trusted_keys=[], slice_workers=1) as model:
        return calibration_section(model, images, fpr, source=source)


def _tiled_manifest(bundle: Path, manifest: Manifest, images: Sequence[NDArray[Any]], fpr: float) -> Manifest:
    """A tiled bundle calibrated again on whole images ((C, H, W) each, any sizes at least one tile): the tiles'
    own calibration on a grid of their tiles, then the image-level one on the images whole, as export does."""
    tiling = manifest.tiling
    if tiling is None:
        raise ValueError("not a tiled bundle")
    whole = [tile_view(im, manifest.contract.channels) for im in images]
    tiles = grid_tiles(whole, tiling.tile[0])
    source = f"{len(whole)} whole normal images given to 'edgevae calibrate' ({tiles.shape[0]} grid tiles)"
    with load(bundle, ["CPUExecutionProvider"], trusted_keys=[], slice_workers=1) as model:
        main = calibration_section(model, tiles, fpr, source=source)
        combination = main.combination(manifest.scoring.combined_parts)
        scorer = model.with_maps(model.maps, combination) if model.maps is not None else model
        methods = image_level_methods([m for m in main.methods if m in scorer.computable_methods])
        image_level = calibrate_tiled(scorer, whole, tiling, fpr, methods,
                                      source=f"{len(whole)} whole normal images given to 'edgevae calibrate'")
    warn_if_unpromisable(fpr, len(whole), tail=any(c.tail is not None for c in image_level.methods.values()))
    new = manifest.with_calibration(main, {})
    raw = dict(new.raw)
    history = [dict(h) for h in raw.get("calibration_history", [])]
    if history and tiling.calibration is not None:  # the image-level calibration it replaces, beside the tiles'
        history[-1]["tiling"] = tiling.calibration.to_dict()
    raw["calibration_history"] = history
    return replace(new, raw=raw, tiling=replace(tiling, calibration=image_level))


def recalibrated_manifest(bundle: Path, images: Any, fpr: float | None = None) -> Manifest:
    """The bundle's manifest with every method (and every variant) calibrated again on ``images``: an array of
    images of the bundle's size, or for a tiled bundle a list of whole images of any sizes."""
    manifest = read_manifest(bundle)
    if manifest.tiling is not None:
        return _tiled_manifest(bundle, manifest, list(images), fpr if fpr is not None else manifest.calibration_fpr)
    images = np.asarray(images)
    rate = fpr if fpr is not None else manifest.calibration_fpr
    source = f"{int(images.shape[0])} held-out normal images given to 'edgevae calibrate'"
    main = _variant_calibration(bundle, None, images, rate, source)
    warn_if_unpromisable(rate, images.shape[0], tail=any(c.tail is not None for c in main.methods.values()))
    variants = {name: _variant_calibration(bundle, name, images, rate, source) for name in manifest.variants}
    return manifest.with_calibration(main, variants)


def recalibrate(bundle: str | os.PathLike[str], images: Any, fpr: float | None = None, *,
                sign_key: KeySource | None = None) -> dict[str, Any]:
    """Calibrate a bundle again on ``images`` (held-out normal images: an array at the bundle's size, or for a
    tiled bundle a list of whole images of any sizes, (C, H, W) each) and rewrite it in place.

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
    manifest = recalibrated_manifest(path, images, fpr)
    if (path / SIGNATURE_FILE).exists() and sign_key is None:
        warnings.warn(f"{path} was signed; the new calibration changes its manifest, so the signature is removed. "
                      "Sign it again with 'edgevae sign' (or pass --sign KEY)", CalibrationWarning, stacklevel=2)
    return write_bundle(path, bundle_files(path), manifest, replace=True, sign_key=sign_key)
