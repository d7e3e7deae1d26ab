"""The bad-input corpus (tests/data/bad_inputs, made by scripts/make_bad_inputs.py) through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"

EXPECTED_ERRORS = {
    "truncated.png": "corrupt or truncated",
    "not_an_image.png": "not a readable image",
    "zero_bytes.png": "not a readable image",
    "corrupt.jpg": "not a readable image",
    "bomb.png": "decompression bomb",
    "bad_magic-idx3-ubyte": "magic number",
    "short-idx3-ubyte": "truncated",
    "rows_one_nan.npy[1]": "NaN or Inf",
    "wrong_dtype.npy[0]": "dtype int32",
    "wrong_dtype.npy[1]": "dtype int32",
    "wrong_shape.npy": "must be 28x28",
    "object_array.npy": "cannot read array file",
    "out_of_range.npy[0]": "must lie in [0, 1]",
}
EXPECTED_SCORED = {"good_digit.png", "good_large_resized.png", "mode_rgba.png", "mode_la.png", "mode_palette.png",
                   "mode_i16.png", "mode_cmyk.jpg", "rows_one_nan.npy[0]"}


def _by_name(stdout: str) -> dict[str, dict[str, object]]:
    rows = [json.loads(line) for line in stdout.splitlines()]
    return {os.path.basename(str(r["item"])): r for r in rows}


def test_corpus_in_a_real_subprocess(bundle: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "self").symlink_to(loop)  # a symlink loop
    (loop / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    proc = subprocess.run(
        [sys.executable, "-m", "edgevae.cli", "score", str(CORPUS), str(empty), str(loop), str(tmp_path / "missing.png"),
         "-m", str(bundle), "--format", "jsonl"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Warning" not in proc.stderr  # e.g. Pillow's DecompressionBombWarning beside edgevae's own message
    rows = _by_name(proc.stdout)
    for name, message in EXPECTED_ERRORS.items():
        assert name in rows, f"{name} missing from output"
        assert message in str(rows[name].get("error")), (name, rows[name])
    for name in EXPECTED_SCORED:
        assert "score" in rows[name], (name, rows[name])
    assert "holds no images" in str(rows["empty_folder"]["error"])
    assert "symlink" in str(rows["dangling.png"]["error"])
    assert "no such file" in str(rows["missing.png"]["error"])
    assert f"{len(EXPECTED_SCORED)} scored" in proc.stderr


def test_strict_size_refuses_other_sizes(bundle: Path) -> None:
    from click.testing import CliRunner

    from edgevae.cli import main

    result = CliRunner().invoke(main, ["score", str(CORPUS / "good_large_resized.png"), str(CORPUS / "good_digit.png"),
                                       "-m", str(bundle), "--strict-size", "--format", "jsonl"])
    assert result.exit_code == 2
    rows = _by_name(result.stdout)
    assert "56x70" in str(rows["good_large_resized.png"]["error"]) and "score" in rows["good_digit.png"]


def test_channel_mismatch_is_reported_per_item_and_refused_with_strict(bundle: Path, tmp_path: Path) -> None:
    """A colour file scored by the grayscale bundle is converted with a warning per item (stderr line, csv column,
    jsonl field); --strict refuses it and still scores the rest."""
    import csv

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from edgevae.cli import main

    colour = tmp_path / "colour.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(colour)
    good = CORPUS / "good_digit.png"
    out_csv = tmp_path / "rows.csv"
    result = CliRunner().invoke(main, ["score", str(colour), str(good), "-m", str(bundle), "-o", str(out_csv)])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "colour image (3 channels) for a model that takes 1" in result.stderr
    rows = {Path(r["item"]).name: r for r in csv.DictReader(out_csv.open())}
    assert "converted with Image.convert('L')" in rows["colour.png"]["warning"] and rows["good_digit.png"]["warning"] == ""
    result = CliRunner().invoke(main, ["score", str(colour), str(good), "-m", str(bundle), "--format", "jsonl"])
    by_name = _by_name(result.stdout)
    assert "warning" in by_name["colour.png"] and "warning" not in by_name["good_digit.png"]
    result = CliRunner().invoke(main, ["score", str(colour), str(good), "-m", str(bundle), "--strict", "--format", "jsonl"])
    assert result.exit_code == 2
    by_name = _by_name(result.stdout)
    assert "drop --strict to convert" in str(by_name["colour.png"]["error"]) and "score" in by_name["good_digit.png"]
