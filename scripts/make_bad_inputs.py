"""Write the bad-input corpus used by tests/cli/test_bad_inputs.py into tests/data/bad_inputs/.

Every file is small. Run from the repository root: python scripts/make_bad_inputs.py
Files named good_* or mode_* must be scored; every other file must be reported as an error.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "bad_inputs"


def digit() -> np.ndarray:
    """A synthetic 28x28 stroke, so the corpus does not depend on the dataset."""
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 12:16] = 255
    img[4:8, 8:16] = 200
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    base = Image.fromarray(digit())
    files: dict[str, bytes] = {
        "good_digit.png": png_bytes(base),
        "good_large_resized.png": png_bytes(base.resize((56, 70))),
        "mode_rgba.png": png_bytes(base.convert("RGBA")),
        "mode_la.png": png_bytes(base.convert("LA")),
        "mode_palette.png": png_bytes(base.convert("P")),
        "mode_i16.png": png_bytes(Image.fromarray(digit().astype(np.uint16) * 257)),
        "truncated.png": png_bytes(base)[:60],
        "not_an_image.png": b"this is a text file with an image extension\n",
        "zero_bytes.png": b"",
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "bomb.png": png_bytes(Image.new("1", (9000, 9000))),
        "bad_magic-idx3-ubyte": b"\x01\x02\x08\x03" + struct.pack(">III", 1, 28, 28) + bytes(784),
        "short-idx3-ubyte": b"\x00\x00\x08\x03" + struct.pack(">III", 2, 28, 28) + bytes(784),
    }
    cmyk = io.BytesIO()
    base.convert("CMYK").save(cmyk, format="JPEG")
    files["mode_cmyk.jpg"] = cmyk.getvalue()
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    nan = np.zeros((2, 28, 28), np.float32)
    nan[1, 3, 3] = np.nan  # row 0 is fine, row 1 is not
    np.save(OUT / "rows_one_nan.npy", nan)
    np.save(OUT / "wrong_dtype.npy", np.zeros((2, 28, 28), np.int32))
    np.save(OUT / "wrong_shape.npy", np.zeros((2, 20, 20), np.uint8))
    np.save(OUT / "object_array.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(OUT / "out_of_range.npy", np.full((1, 28, 28), 3.0, np.float32))
    print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")


if __name__ == "__main__":
    main()
