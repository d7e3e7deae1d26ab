"""Demo images: held-out digits from the embedded test split plus synthetic outliers, as PNG files. Five of the
outliers are plainly not digits; the sixth (``rotated_digit_blend``, two digits in one image) is a hard case that still
looks like handwriting.

numpy + Pillow only, so ``edgevae samples`` works where torch is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgevae.runtime.grid import save_png

from .data import embedded_split


def synthetic_outliers(digits: NDArray[np.uint8], rng: np.random.Generator) -> dict[str, NDArray[np.uint8]]:
    """28x28 uint8 outliers: five plainly not handwritten digits, and one blend of two digits (a hard case)."""
    h, w = digits.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    return {
        "noise": rng.integers(0, 256, size=(h, w), dtype=np.uint8),
        "inverted_digit": (255 - digits[0]).astype(np.uint8),
        "checkerboard": (((yy // 4 + xx // 4) % 2) * 255).astype(np.uint8),
        "white_square": np.pad(np.full((h - 8, w - 8), 255, np.uint8), 4),
        "stripes": ((yy // 3 % 2) * 255).astype(np.uint8),
        "rotated_digit_blend": np.maximum(digits[1], np.rot90(digits[2])).astype(np.uint8),
    }


def write_samples(folder: str | os.PathLike[str], per_class: int = 1, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Write ``per_class`` test digits of each class to ``folder/normal`` and synthetic outliers to
    ``folder/outliers``. Returns (normal paths, outlier paths)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    root = Path(folder)
    (root / "normal").mkdir(parents=True, exist_ok=True)
    (root / "outliers").mkdir(parents=True, exist_ok=True)
    images, labels = embedded_split("test")
    normal: list[Path] = []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)[:per_class]
        for k, i in enumerate(idx):
            path = root / "normal" / f"digit{digit}_{k:03d}.png"
            save_png(images[i], path)
            normal.append(path)
    outliers: list[Path] = []
    for name, img in synthetic_outliers(images, np.random.default_rng(seed)).items():
        path = root / "outliers" / f"{name}.png"
        save_png(img, path)
        outliers.append(path)
    return normal, outliers
