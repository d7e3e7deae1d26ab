"""Write images as a grid in an image file (Pillow, imported lazily)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .atomic import atomic_path


def to_uint8(images: NDArray[Any]) -> NDArray[np.uint8]:
    """float images in [0, 1] (N, C, H, W) -> uint8 (N, C, H, W), rounded and clipped."""
    out: NDArray[np.uint8] = np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return out


def make_grid(images: NDArray[Any], columns: int | None = None, pad: int = 2) -> NDArray[np.uint8]:
    """Tile (N, C, H, W) images in [0, 1] into one (H', W') or (H', W', 3) uint8 array with ``pad`` pixel gaps."""
    imgs = to_uint8(images)
    n, c, h, w = imgs.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    canvas = np.zeros((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[:, y:y + h, x:x + w] = imgs[i]
    return canvas[0] if c == 1 else np.moveaxis(canvas, 0, -1)


def save_png(array: NDArray[np.uint8], path: str | os.PathLike[str]) -> None:
    """Save a uint8 (H, W) or (H, W, 3) array, written to a temporary name and renamed into place.

    The format follows the file's extension (PNG, JPEG, BMP, TIFF, WebP, ... as Pillow writes them); a name
    without an extension Pillow knows gets PNG.

    Raises:
        OSError: the file cannot be written (the message names ``path``, never the temporary file).
    """
    from PIL import Image

    suffix = os.path.splitext(os.fspath(path))[1].lower()
    Image.init()
    image_format = Image.EXTENSION.get(suffix, "PNG")
    try:
        with atomic_path(path, suffix=suffix or ".png") as tmp:
            Image.fromarray(array).save(tmp, format=image_format)
    except OSError as exc:
        raise OSError(f"{os.fspath(path)}: cannot write the image ({exc.strerror or exc})") from None


def save_grid(images: NDArray[Any], path: str | os.PathLike[str], columns: int | None = None) -> None:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid."""
    save_png(make_grid(images, columns), path)
