"""Re-measure a bundle's calibration on a user's own held-out normal images (``edgevae calibrate``), numpy only.

Every method of the fp32 graphs and of every variant is calibrated again; the manifest keeps the previous
calibration under ``calibration_history``; the ONNX graphs' embedded manifest and the checksums are updated;
the bundle is rewritten through a temporary folder and swapped into place, so an interrupted run leaves the old
bundle as it was.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .atomic import atomic_folder, write_synced
from .bundle import load, read_manifest, sha256_hex
from .calibration import calibrate
from .errors import CalibrationWarning
from .manifest import MANIFEST_FILE, METADATA_KEY, dumps, embedded_manifest
from .onnx_metadata import set_metadata
from .scores import smallest_fpr, warn_if_unpromisable
from .signing import SIGNATURE_FILE, KeySource, sign_manifest


def _calibrated(bundle: Path, variant: str | None, images: NDArray[Any], fpr: float) -> dict[str, Any]:
    with load(bundle, ["CPUExecutionProvider"], variant=variant, trusted_keys=[], slice_workers=1) as model:
        methods = calibrate(model, images, fpr)
        warn_if_unpromisable(fpr, images.shape[0], tail=any("tail" in c for c in methods.values()))
        return methods


def recalibrated_manifest(bundle: Path, images: NDArray[Any], fpr: float | None = None) -> dict[str, Any]:
    """The bundle's manifest with every method (and every variant) calibrated again on ``images``."""
    manifest = read_manifest(bundle)
    raw: dict[str, Any] = dict(manifest.raw)
    rate = fpr if fpr is not None else manifest.calibration_fpr
    n = int(images.shape[0])
    previous = dict(raw["calibration"])
    previous["replaced"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    raw["calibration_history"] = [*raw.get("calibration_history", []), previous]
    raw["calibration"] = {
        "fpr": rate, "n": n, "min_fpr": smallest_fpr(n), "min_fpr_rule": previous.get("min_fpr_rule"),
        "source": f"{n} held-out normal images given to 'edgevae calibrate'",
        "methods": _calibrated(bundle, None, images, rate),
    }
    raw["variants"] = {name: {**spec, "calibration": {"fpr": rate, "methods": _calibrated(bundle, name, images, rate)}}
                       for name, spec in (raw.get("variants") or {}).items()}
    return raw


def recalibrate(bundle: str | os.PathLike[str], images: NDArray[Any], fpr: float | None = None, *,
                sign_key: KeySource | None = None) -> dict[str, Any]:
    """Calibrate a bundle again on ``images`` (held-out normal images) and rewrite it in place.

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
    images = np.asarray(images)
    raw = recalibrated_manifest(path, images, fpr)
    if (path / SIGNATURE_FILE).exists() and sign_key is None:
        warnings.warn(f"{path} was signed; the new calibration changes its manifest, so the signature is removed. "
                      "Sign it again with 'edgevae sign' (or pass --sign KEY)", CalibrationWarning, stacklevel=2)
    embedded = dumps(embedded_manifest(raw))
    with atomic_folder(path, replace=True) as tmp:
        for item in path.iterdir():
            if item.name in (MANIFEST_FILE, SIGNATURE_FILE) or not item.is_file():
                continue
            data = item.read_bytes()
            if item.suffix == ".onnx":
                data = set_metadata(data, METADATA_KEY, embedded)
                raw["files"][item.name] = {"sha256": sha256_hex(data), "bytes": len(data)}
            write_synced(tmp / item.name, data)
        write_synced(tmp / MANIFEST_FILE, dumps(raw))
        if sign_key is not None:
            write_synced(tmp / SIGNATURE_FILE, sign_manifest(raw, sign_key).to_json())
        keys = [sign_key] if sign_key is not None else []
        for variant in [None, *raw["variants"]]:  # what was written loads, exactly as a device will load it
            load(tmp, ["CPUExecutionProvider"], variant=variant, trusted_keys=keys, slice_workers=1).close()
    return raw

