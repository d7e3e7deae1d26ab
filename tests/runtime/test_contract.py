"""Input contract: layouts, dtypes, value checks, and image-file conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgevae.runtime import ArrayInputError, ImageReadError, InputContract, uint8_to_unit

pytestmark = pytest.mark.runtime

GRAY = InputContract(1, 28, 28)
RGB = InputContract(3, 32, 32)


def test_contract_validates_itself() -> None:
    with pytest.raises(ValueError, match="channels must be 1"):
        InputContract(2, 28, 28)
    with pytest.raises(ValueError, match="height must be an integer >= 8"):
        InputContract(1, 4, 28)
    with pytest.raises(ValueError, match="resize must be one of"):
        InputContract(1, 28, 28, resize="fancy")


def test_round_trip_dict() -> None:
    assert InputContract.from_dict(RGB.to_dict()) == RGB


@pytest.mark.parametrize("shape", [(28, 28), (5, 28, 28), (5, 1, 28, 28), (5, 28, 28, 1)])
def test_gray_layouts(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    out = GRAY.prepare(x)
    n = 1 if len(shape) == 2 else 5
    assert out.shape == (n, 1, 28, 28) and out.dtype == np.float32
    np.testing.assert_array_equal(out.reshape(-1), (x.astype(np.float32) / 255).reshape(-1))


def test_rgb_layouts_agree() -> None:
    nchw = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    nhwc = np.moveaxis(nchw, 1, -1)
    np.testing.assert_array_equal(RGB.prepare(nchw), RGB.prepare(nhwc))
    np.testing.assert_array_equal(RGB.prepare(nchw[0]), RGB.prepare(nhwc[0]))


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((2, 28, 28), dtype=np.int32), "dtype int32"),
        (np.full((2, 28, 28), np.nan, dtype=np.float32), "NaN or Inf"),
        (np.full((2, 28, 28), 2.0, dtype=np.float32), r"must lie in \[0, 1\]"),
        (np.zeros((2, 27, 28), dtype=np.uint8), "must be 28x28"),
        (np.zeros((2, 2, 2, 28, 28), dtype=np.uint8), "rank 2, 3 or 4"),
        (np.zeros((2, 2, 28, 28), dtype=np.uint8), r"\(N, 1, H, W\)"),
    ],
)
def test_bad_arrays_are_refused(x: np.ndarray, message: str) -> None:
    with pytest.raises(ArrayInputError, match=message):
        GRAY.prepare(x)


def test_float32_input_is_not_copied_needlessly() -> None:
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    assert GRAY.prepare(x) is x or np.shares_memory(GRAY.prepare(x), x)


def test_uint8_scaling_is_exact() -> None:
    x = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(uint8_to_unit(x), x.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "CMYK", "I;16"])
def test_image_modes_convert(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)
    assert img.mode == mode
    path = tmp_path / f"img.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    img.save(path)
    out = GRAY.read_image(path)
    assert out.shape == (1, 28, 28) and out.dtype == np.uint8
    if mode in ("L", "I;16"):
        np.testing.assert_array_equal(out[0], np.asarray(base))


def test_resize_rule(tmp_path: Path) -> None:
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (56, 40), dtype=np.uint8))
    big.save(tmp_path / "big.png")
    out = GRAY.read_image(tmp_path / "big.png")
    expected = np.asarray(big.resize((28, 28), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[0], expected)


def test_rgb_file(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "c.png")
    np.testing.assert_array_equal(RGB.read_image(tmp_path / "c.png"), np.moveaxis(arr, -1, 0))


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00"])
def test_bad_files_raise_image_read_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.png"):
        GRAY.read_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        GRAY.read_image(tmp_path / "missing.png")
