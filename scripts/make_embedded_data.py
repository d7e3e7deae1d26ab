"""Convert the 5,000 MNIST digits (CSV, one row per image: 784 pixels then the label) into
edgevae's embedded default dataset, ``training/embedded/mnist_5k.npz``: uint8 images (5000, 28, 28),
uint8 labels (5000,) and the fixed train/test split, a bool mask ``test`` (5000,) marking 100 images of
each digit drawn at random (seed 0). A random draw, not the last 100 of each digit: the file's order is
not random (its last 100 digits of each class lie measurably farther from the rest), and a test split
that differs from the training pool would make calibrated thresholds miss on it.

MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA 3.0.

Usage: python scripts/make_embedded_data.py ../shared/data/mnist_5k.csv.gz training/embedded/mnist_5k.npz
"""

from __future__ import annotations

import gzip
import sys

import numpy as np

SPLIT_SEED = 0
TEST_PER_CLASS = 100


def main(source: str, target: str) -> None:
    with gzip.open(source, "rt") as handle:
        rows = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if rows.shape[1] != 785 or rows.min() < 0 or rows.max() > 255:
        raise SystemExit(f"{source}: expected rows of 784 pixels in 0..255 plus a label, got shape {rows.shape}")
    images = rows[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = rows[:, 784].astype(np.uint8)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(labels.shape[0], dtype=bool)
    for digit in range(10):
        test[rng.choice(np.flatnonzero(labels == digit), TEST_PER_CLASS, replace=False)] = True
    np.savez_compressed(target, images=images, labels=labels, test=test)
    print(f"wrote {target}: {images.shape[0]} images, label counts {np.bincount(labels).tolist()}, "
          f"{int(test.sum())} in the test split")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
