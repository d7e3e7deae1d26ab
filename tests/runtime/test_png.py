"""The lean PNG reader: identical to Pillow on the files it takes, and it hands every other file to Pillow."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgevae.runtime import ImageReadError, InputContract
from edgevae.runtime.png import decode_png

pytestmark = pytest.mark.runtime


def _png(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _pillow(data: bytes) -> np.ndarray:
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@st.composite
def plain_images(draw: st.DrawFn) -> tuple[Image.Image, int, dict[str, object]]:
    """Random gray or RGB images whose rows compress with every PNG filter type (noise, ramps, flat areas)."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([1, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "ramp", "sparse", "flat"]))
    if kind == "noise":
        arr = rng.integers(0, 256, (h, w, channels))
    elif kind == "ramp":
        arr = np.cumsum(rng.integers(0, 7, (h, w, channels)), axis=draw(st.integers(0, 1)))
    elif kind == "sparse":
        arr = (rng.random((h, w, channels)) < 0.2) * rng.integers(0, 256, (h, w, channels))
    else:
        arr = np.full((h, w, channels), rng.integers(0, 256))
    arr = arr.astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr)
    options = {"compress_level": draw(st.integers(0, 9)), "optimize": draw(st.booleans())}
    return img, channels, options


@settings(max_examples=300, deadline=None)
@given(plain_images())
def test_identical_to_pillow(case: tuple[Image.Image, int, dict[str, object]]) -> None:
    img, channels, options = case
    data = _png(img, **options)
    got = decode_png(data, channels)
    assert got is not None
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, _pillow(data))


def test_every_filter_type_is_undone() -> None:
    """A hand-built file using filters 0-4 on successive rows decodes as Pillow decodes it."""
    rng = np.random.default_rng(0)
    h, w = 10, 9
    img = rng.integers(0, 256, (h, w)).astype(np.int64)
    raw = bytearray()
    prev = np.zeros(w, dtype=np.int64)
    for r in range(h):
        f = r % 5
        cur = img[r]
        left = np.r_[0, cur[:-1]]
        upleft = np.r_[0, prev[:-1]]
        if f == 0:
            pred = np.zeros(w, dtype=np.int64)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        raw += bytes([f]) + bytes(((cur - pred) % 256).astype(np.uint8))
        prev = cur

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))
    got = decode_png(data, 1)
    assert got is not None
    np.testing.assert_array_equal(got[0], img.astype(np.uint8))
    np.testing.assert_array_equal(got, _pillow(data))


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "I;16", "1"])
def test_other_kinds_go_to_pillow(mode: str) -> None:
    img = Image.new("RGB", (12, 12), (200, 30, 90)).convert(mode)
    assert decode_png(_png(img), 1) is None
    assert decode_png(_png(img), 3) is None


def test_wrong_channels_size_or_transparency_go_to_pillow() -> None:
    gray = _png(Image.new("L", (12, 10), 7))
    assert decode_png(gray, 3) is None
    assert decode_png(gray, 1, (12, 10)) is None  # (height, width) must match
    assert decode_png(gray, 1, (10, 12)) is not None
    assert decode_png(_png(Image.new("L", (12, 10), 7), transparency=7), 1) is None


def test_damaged_files_go_to_pillow() -> None:
    data = _png(Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)))
    flipped = bytearray(data)
    flipped[40] ^= 0xFF  # inside IDAT: the CRC no longer matches
    for broken in (data[:-20], data[:50], bytes(flipped), b"", data[:8], b"GIF89a" + data[6:]):
        assert decode_png(bytes(broken), 1) is None


def test_read_image_uses_it_and_keeps_pillow_errors(tmp_path: Path) -> None:
    contract = InputContract(1, 28, 28)
    arr = np.random.default_rng(1).integers(0, 256, (28, 28)).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "ok.png")
    np.testing.assert_array_equal(contract.read_image(tmp_path / "ok.png")[0], arr)
    # A file of another size still goes through Pillow's resize.
    Image.fromarray(arr).resize((40, 40)).save(tmp_path / "big.png")
    assert contract.read_image(tmp_path / "big.png").shape == (1, 28, 28)
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    with pytest.raises(ImageReadError, match="cut.png"):
        contract.read_image(tmp_path / "cut.png")
