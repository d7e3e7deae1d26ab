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


# Map values (standard deviations above normal at that pixel) shown at full heat in a map panel; 0 and below
# are not coloured.
MAP_DISPLAY_MAX = 8.0


def heat_colours(values: NDArray[Any]) -> NDArray[np.float32]:
    """A black-red-yellow-white ramp for values in [0, 1]: (..., 3) float32 in [0, 1]."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    out: NDArray[np.float32] = np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0.0, 1.0)
    return out


def map_panel(image: NDArray[Any], reconstruction: NDArray[Any] | None, anomaly_map: NDArray[Any],
              scale: int | None = None, defect_map: NDArray[Any] | None = None) -> NDArray[np.uint8]:
    """One image's panel, (H', 3 W' + gaps, 3) uint8: the image | its reconstruction (when given) | the anomaly
    map as a heat map over the image in gray (| the defect head's map, probabilities in [0, 1], the same way, when
    given). ``scale`` enlarges each pixel (default: to about 128 pixels high)."""
    c, h, w = image.shape
    k = scale or max(1, 128 // max(h, w))
    gray = np.asarray(image, dtype=np.float32).mean(axis=0)

    def overlay(heat: NDArray[np.float32]) -> NDArray[np.float32]:
        alpha = np.minimum(1.0, 2.0 * heat)[None]
        out: NDArray[np.float32] = (1 - alpha) * (0.6 * gray[None]) + alpha * np.moveaxis(heat_colours(heat), -1, 0)
        return out

    panels = [_rgb(np.asarray(image, dtype=np.float32))]
    if reconstruction is not None:
        panels.append(_rgb(np.asarray(reconstruction, dtype=np.float32)))
    panels.append(overlay(np.clip(np.asarray(anomaly_map, dtype=np.float32) / MAP_DISPLAY_MAX, 0.0, 1.0)))
    if defect_map is not None:
        panels.append(overlay(np.clip(np.asarray(defect_map, dtype=np.float32), 0.0, 1.0)))
    grid = make_grid(np.stack(panels), columns=len(panels), pad=1)
    return np.repeat(np.repeat(grid, k, axis=0), k, axis=1)


def _rgb(image: NDArray[np.float32]) -> NDArray[np.float32]:
    """(C, H, W) -> (3, H, W): a grayscale image repeated over three channels."""
    out: NDArray[np.float32] = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    return out
