"""Engine-agnostic batch scoring: a bundle path in, columns of scores, p-values, flags and errors out.

:class:`BatchScorer` is what a distributed engine's worker runs (``edgevae.runtime.ray_data`` for Ray Data,
``edgevae.runtime.spark`` for Apache Spark), and it runs as well in a plain loop. It is small to pickle (its
settings only), loads its bundle once per process the first time it scores, and maps a batch of images - arrays,
encoded image bytes or file paths, mixed as they come - to one row per input. An input that cannot be scored
gets its error message in the ``error`` column (the message ``edgevae score`` prints for it) and the rest of the
batch is scored. Only numpy, onnxruntime and Pillow are used here; no engine is imported.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .options import SCORE_METHODS

from .bundle import load
from .errors import ArrayInputError, InputError
from .inputs import _assemble
from .manifest import MANIFEST_FILE
from .model import Model
from .tiles import tile_view

# The columns a batch scores into, in this order. Failed rows: score and p_value NaN, is_outlier None.
COLUMNS = ("score", "p_value", "is_outlier", "error", "warning")


@dataclass(frozen=True)
class BatchScorer:
    """Score batches of images against a bundle; cheap to pickle, the bundle loads once per process.

    Args:
        bundle: the bundle directory (a path every worker can read: shared storage, or a copy shipped with the
            job; docs/scale.md).
        method: score method (default: the bundle's).
        fpr: flag at this false-positive rate (default: the calibrated one).
        threshold: flag scores above this value (overrides ``fpr``).
        strict: refuse images of another size or channel count instead of converting them.
        variant: an edge variant of the bundle (``int8``, ...); None: fp32.
        providers: onnxruntime providers, as :func:`edgevae.runtime.load` takes them.
        threads: onnxruntime threads per worker. One by default: the engine runs one worker per core.
        trusted_keys: Ed25519 public keys the bundle must be signed with (None: ``$EDGEVAE_TRUSTED_KEYS``).
    """

    bundle: str
    method: str | None = None
    fpr: float | None = None
    threshold: float | None = None
    strict: bool = False
    variant: str | None = None
    providers: str = "auto"
    threads: int = 1
    trusted_keys: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", os.fspath(self.bundle))
        if self.method is not None and self.method not in SCORE_METHODS:
            raise ValueError(f"unknown score method {self.method!r}; choose one of {', '.join(SCORE_METHODS)}")
        if self.fpr is not None and not 0.0 < self.fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {self.fpr}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.trusted_keys is not None:
            object.__setattr__(self, "trusted_keys", tuple(os.fspath(k) for k in self.trusted_keys))

    @property
    def model(self) -> Model:
        """The loaded bundle; loaded on first use and shared by every scorer with the same settings in this
        process (an engine's worker keeps it across batches and tasks)."""
        key = (self, _modified(self.bundle))
        with _LOCK:
            model = _LOADED.get(key)
            if model is None:
                model = load(self.bundle, self.providers, threads=self.threads, slice_workers=1,
                             variant=self.variant, trusted_keys=self.trusted_keys)
                _LOADED[key] = model
        return model

    @property
    def resolved_method(self) -> str:
        return self.method or self.model.manifest.default_method

    def score_items(self, items: Sequence[Any], names: Sequence[Any] | None = None) -> dict[str, NDArray[Any]]:
        """Score a batch: one row per item, in order.

        Args:
            items: each an image array (H, W), (C, H, W) or (H, W, C), uint8 or float in [0, 1]; the bytes of an
                encoded image file (PNG, JPEG, ...); or a file path (str or os.PathLike).
            names: what error messages call each item (default: the path for paths, ``row i`` otherwise).
                ``file:`` URIs are shown as plain paths.

        Returns:
            The ``COLUMNS``: ``score`` and ``p_value`` float64 (N,) (NaN where the item failed), ``is_outlier``
            object (N,) of True / False / None, ``error`` and ``warning`` object (N,) of str / None.
        """
        model = self.model
        labels = [_name(item, names[i] if names is not None else None, i) for i, item in enumerate(items)]
        if model.manifest.tiling is not None:
            return self._score_tiled(items, labels, model)
        batch = _assemble([self._decode(item, label, model) for item, label in zip(items, labels)], model.contract)
        n = len(labels)
        out: dict[str, NDArray[Any]] = {"score": np.full(n, np.nan), "p_value": np.full(n, np.nan),
                                        "is_outlier": np.full(n, None, dtype=object),
                                        "error": np.full(n, None, dtype=object),
                                        "warning": np.full(n, None, dtype=object)}
        result = None
        if batch.images is not None:
            result = model.score(batch.images, self.resolved_method, fpr=self.fpr, threshold=self.threshold)
        for row, (failed, j) in enumerate(batch.order):
            if failed:
                out["error"][row] = str(batch.failures[j][1])
            elif result is not None:
                out["score"][row] = float(result.scores[j])
                out["p_value"][row] = float(result.p_values[j])
                out["is_outlier"][row] = bool(result.is_outlier[j])
                out["warning"][row] = batch.warnings[j] or None
        return out

    def _score_tiled(self, items: Sequence[Any], labels: list[str], model: Model) -> dict[str, NDArray[Any]]:
        """``score_items`` for a tiled bundle: each item whole, at its own size, by tiles."""
        n = len(labels)
        out: dict[str, NDArray[Any]] = {"score": np.full(n, np.nan), "p_value": np.full(n, np.nan),
                                        "is_outlier": np.full(n, None, dtype=object),
                                        "error": np.full(n, None, dtype=object),
                                        "warning": np.full(n, None, dtype=object)}
        contract, downscale = model.contract, model.tiling.downscale
        decoded: list[tuple[int, Any]] = []
        for row, (item, name) in enumerate(zip(items, labels)):
            try:
                if isinstance(item, (str, os.PathLike)):
                    image = contract.read_native(_plain_path(os.fspath(item)), downscale)
                elif isinstance(item, (bytes, bytearray, memoryview)):
                    image = contract.decode_native(bytes(item), name, downscale)
                elif isinstance(item, np.ndarray):
                    image = tile_view(item, contract.channels)
                else:
                    raise ArrayInputError(f"{name}: cannot score a {type(item).__name__}; pass an image array, the "
                                          "bytes of an image file, or a path")
                len(model.tiling.grid(image.shape[1], image.shape[2]))  # refuses an image smaller than a tile
                model.tiling.check_frame(image.shape[1], image.shape[2])  # a fixed camera: frames of its size
            except InputError as exc:
                message = str(exc)
                out["error"][row] = message if message.startswith(name) else f"{name}: {message}"
                continue
            decoded.append((row, image))
        results = model.score_tiled_many([im for _, im in decoded], self.resolved_method, fpr=self.fpr,
                                         threshold=self.threshold) if decoded else []
        for (row, _), result in zip(decoded, results):
            out["score"][row], out["p_value"][row] = result.score, result.p_value
            out["is_outlier"][row] = bool(result.is_outlier)
        return out

    def _decode(self, item: Any, name: str, model: Model) -> tuple[str, Any, str]:
        """(name, uint8 (C, H, W) | float row | InputError, conversion note) for ``inputs._assemble``."""
        notes: list[str] = []
        contract = model.contract
        try:
            if isinstance(item, (str, os.PathLike)):
                image = contract.read_image(_plain_path(os.fspath(item)), strict_size=self.strict,
                                            strict_channels=self.strict, notes=notes)
            elif isinstance(item, (bytes, bytearray, memoryview)):
                image = contract.decode_image(bytes(item), name, strict_size=self.strict,
                                              strict_channels=self.strict, notes=notes)
            elif isinstance(item, np.ndarray):
                image = contract.to_nchw(item if item.ndim == 2 else item[None])[0]
            else:
                raise ArrayInputError(f"{name}: cannot score a {type(item).__name__}; pass an image array, the "
                                      "bytes of an image file, or a path")
        except InputError as exc:
            message = str(exc)
            return name, (exc if message.startswith(name) else type(exc)(f"{name}: {message}")), ""
        return name, image, "; ".join(notes)


_LOADED: dict[tuple[BatchScorer, float], Model] = {}
_LOCK = threading.Lock()


def _modified(bundle: str) -> float:
    """The manifest's modification time: a bundle rewritten in place is loaded again."""
    try:
        return os.stat(os.path.join(bundle, MANIFEST_FILE)).st_mtime
    except OSError:
        return -1.0  # load() says what is wrong with the path


def _plain_path(text: str) -> str:
    """``file:/x`` and ``file:///x`` (as Spark and Hadoop write local paths) as ``/x``."""
    if text.startswith("file://"):
        return text[len("file://"):]
    if text.startswith("file:"):
        return text[len("file:"):]
    return text


def _name(item: Any, given: Any, row: int) -> str:
    if given is not None:
        return _plain_path(str(given))
    if isinstance(item, (str, os.PathLike)):
        return _plain_path(os.fspath(item))
    return f"row {row}"


__all__ = ["BatchScorer", "COLUMNS"]
