"""Write the mutated-input corpus used by the embed tier into tests/data/mutated_inputs/.

The project's own bad-input corpus (scripts/make_bad_inputs.py) holds the failures we thought of. This one holds
failures nobody chose: nine well-formed seed files (PNG of five kinds, PGM binary and plain, PPM, 16-bit PGM) of a
28x28 digit, each mutated by zzuf (a Debian package; random bit flips at a fixed seed and ratio) and cut at
random lengths. What a file *should* give is not written down here: the tests ask the Python runtime, and every
embedded program must agree with it — an error where Python reports one, the same score where Python scores.

zzuf is needed only to regenerate the corpus (the files are in the repository):
    apt-get install zzuf && python scripts/make_mutated_inputs.py
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "mutated_inputs"
RATIOS = (0.002, 0.006, 0.02)  # the share of bits zzuf flips
MUTANTS_PER_RATIO = 5
CUTS = 3


def digit() -> np.ndarray:
    """A synthetic 28x28 stroke with grey levels, so the corpus does not depend on the dataset."""
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 12:16] = 255
    img[4:8, 8:16] = 200
    img[20:24, 6:22] = 120
    return img


def _png(img: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **options)
    return buf.getvalue()


def seeds() -> dict[str, bytes]:
    """Well-formed files the runtime scores at 28x28, one per format the embedded programs read."""
    d = digit()
    grey = Image.fromarray(d)
    rgb = np.stack([d, d[::-1], d.T], axis=-1)
    return {
        "grey.png": _png(grey),
        "rgb.png": _png(Image.fromarray(rgb)),
        "palette.png": _png(grey.convert("P")),
        "rgba.png": _png(Image.fromarray(rgb).convert("RGBA")),
        "grey16.png": _png(Image.fromarray(d.astype(np.uint16) * 257)),
        "binary.pgm": b"P5\n28 28\n255\n" + d.tobytes(),
        "plain.pgm": b"P2\n# a comment\n28 28\n255\n" + " ".join(map(str, d.ravel())).encode() + b"\n",
        "binary.ppm": b"P6 28 28 255\n" + rgb.tobytes(),
        "sixteen.pgm": b"P5 28 28 65535\n" + (d.astype(">u2") * 257).tobytes(),
    }


def zzuf(data: bytes, seed: int, ratio: float) -> bytes:
    """The bytes as zzuf mutates them at this seed and ratio (deterministic)."""
    proc = subprocess.run(["zzuf", "-s", str(seed), "-r", str(ratio)], input=data, capture_output=True, check=True)
    return proc.stdout


def main() -> None:
    if shutil.which("zzuf") is None:
        sys.exit("zzuf is not installed: apt-get install zzuf")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    rng = np.random.default_rng(27)
    for name, data in seeds().items():
        stem, ext = name.rsplit(".", 1)
        seed = 0
        for ratio in RATIOS:
            for _ in range(MUTANTS_PER_RATIO):
                seed += 1
                (OUT / f"{stem}_zzuf_r{ratio}_s{seed}.{ext}").write_bytes(zzuf(data, seed, ratio))
        for cut in sorted(rng.integers(1, len(data), CUTS)):
            (OUT / f"{stem}_cut{cut}.{ext}").write_bytes(data[:cut])
    print(f"wrote {sum(1 for _ in OUT.iterdir())} files to {OUT}")


if __name__ == "__main__":
    main()
