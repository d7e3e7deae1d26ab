"""What a new user hit, each now a clear message with the documented exit status (never a traceback)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgevae.cli import main

pytestmark = pytest.mark.cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def clean(result) -> bool:  # type: ignore[no-untyped-def]
    return result.exception is None or isinstance(result.exception, SystemExit)


def test_outputs_in_missing_folders_are_usage_errors(runner: CliRunner, bundle: Path, sample_folder: Path,
                                                     tmp_path: Path) -> None:
    normal = str(sample_folder / "normal")
    for args in (["score", normal, "-m", str(bundle), "-o", str(tmp_path / "no" / "x.jsonl")],
                 ["encode", normal, "-m", str(bundle), "-o", str(tmp_path / "no" / "lat.npz")],
                 ["generate", "-m", str(bundle), "-o", str(tmp_path / "no" / "g.png")],
                 ["generate", "-m", str(bundle), "-o", str(tmp_path / "g.png"), "--npy", str(tmp_path / "no" / "g.npy")],
                 ["reconstruct", normal, "-m", str(bundle), "-o", str(tmp_path / "no" / "r.png")]):
        r = runner.invoke(main, args)
        assert r.exit_code == 2 and clean(r), (args, r.output)
        assert "does not exist (create it first)" in r.output and str(tmp_path / "no") in r.output


def test_thresholds_must_be_finite(runner: CliRunner, bundle: Path, sample_folder: Path, model) -> None:  # type: ignore[no-untyped-def]
    for value in ("nan", "inf", "1e400", "-inf"):
        r = runner.invoke(main, ["score", str(sample_folder / "normal"), "-m", str(bundle), "--threshold", value])
        assert r.exit_code == 2 and "must be a finite number" in r.output and clean(r), (value, r.output)
    with pytest.raises(ValueError, match="finite"):
        model.score(np.zeros((1, 28, 28), np.uint8), threshold=math.nan)


def test_a_run_folder_or_checkpoint_given_as_bundle_says_to_export(runner: CliRunner, tiny_run: Path,
                                                                   sample_folder: Path) -> None:
    for target in (tiny_run, tiny_run / "best.pt"):
        r = runner.invoke(main, ["score", str(sample_folder / "normal"), "-m", str(target)])
        assert r.exit_code == 1 and "a training run (checkpoint), not a bundle" in r.output
        assert f"edgevae export {target} -o bundle/" in r.output and clean(r)


def test_export_of_a_non_checkpoint_names_what_to_pass(runner: CliRunner, sample_folder: Path, tmp_path: Path) -> None:
    png = next((sample_folder / "normal").iterdir())
    r = runner.invoke(main, ["export", str(png), "-o", str(tmp_path / "b")])
    assert r.exit_code == 1 and "not a readable checkpoint" in r.output and "'edgevae train' wrote" in r.output
    assert len(r.output.strip().splitlines()) == 1 and clean(r)  # one line, not torch's weights_only essay


@pytest.mark.parametrize("size", ["64x", "0", "4x4", "7x9", "x", "64x64x3"])
def test_bad_sizes_and_lists_are_usage_errors_naming_the_option(runner: CliRunner, size: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    r = runner.invoke(main, ["train", "--size", size, "--epochs", "1", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and "--size" in r.output and ">= 8" in r.output and clean(r), r.output
    r = runner.invoke(main, ["train", "--classes", "3,a", "--epochs", "1", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and "--classes" in r.output and "'3,a'" in r.output


def test_score_format_follows_the_output_extension(runner: CliRunner, bundle: Path, sample_folder: Path,
                                                   tmp_path: Path) -> None:
    r = runner.invoke(main, ["score", str(sample_folder / "normal"), "-m", str(bundle), "-o", str(tmp_path / "s.csv")])
    assert r.exit_code == 0 and (tmp_path / "s.csv").read_text().startswith("item,method,score,p_value,outlier,error")
    r = runner.invoke(main, ["score", str(sample_folder / "normal"), "-m", str(bundle), "-o", str(tmp_path / "s.jsonl")])
    assert r.exit_code == 0 and (tmp_path / "s.jsonl").read_text().startswith('{"item"')


def test_generate_writes_the_format_its_extension_names(runner: CliRunner, bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    for name, fmt in (("g.jpg", "JPEG"), ("g.png", "PNG"), ("g.bmp", "BMP")):
        r = runner.invoke(main, ["generate", "-m", str(bundle), "-n", "4", "-o", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        with Image.open(tmp_path / name) as img:
            assert img.format == fmt


def test_rows_keep_input_order_with_failures_in_place(runner: CliRunner, bundle: Path, sample_folder: Path,
                                                       tmp_path: Path) -> None:
    import json

    good = sorted(str(p) for p in (sample_folder / "normal").iterdir())[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    order = [good[0], str(bad), good[1], good[2]]
    r = runner.invoke(main, ["score", *order, "-m", str(bundle), "--format", "jsonl"])
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert r.exit_code == 2 and [row["item"] for row in rows] == order and "error" in rows[1]


def test_special_files_are_reported_and_never_opened(runner: CliRunner, bundle: Path, sample_folder: Path,
                                                     tmp_path: Path) -> None:
    import os
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(sample_folder / "normal", folder)
    os.mkfifo(folder / "pipe.png")  # reading it would block forever
    for target in (folder, folder / "pipe.png"):
        r = runner.invoke(main, ["score", str(target), "-m", str(bundle), "--format", "csv"])
        assert r.exit_code == 2 and "not a regular file (a FIFO, socket or device)" in r.output


def test_paths_passed_to_the_array_api_say_how_to_read_files(model) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime import ArrayInputError

    for bad in ("file.png", ["a.png", "b.png"], Path("x.png")):
        with pytest.raises(ArrayInputError, match="iter_batches"):
            model.score(bad)


def test_progress_lines_when_stderr_is_not_a_terminal(runner: CliRunner, bundle: Path, sample_folder: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import edgevae.cli as cli

    monkeypatch.setattr(cli, "PROGRESS_SECONDS", 0.0)  # every batch, for the test
    r = runner.invoke(main, ["score", str(sample_folder), "-m", str(bundle), "--batch-size", "4"])
    assert r.exit_code == 0 and r.output.count("progress: ") >= 3


def test_folder_walks_take_webp_like_named_files(runner: CliRunner, bundle: Path, sample_folder: Path,
                                                 tmp_path: Path) -> None:
    import json

    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    src = next((sample_folder / "normal").iterdir())
    for suffix in (".webp", ".gif", ".pgm"):
        Image.open(src).convert("L").save(folder / f"d{suffix}")
    (folder / "notes.txt").write_text("not an image")  # skipped by the walk, as before
    r = runner.invoke(main, ["score", str(folder), "-m", str(bundle), "--format", "jsonl"])
    items = sorted(Path(json.loads(line)["item"]).name for line in r.output.splitlines() if line.startswith("{"))
    assert r.exit_code == 0 and items == ["d.gif", "d.pgm", "d.webp"]


def test_bad_array_rows_are_named_by_file_and_row(runner: CliRunner, bundle: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((4, 28, 28)).astype(np.float32)
    x[2, 5, 5] = np.nan
    np.save(tmp_path / "rows.npy", x)
    r = runner.invoke(main, ["score", str(tmp_path / "rows.npy"), "-m", str(bundle), "--format", "csv"])
    assert r.exit_code == 2 and f"error: {tmp_path / 'rows.npy'}[2]: 1 image(s) contain NaN or Inf" in r.output


def test_pillows_bomb_warning_does_not_leak_next_to_the_message(bundle: Path, tmp_path: Path) -> None:
    import struct
    import subprocess
    import sys
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 0, 0, 0, 0)  # 100 M pixels: past Pillow's warning limit
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                    + chunk(b"IEND", b""))
    proc = subprocess.run([sys.executable, "-m", "edgevae.cli", "score", str(big), "-m", str(bundle)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "more than 64,000,000 pixels" in proc.stderr
    assert "DecompressionBombWarning" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr


def test_report_says_all_classes_and_never_minus_zero() -> None:
    from edgevae.runtime.report import _classes, _number

    assert _classes(None) == "all classes" and _classes([3]) == "class 3" and _classes([0, 1]) == "classes 0, 1"
    assert _number(-0.0, ".3g") == "0" and _number(-1e-9, ".3g") == "-1e-09"


def test_every_folder_of_the_package_is_listed_for_setuptools() -> None:
    """A folder setuptools would install as data without listing it is what made every install print a warning."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for package, folder in tool["package-dir"].items():
        for sub in (root / folder).rglob("*"):
            if sub.is_dir() and sub.name != "__pycache__" and any(p.is_file() for p in sub.iterdir()):
                name = package + "." + ".".join(sub.relative_to(root / folder).parts)
                mapped = any(name == p or (root / tool["package-dir"].get(p, "")).resolve() == sub.resolve()
                             for p in listed)
                assert mapped, f"{sub} is not in [tool.setuptools] packages"


def test_docs_name_the_estimators_real_default() -> None:
    from edgevae.runtime import options

    text = (Path(__file__).resolve().parents[2] / "docs" / "python-api.md").read_text()
    assert f'OutlierVAE(method="{options.DEFAULT_METHOD}"' in text


def test_a_bad_labelled_defect_stops_training_before_it_starts(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from edgevae.cli import main

    data, labelled = tmp_path / "data", tmp_path / "labelled"
    data.mkdir(), labelled.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(data / f"n{i}.png")
    Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(labelled / "crack.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(labelled / "crack_mask.png")
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--tile", "16", "--epochs", "1",
                                  "--labelled-defects", str(labelled), "-o", str(tmp_path / "run")])
    assert r.exit_code != 0 and "crack_mask.png: the mask marks no pixel" in r.output, r.output
    assert "train loss" not in r.output, "nothing trains before the labelled defects are checked"
