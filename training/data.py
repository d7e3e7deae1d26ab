"""Training data sources (numpy only): the embedded MNIST digits, image folders, .npy/.npz arrays, IDX files.

Every source is converted with the runtime's :class:`~edgevae.runtime.InputContract`, the single
implementation of preprocessing, so training sees exactly what a deployed model sees.

The embedded default holds 5,000 real MNIST digits (500 per class; MNIST by Yann LeCun, Corinna Cortes and
Christopher J.C. Burges, CC BY-SA 3.0). Its fixed split is stored in the file: for each digit, 100 images
drawn at random (seed 0) are the test split and the other 400 the training pool.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from numpy.typing import NDArray

from edgevae.runtime import options
from edgevae.runtime.contract import InputContract, mode_channels
from edgevae.runtime.errors import InputError
from edgevae.runtime.inputs import expand_paths, is_array_path, is_idx_path, read_array_file, read_idx

EMBEDDED = "embedded"
# The source of a run trained on an array given to ``train(images=...)``: nothing to read again.
IN_MEMORY = "<array>"


@dataclass(frozen=True)
class DataSpec:
    """Where training images come from.

    Args:
        source: ``"embedded"`` (the packaged MNIST digits), a folder of images, a .npy/.npz file, or an
            IDX images file (plain or .gz).
        classes: keep only these labels (one-class training: ``(3,)`` makes digit 3 the normal class).
        labels: labels for ``classes``: an IDX labels file, a .npy file, or the key inside an .npz.
        split: for the embedded data, ``"train"`` (400 per class) or ``"test"`` (100 per class).
        tile: train on random ``tile`` x ``tile`` tiles cut from the images at their own size (images of any size
            at least one tile large, mixed sizes allowed) instead of resizing every image to one size; the
            bundle then scores large images by tiles (``edgevae.runtime.tiles``). None: whole images.
        downscale: with ``tile``, shrink every image by this whole factor before cutting tiles (and before
            scoring: the bundle records it).
        tiles_per_epoch: with ``tile``, random tiles per epoch; None: one per tile-sized area of the training
            images, between ``TILES_PER_EPOCH_MIN`` and ``TILES_PER_EPOCH_MAX``.
    """

    source: str = EMBEDDED
    classes: tuple[int, ...] | None = None
    labels: str | None = None
    split: str = "train"
    tile: int | None = None
    downscale: int = 1
    tiles_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.tile is not None and not (isinstance(self.tile, int) and self.tile >= 8):
            raise ValueError(f"tile must be a whole number of pixels >= 8, got {self.tile!r}")
        if not (isinstance(self.downscale, int) and self.downscale >= 1):
            raise ValueError(f"downscale must be a whole number >= 1, got {self.downscale!r}")
        if self.tile is None and (self.downscale != 1 or self.tiles_per_epoch is not None):
            raise ValueError("downscale and tiles_per_epoch apply to tiled training; set tile too")
        if self.tiles_per_epoch is not None and self.tiles_per_epoch < 1:
            raise ValueError(f"tiles_per_epoch must be >= 1 or None (auto), got {self.tiles_per_epoch}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
            if not self.classes:
                raise ValueError("classes must name at least one label, or be None for all")
        if self.split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {self.split!r}")
        if self.source != EMBEDDED and self.split != "train":
            raise ValueError("split applies to the embedded data only; other sources use all their images")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes) if self.classes is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataSpec":
        classes = data.get("classes")
        tile, per_epoch = data.get("tile"), data.get("tiles_per_epoch")
        return cls(source=str(data.get("source", EMBEDDED)), classes=tuple(classes) if classes is not None else None,
                   labels=data.get("labels"), split=str(data.get("split", "train")),
                   tile=int(tile) if tile is not None else None, downscale=int(data.get("downscale", 1)),
                   tiles_per_epoch=int(per_epoch) if per_epoch is not None else None)


def _embedded() -> dict[str, NDArray[Any]]:
    ref = resources.files("edgevae.training.embedded") / "mnist_5k.npz"
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in ("images", "labels", "test")}


def embedded_split(split: str) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The fixed split of the embedded digits: ``train`` (4,000), ``test`` (1,000) or ``all``.

    The test split is 100 images of each digit drawn at random once (seed 0, stored in the data file by
    scripts/make_embedded_data.py), so it comes from the same distribution as the training pool.
    """
    data = _embedded()
    images, labels = data["images"], data["labels"]
    if split == "all":
        return images, labels
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    keep = data["test"] if split == "test" else ~data["test"]
    return images[keep], labels[keep]


