"""Training on tiles (numpy only): images at their own size, random tiles per epoch, fixed validation tiles.

A tiled run (``DataSpec(tile=T)``, ``edgevae train --tile T``) never resizes an image to one size. It loads
every image at its own size (shrunk by ``downscale`` first when asked), splits the *images* into training and
held-out ones, and then:

- every epoch draws ``tiles_per_epoch`` tiles of T x T at random positions of random training images (an image
  is drawn in proportion to its number of tile positions, so every pixel of the training images is equally
  likely to be seen), from the epoch's own seeded generator;
- validation uses a fixed set of tiles on a grid over the held-out images (at most ``VALIDATION_TILES``);
- export calibrates the tile scores on those tiles and the image-level aggregate on the **whole** held-out
  images (``holdout.npz`` keeps them), so the image threshold is measured on what a user scores.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from edgevae.runtime import options
from edgevae.runtime.contract import InputContract
from edgevae.runtime.errors import InputError
from edgevae.runtime.inputs import expand_paths, is_array_path, is_idx_path, read_array_file, read_idx

from .data import EMBEDDED, DataSpec, embedded_split

def load_native(spec: DataSpec, channels: int, given: Any = None) -> tuple[list[NDArray[Any]], list[str]]:
    """A tiled run's images as a list of (C, H, W) arrays at their own size (divided by ``spec.downscale``),
    each at least one tile large; the list of skipped items with their reason.

    Raises:
        InputError: no usable image.
    """
    if spec.tile is None:
        raise ValueError("load_native reads tiled runs' images; this DataSpec has no tile")
    skipped: list[str] = []
    images: list[NDArray[Any]] = []
    if given is not None:
        rows = list(given) if isinstance(given, (list, tuple)) else list(_rows(np.asarray(given), channels))
        images = [_shrink(_chw(r, channels, "an image of the given array"), spec.downscale) for r in rows]
    elif spec.source == EMBEDDED:
        images = [_shrink(r, spec.downscale) for r in _rows(embedded_split(spec.split)[0], channels)]
    elif is_array_path(spec.source) or is_idx_path(spec.source):
        arr = read_idx(spec.source) if is_idx_path(spec.source) else read_array_file(spec.source)
        images = [_shrink(r, spec.downscale) for r in _rows(arr, channels)]
    else:
        reader = InputContract(channels, spec.tile, spec.tile)
        for item in expand_paths([spec.source]):
            if item.kind != "image":
                skipped.append(f"{item.path}: {item.error or 'not an image file'}")
                continue
            try:
                images.append(reader.read_native(item.path, spec.downscale))
            except InputError as exc:
                skipped.append(str(exc))
    kept = [im for im in images if min(im.shape[1:]) >= spec.tile]
    if len(kept) < len(images):
        skipped.append(f"{len(images) - len(kept)} image(s) smaller than one {spec.tile}x{spec.tile} tile "
                       f"(after downscale {spec.downscale}) were left out")
    if not kept:
        raise InputError(f"{spec.source}: no image is at least one {spec.tile}x{spec.tile} tile large "
                         f"({len(skipped)} skipped); choose a smaller --tile or --downscale")
    return kept, skipped


def _rows(arr: NDArray[Any], channels: int) -> list[NDArray[Any]]:
    """The images of an (N, H, W), (N, C, H, W) or (N, H, W, C) array as (C, H, W) views."""
    if arr.ndim == 3:
        return [r[None] for r in arr] if channels == 1 else [_chw(arr, channels, "the array")]
    if arr.ndim == 4:
        return [_chw(r, channels, "an image of the array") for r in arr]
    raise InputError(f"expected (N, H, W), (N, C, H, W) or (N, H, W, C) images, got shape {arr.shape}")


def _chw(image: NDArray[Any], channels: int, what: str) -> NDArray[Any]:
    a = np.asarray(image)
    if a.ndim == 2 and channels == 1:
        return a[None]
    if a.ndim == 3 and a.shape[0] == channels:
        return a
    if a.ndim == 3 and a.shape[-1] == channels:
        return np.moveaxis(a, -1, 0)
    raise InputError(f"{what} must be (H, W), (C, H, W) or (H, W, C) with C={channels}, got shape {a.shape}")


def _shrink(image: NDArray[Any], factor: int) -> NDArray[Any]:
    """``image`` (C, H, W) shrunk by a whole factor: the mean of each factor x factor block (edges cut)."""
    if factor == 1:
        return image
    c, h, w = image.shape
    h2, w2 = h // factor, w // factor
    blocks = image[:, :h2 * factor, :w2 * factor].reshape(c, h2, factor, w2, factor).astype(np.float32)
    out = blocks.mean(axis=(2, 4))
    return np.rint(out).astype(np.uint8) if image.dtype == np.uint8 else out.astype(image.dtype)


def tiles_per_epoch(images: Sequence[NDArray[Any]], tile: int, override: int | None = None) -> int:
    """Tiles drawn per epoch: ``override``, else one per tile-sized area of the images, clamped to
    ``options.TILES_PER_EPOCH_MIN`` .. ``options.TILES_PER_EPOCH_MAX``."""
    if override is not None:
        return override
    area = sum(int(im.shape[1]) * int(im.shape[2]) for im in images) // (tile * tile)
    return int(min(max(area, options.TILES_PER_EPOCH_MIN), options.TILES_PER_EPOCH_MAX))


@dataclass(frozen=True)
class TileSource:
    """Random tiles of ``tile`` x ``tile`` from a list of (C, H, W) images (each at least one tile large)."""

    images: Sequence[NDArray[Any]]
    tile: int

    def draw(self, n: int, rng: np.random.Generator) -> NDArray[Any]:
        """``n`` tiles (n, C, tile, tile), each from an image drawn in proportion to its tile positions."""
        t = self.tile
        positions = np.array([(im.shape[1] - t + 1) * (im.shape[2] - t + 1) for im in self.images], np.float64)
        which = rng.choice(len(self.images), size=n, p=positions / positions.sum())
        out = np.empty((n, self.images[0].shape[0], t, t), self.images[0].dtype)
        for i, k in enumerate(which):
            im = self.images[k]
            y = int(rng.integers(0, im.shape[1] - t + 1))
            x = int(rng.integers(0, im.shape[2] - t + 1))
            out[i] = im[:, y:y + t, x:x + t]
        return out


def fingerprint_images(images: Sequence[NDArray[Any]]) -> str:
    """``sha256:`` and the digest of a list of images (each one's dtype, shape and bytes, in order)."""
    digest = hashlib.sha256()
    for im in images:
        digest.update(f"{im.dtype.str}{tuple(im.shape)}".encode())
        digest.update(np.ascontiguousarray(im).data)
    return "sha256:" + digest.hexdigest()


def size_summary(images: Sequence[NDArray[Any]]) -> str:
    """``300x451`` or ``300x451 to 512x512`` (height x width) for the console."""
    sizes = sorted({(int(im.shape[1]), int(im.shape[2])) for im in images}, key=lambda s: s[0] * s[1])
    first, last = sizes[0], sizes[-1]
    return f"{first[0]}x{first[1]}" if first == last else f"{first[0]}x{first[1]} to {last[0]}x{last[1]}"
