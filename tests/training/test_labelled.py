"""A user's own labelled defects: reading image and mask pairs, and putting them into the head's batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from edgevae.runtime.contract import InputContract  # noqa: E402
from edgevae.runtime.errors import InputError  # noqa: E402
from edgevae.training.defects import LabelledDefects, insert_labelled  # noqa: E402
from edgevae.training.labelled import load_labelled  # noqa: E402


def _pair(folder: Path, name: str, size: tuple[int, int] = (40, 48), box: tuple[int, int, int, int] = (10, 14, 16, 20),
          mask_size: tuple[int, int] | None = None) -> None:
    rng = np.random.default_rng(len(name))
    img = (rng.random((size[0], size[1])) * 120 + 60).astype(np.uint8)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = 250
    mask = np.zeros(mask_size or size, np.uint8)
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(img).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_mask.png")


def test_pairs_are_read_at_native_size_for_tiles_and_resized_otherwise(tmp_path: Path) -> None:
    _pair(tmp_path, "a")
    (tmp_path / "more").mkdir()
    _pair(tmp_path / "more", "b", size=(64, 32), box=(30, 31, 2, 30))  # a 1-px scratch in a sub-folder
    found = load_labelled(tmp_path, InputContract(1, 16, 16), tile=16)
    assert [tuple(i.shape) for i in found.images] == [(1, 40, 48), (1, 64, 32)]
    assert [int(m.sum()) for m in found.masks] == [16, 28]
    assert float(found.images[0][0, 10, 16]) == pytest.approx(250 / 255)
    halved = load_labelled(tmp_path, InputContract(1, 16, 16), tile=16, downscale=2)
    assert tuple(halved.images[0].shape) == (1, 20, 24) and bool(halved.masks[1].any()), "a thin line survives"
    resized = load_labelled(tmp_path, InputContract(1, 28, 28))
    assert all(tuple(i.shape) == (1, 28, 28) for i in resized.images) and all(bool(m.any()) for m in resized.masks)
    rgb = load_labelled(tmp_path, InputContract(3, 16, 16), tile=16)
    assert tuple(rgb.images[0].shape) == (3, 40, 48)


@pytest.mark.parametrize("problem, match", [
    ("no mask", "no mask beside it"), ("empty mask", "marks no pixel"), ("other size", "must have its image's size"),
    ("too small", "smaller than one 16x16 tile"), ("nothing", "no image with a mask")])
def test_every_bad_pair_is_named_with_what_to_do(tmp_path: Path, problem: str, match: str) -> None:
    if problem == "no mask":
        _pair(tmp_path, "a")
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "lonely.png")
    elif problem == "empty mask":
        _pair(tmp_path, "a", box=(0, 0, 0, 0))
    elif problem == "other size":
        _pair(tmp_path, "a", mask_size=(40, 40))
    elif problem == "too small":
        _pair(tmp_path, "a", size=(12, 40), box=(2, 4, 2, 4))
    with pytest.raises(InputError, match=match):
        load_labelled(tmp_path, InputContract(1, 16, 16), tile=16)
    with pytest.raises(InputError, match="must be a folder"):
        load_labelled(tmp_path / "absent", InputContract(1, 16, 16), tile=16)


def test_labelled_defects_go_into_a_share_of_the_batch_whole_or_pasted() -> None:
    img = torch.zeros((1, 40, 40))
    img[0, 20, 5:35] = 1.0  # a bright scratch
    mask = img[0] > 0
    examples = LabelledDefects((img,), (mask,))
    batch = torch.full((200, 1, 16, 16), 0.5)
    target = torch.zeros((200, 1, 16, 16))
    insert_labelled(batch, target, examples, torch.Generator().manual_seed(0), share=0.25)
    carried = target.flatten(1).sum(1) > 0
    assert 30 <= int(carried.sum()) <= 70, "about a quarter of the batch"
    assert bool(((batch == 1.0) == (target > 0)).all()), "the target is exactly the defect's pixels"
    pasted = carried & ((batch == 0.5).flatten(1).any(1))  # the normal image shows around a pasted defect
    whole = carried & ((batch == 0.0).flatten(1).any(1))  # a whole window keeps the defect's own surroundings
    assert int(pasted.sum()) > 5 and int(whole.sum()) > 5
    assert torch.equal(batch[~carried], torch.full_like(batch[~carried], 0.5))
    with pytest.raises(ValueError, match="marks no pixel"):
        LabelledDefects((img,), (torch.zeros_like(mask),))
    surface = 0.3 + 0.05 * torch.randn((1, 40, 40), generator=torch.Generator().manual_seed(1))
    patch = torch.zeros((40, 40), dtype=torch.bool)
    patch[10:30, 12:32] = True  # wider than the transfer window: the estimate widens to reach the surface
    moved = LabelledDefects((surface + 0.4 * patch,), (patch,))
    change = moved.changes[0]
    assert float(change[0][~patch].abs().max()) == 0.0
    assert float(change[0][patch].mean()) == pytest.approx(0.4, abs=0.03), "the defect's change, not its surface"
    with pytest.raises(ValueError, match="windows"):
        insert_labelled(torch.zeros((4, 1, 48, 48)), torch.zeros((4, 1, 48, 48)), examples,
                        torch.Generator().manual_seed(0), share=0.99)


def test_labelled_defects_need_the_defect_head() -> None:
    from edgevae.training.loop import TrainConfig

    assert TrainConfig(labelled_defects=Path("x")).labelled_defects == "x"
    with pytest.raises(ValueError, match="no-defect-head"):
        TrainConfig(labelled_defects="x", defect_head=False)
