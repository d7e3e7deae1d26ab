"""What a run keeps so that it exports on its own: its held-out images, beside the checkpoints.

``train`` writes ``holdout.npz`` into the run folder once the split is made: the validation images (export's
parity check and calibration), up to ``REFERENCE_IMAGES`` training images chosen with the run's seed (the
anomaly-map statistics), each as loaded (uint8 where the source was), and the sha256 fingerprint of the whole
source as loaded. Export reads this file and never the training source, so a run exports after its data moved, was
deleted, or lived only in memory (``OutlierVAE.fit``). A run from before the file existed is exported from its
source, which must then still give the same fingerprint if the checkpoint recorded one.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgevae.runtime.atomic import atomic_path
from edgevae.runtime.options import REFERENCE_IMAGES

HOLDOUT = "holdout.npz"
HOLDOUT_VERSION = 1


# A tiled run whose images share one size keeps up to this many training images whole (at most FRAME_VALUES
# values in all), for a fixed camera's per-position statistics.
REFERENCE_FRAMES = 200
FRAME_VALUES = 64 * 2**20


def reference_frames(images: list[NDArray[Any]], seed: int) -> tuple[NDArray[Any], ...]:
    """Training images kept whole for per-position statistics: none unless all share one size, else up to
    ``REFERENCE_FRAMES`` (and ``FRAME_VALUES`` values) chosen with ``seed``."""
    if not images or len({tuple(im.shape) for im in images}) != 1:
        return ()
    limit = min(REFERENCE_FRAMES, max(1, FRAME_VALUES // int(images[0].size)), len(images))
    keep = np.sort(np.random.default_rng([seed, 7]).choice(len(images), limit, replace=False))
    return tuple(images[int(i)] for i in keep)


def fingerprint(images: NDArray[Any]) -> str:
    """``sha256:`` and the digest of an image array's dtype, shape and bytes (the source as loaded)."""
    digest = hashlib.sha256(f"{images.dtype.str}{tuple(images.shape)}".encode())
    digest.update(np.ascontiguousarray(images).data)
    return "sha256:" + digest.hexdigest()


def reference_indices(train_idx: NDArray[np.int64], seed: int, limit: int = REFERENCE_IMAGES) -> NDArray[np.int64]:
    """The training images the anomaly-map statistics are measured on: all, or ``limit`` chosen with ``seed``."""
    if train_idx.size <= limit:
        return train_idx
    return np.sort(np.random.default_rng(seed).choice(train_idx, limit, replace=False))


@dataclass(frozen=True)
class Holdout:
    """A run's held-out images (N, C, H, W) as loaded, and the fingerprint of the source they came from. A tiled
    run's ``calibration`` and ``reference`` are tiles, ``whole`` keeps its held-out images at their own
    sizes (C, H, W each) for the image-level calibration, and ``frames`` some of its training images whole when
    they all share one size (a fixed camera's per-position statistics are measured on them)."""

    calibration: NDArray[Any]
    reference: NDArray[Any]
    source_fingerprint: str
    whole: tuple[NDArray[Any], ...] = ()
    frames: tuple[NDArray[Any], ...] = ()

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write ``holdout.npz`` into the run folder atomically."""
        path = Path(run_dir) / HOLDOUT
        buffer = io.BytesIO()
        whole = {f"whole_{i:06d}": im for i, im in enumerate(self.whole)}
        frames = {f"frame_{i:06d}": im for i, im in enumerate(self.frames)}
        np.savez_compressed(buffer, calibration=self.calibration, reference=self.reference,
                            source_fingerprint=np.array(self.source_fingerprint), version=np.array(HOLDOUT_VERSION),
                            **whole, **frames)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(buffer.getvalue())
        return path

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> "Holdout | None":
        """The run's held-out images; None for a run written before they were kept.

        Raises:
            ValueError: the file exists but is unreadable or of another version.
        """
        path = Path(run_dir) / HOLDOUT
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["version"]) != HOLDOUT_VERSION:
                    raise ValueError(f"version {int(data['version'])}, this edgevae reads {HOLDOUT_VERSION}")
                whole = tuple(data[k] for k in sorted(k for k in data.files if k.startswith("whole_")))
                frames = tuple(data[k] for k in sorted(k for k in data.files if k.startswith("frame_")))
                return cls(data["calibration"], data["reference"], str(data["source_fingerprint"]), whole, frames)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable holdout file ({exc}); retrain the run or export with explicit "
                             "calibration images") from exc
