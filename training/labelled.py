"""A user's own labelled defects: real defective images with masks, read for the defect head's training.

Layout (``edgevae train --labelled-defects DIR``): every image ``NAME.EXT`` in DIR (and its sub-folders) has a
mask ``NAME_mask.EXT2`` beside it, any image format, of the same width and height; a mask pixel that is not
black marks the defect. Images are read as the run reads its training images: a tiled run at their own size
(shrunk by its ``downscale``), each at least one tile large; an untiled run resized to the input contract (the
mask resized alike, every pixel it touches kept). The head then puts them into a share of every training batch
beside the synthetic defects (:func:`edgevae.training.defects.insert_labelled`); the VAE never sees them.

Every problem is named with its file and what to do: a missing or empty mask, a mask of another size, an image
too small for a tile. Nothing is skipped silently: one bad pair stops the run before training starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from edgevae.runtime.contract import InputContract
from edgevae.runtime.errors import InputError
from edgevae.runtime.inputs import expand_paths

from .defects import LabelledDefects

MASK_SUFFIX = "_mask"


def load_labelled(folder: str | os.PathLike[str], contract: InputContract, tile: int | None = None,
                  downscale: int = 1) -> LabelledDefects:
    """Read the labelled defects in ``folder`` for a run with ``contract`` (and ``tile``/``downscale`` when tiled).

    Raises:
        InputError: the folder holds no image with a mask, or a pair is unusable (the message says which and why).
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: labelled defects must be a folder of images, each with a NAME{MASK_SUFFIX} "
                         "mask beside it")
    files = [Path(item.path) for item in expand_paths([root]) if item.kind == "image"]
    masks = {f.parent / f.stem[: -len(MASK_SUFFIX)]: f for f in files if f.stem.endswith(MASK_SUFFIX)}
    images, targets = [], []
    mask_reader = InputContract(1, contract.height, contract.width)
    for f in files:
        if f.stem.endswith(MASK_SUFFIX):
            continue
        mask_file = masks.get(f.parent / f.stem)
        if mask_file is None:
            raise InputError(f"{f}: no mask beside it; add {f.stem}{MASK_SUFFIX}.png (white where the defect is, "
                             "black elsewhere) or move the image out of the labelled folder")
        if tile is not None:
            img, mask = contract.read_native(f, downscale), mask_reader.read_native(mask_file, downscale)
        else:
            img, mask = contract.read_image(f), mask_reader.read_image(mask_file)
        if img.shape[1:] != mask.shape[1:]:
            raise InputError(f"{mask_file}: mask is {mask.shape[2]}x{mask.shape[1]} pixels, its image {f.name} "
                             f"{img.shape[2]}x{img.shape[1]}; a mask must have its image's size")
        if tile is not None and min(img.shape[1:]) < tile:
            raise InputError(f"{f}: {img.shape[2]}x{img.shape[1]} pixels (after downscale {downscale}) is smaller "
                             f"than one {tile}x{tile} tile; use a larger image of the defect")
        on = mask[0] > 0
        if not on.any():
            raise InputError(f"{mask_file}: the mask marks no pixel (all black); mark the defect in white")
        images.append(torch.from_numpy(img.astype(np.float32) / 255.0))
        targets.append(torch.from_numpy(on))
    if not images:
        raise InputError(f"{root}: no image with a mask; each defective image NAME.png needs NAME{MASK_SUFFIX}.png "
                         "beside it")
    return LabelledDefects(tuple(images), tuple(targets))


__all__ = ("MASK_SUFFIX", "load_labelled")
