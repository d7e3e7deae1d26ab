"""A panel of the real-image benchmark's texture defects, to look at what the hard rows ask for.

Rows: grass and gravel. Columns: a normal patch, then each local kind of the texture tasks (the hard kinds
``spot``, ``scratch``, ``discoloured`` and their visible versions), each shown as the defective patch above its
mask outline. The patches are the benchmark's own test images (``real_images.texture``, same seeds), enlarged 3x.

Usage:
    python benchmarks/defect_panel.py      # writes docs/images/texture_defects.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_images  # noqa: E402  (a sibling script module)

from edgevae.runtime.grid import save_png  # noqa: E402

KINDS = ("spot", "scratch", "discoloured", "spot_visible", "scratch_visible", "discoloured_visible")
OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "texture_defects.png"


def _outlined(patch: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The grey patch as RGB with the mask's outline in red."""
    rgb = np.repeat(patch[..., :1], 3, axis=2).astype(np.float32) / 255
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = (1.0, 0.1, 0.1)
    return rgb


def panel(example: int = 3, scale: int = 3) -> np.ndarray:
    rows = []
    for name in ("grass", "gravel"):
        task = real_images.texture(name, 64, 500, 100)
        top = [np.repeat(task.normal[example][..., :1], 3, axis=2).astype(np.float32) / 255]
        bottom = [top[0]]
        for kind in KINDS:
            top.append(np.repeat(task.anomalies[kind][example][..., :1], 3, axis=2).astype(np.float32) / 255)
            bottom.append(_outlined(task.anomalies[kind][example], task.masks[kind][example]))
        gap = np.ones((64, 4, 3), np.float32)
        rows += [np.concatenate([p for q in top for p in (q, gap)], axis=1),
                 np.concatenate([p for q in bottom for p in (q, gap)], axis=1), np.ones((6, rows[0].shape[1] if rows else
                                                                                          (64 + 4) * (len(KINDS) + 1), 3))]
    image = np.concatenate(rows, axis=0)
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_png(panel(), OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