@dataclass(frozen=True)
class SourceShape:
    """The image shape a data source implies, and how it was found (``note``, one sentence for the console)."""

    channels: int
    height: int
    width: int
    note: str


def infer_contract(spec: DataSpec, channels: int | None = None, size: tuple[int, int] | None = None,
                   images: NDArray[Any] | None = None) -> InputContract:
    """The input contract a source (or an in-memory array) implies; ``channels``/``size`` (H, W) override it."""
    shape = source_shape(spec, images)
    h, w = size if size is not None else (shape.height, shape.width)
    return InputContract(channels=channels or shape.channels, height=h, width=w)


def source_shape(spec: DataSpec, images: NDArray[Any] | None = None) -> SourceShape:
    """Channels and size of a source's images (or of ``images``, an in-memory array). Image folders: every file's
    header is read (not decoded); the majority channel count and the most common size win, and the note says how
    many files differ.

    Raises:
        InputError: no images, or an array of an unusable shape.
    """
    if images is not None:
        return _array_shape(np.asarray(images), "the given array")
    if spec.source == IN_MEMORY:
        raise InputError("this run was trained on an in-memory array; pass the images again (train(..., images=X))")
    if spec.source == EMBEDDED:
        return SourceShape(1, 28, 28, "the embedded digits (1x28x28)")
    if is_array_path(spec.source) or is_idx_path(spec.source):
        arr = read_idx(spec.source) if is_idx_path(spec.source) else read_array_file(spec.source)
        return _array_shape(arr, spec.source)
    return _folder_shape(spec.source)


def _array_shape(arr: NDArray[Any], source: str) -> SourceShape:
    """The shape of (N, H, W), (N, C, H, W) or (N, H, W, C) images in an array."""
    if arr.ndim == 3:
        c, h, w = 1, arr.shape[1], arr.shape[2]
    elif arr.ndim == 4:
        c, h, w = (arr.shape[1], arr.shape[2], arr.shape[3]) if arr.shape[1] in (1, 3) else (
            arr.shape[3], arr.shape[1], arr.shape[2])
    else:
        raise InputError(f"{source}: expected (N, H, W), (N, C, H, W) or (N, H, W, C) images, got shape {arr.shape}")
    return SourceShape(c, h, w, f"array of shape {tuple(arr.shape)}")


def _folder_shape(source: str) -> SourceShape:
    from PIL import Image, UnidentifiedImageError

    channels: Counter[int] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    unreadable = 0
    for item in expand_paths([source]):
        if item.kind != "image":
            continue
        try:
            with Image.open(item.path) as img:
                channels[mode_channels(img.mode)] += 1
                sizes[(img.height, img.width)] += 1
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
            unreadable += 1
    if not channels:
        raise InputError(f"{source}: found no readable image files to train on ({unreadable} unreadable)")
    c = channels.most_common(1)[0][0]
    (h, w), n = sizes.most_common(1)[0][0], sum(channels.values())
    kinds = {1: "grayscale", 3: "colour"}
    note = f"{c}x{h}x{w} from the headers of {n} image files (the majority channel count and the most common size)"
    if len(channels) > 1:
        note += f"; {n - channels[c]} {kinds[4 - c]} files are converted to {kinds[c]}"
    if len(sizes) > 1:
        note += f"; {n - sizes[(h, w)]} files of other sizes are resized"
    if unreadable:
        note += f"; {unreadable} unreadable files are skipped"
    return SourceShape(c, h, w, note)


def load_images(spec: DataSpec, contract: InputContract) -> tuple[NDArray[Any], NDArray[np.int64] | None, list[str]]:
    """Load a source as (N, C, H, W) arrays (uint8 or float in [0, 1]) plus labels when known.

    Returns:
        images, labels (or None), and the list of items that were skipped with their error.

    Raises:
        InputError: the source is missing, empty, or ``classes`` was given without labels.
    """
    skipped: list[str] = []
    labels: NDArray[Any] | None
    if spec.source == IN_MEMORY:
        raise InputError("this run was trained on an in-memory array, which edgevae cannot read again; its held-out "
                         "images are in the run folder (holdout.npz)")
    if spec.source == EMBEDDED:
        images, labels = embedded_split(spec.split)
        images = contract.to_nchw(images)
    elif is_array_path(spec.source):
        images = contract.to_nchw(read_array_file(spec.source))
        labels = _array_labels(spec)
    elif is_idx_path(spec.source):
        images = contract.to_nchw(read_idx(spec.source))
        labels = _idx_labels(spec)
    else:
        if spec.classes is not None:
            raise InputError("class filters need labels; image folders have none (put each class in its own folder)")
        rows: list[NDArray[np.uint8]] = []
        for source in expand_paths([spec.source]):
            if source.kind != "image":
                skipped.append(f"{source.path}: {source.error or 'not an image file'}")
                continue
            try:
                rows.append(contract.read_image(source.path))
            except InputError as exc:
                skipped.append(str(exc))
        if not rows:
            raise InputError(f"{spec.source}: no readable images ({len(skipped)} skipped)")
        images, labels = np.stack(rows), None
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise InputError(f"{spec.source}: {images.shape[0]} images but {labels.shape[0]} labels")
    if spec.classes is not None:
        if labels is None:
            raise InputError(f"{spec.source}: classes {list(spec.classes)} were asked for but the source has no "
                             "labels; pass --labels")
        keep = np.isin(labels, spec.classes)
        if not keep.any():
            raise InputError(f"{spec.source}: no images with labels {list(spec.classes)}; labels present: "
                             f"{sorted(set(labels.tolist()))}")
        images, labels = images[keep], labels[keep]
    if images.shape[0] == 0:
        raise InputError(f"{spec.source}: no images")
    return images, labels, skipped


def _array_labels(spec: DataSpec) -> NDArray[Any] | None:
    if spec.labels is not None and os.path.exists(spec.labels):
        return read_idx(spec.labels) if is_idx_path(spec.labels) else read_array_file(spec.labels)
    if spec.source.lower().endswith(".npz"):
        with np.load(spec.source, allow_pickle=False) as npz:
            key = spec.labels or next((k for k in ("labels", "y", "Y") if k in npz.files), None)
            if key is not None:
                if key not in npz.files:
                    raise InputError(f"{spec.source}: no array {key!r}; the archive has {npz.files}")
                return npz[key]
    return None


def _idx_labels(spec: DataSpec) -> NDArray[Any] | None:
    if spec.labels is not None:
        return read_idx(spec.labels)
    path = Path(spec.source)
    guess = path.with_name(path.name.replace("images-idx3", "labels-idx1").replace("images", "labels"))
    return read_idx(guess) if guess != path and guess.exists() else None


def auto_val_fraction(n: int) -> float:
    """The default share of ``n`` images held out for validation and calibration.

    At least ``VAL_FRACTION`` of them, raised to ``CALIBRATION_IMAGES`` images where that holds out no more than
    ``VAL_FRACTION_MAX``: 400 images give 100 (a quarter), 4,000 give 400 (a tenth), 200 give 50 (a quarter).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    held_out = min(max(options.VAL_FRACTION * n, options.CALIBRATION_IMAGES), options.VAL_FRACTION_MAX * n)
    return held_out / n


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Seeded random split of n items into (train, validation) index arrays."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise InputError(f"need at least 2 images to split into training and validation, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
