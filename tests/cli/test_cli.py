"""The command line through click's runner and through real subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgevae.cli import main

pytestmark = pytest.mark.cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_version(runner: CliRunner) -> None:
    from edgevae import __version__

    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_score_table_flags_outliers(runner: CliRunner, bundle: Path, sample_folder: Path) -> None:
    # elbo, not the default rel_recon: under a weak model such as this tiny one, the reconstruction scores
    # miss high-energy noise (docs/scoring.md).
    result = runner.invoke(main, ["score", str(sample_folder), "-m", str(bundle), "--method", "elbo"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stdout.splitlines()[1:] if ln.strip()]
    assert len(lines) == 16
    flagged = {ln.split()[-1] for ln in lines if "OUTLIER" in ln}
    assert any("noise" in f for f in flagged) and any("checkerboard" in f for f in flagged)


def test_score_csv_and_jsonl_agree(runner: CliRunner, bundle: Path, sample_folder: Path, tmp_path: Path) -> None:
    out_csv = tmp_path / "s.csv"
    r1 = runner.invoke(main, ["score", str(sample_folder / "normal"), "-m", str(bundle), "--format", "csv",
                              "-o", str(out_csv), "--method", "recon"])
    assert r1.exit_code == 0, r1.output
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    r2 = runner.invoke(main, ["score", str(sample_folder / "normal"), "-m", str(bundle), "--format", "jsonl",
                              "--method", "recon"])
    records = [json.loads(x) for x in r2.stdout.splitlines()]
    assert [r["item"] for r in rows] == [r["item"] for r in records]
    for row, rec in zip(rows, records):
        assert float(row["score"]) == pytest.approx(rec["score"], rel=1e-5)
        assert 0 < rec["p_value"] <= 1


def test_score_arrays_idx_and_globs(runner: CliRunner, bundle: Path, sample_folder: Path, tmp_path: Path,
                                   test_digits) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "d.npy", test_digits[0][:3])
    np.savez(tmp_path / "d.npz", images=test_digits[0][:2])
    result = runner.invoke(main, ["score", str(tmp_path / "d.npy"), str(tmp_path / "d.npz"),
                                  str(sample_folder / "normal" / "digit[01]_*.png"), "-m", str(bundle),
                                  "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    items = [json.loads(x)["item"] for x in result.stdout.splitlines()]
    assert len(items) == 7 and items[0].endswith("d.npy[0]") and items[3].endswith("d.npz[0]")


def test_bad_input_exit_2_and_rest_scored(runner: CliRunner, bundle: Path, sample_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    result = runner.invoke(main, ["score", str(sample_folder / "normal"), str(tmp_path / "broken.png"),
                                  str(tmp_path / "missing.png"), "-m", str(bundle), "--format", "jsonl"])
    assert result.exit_code == 2
    records = [json.loads(x) for x in result.stdout.splitlines()]
    assert sum("score" in r for r in records) == 10
    assert sum("error" in r for r in records) == 2
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr


def test_fail_on_outlier_exit_3(runner: CliRunner, bundle: Path, sample_folder: Path) -> None:
    result = runner.invoke(main, ["score", str(sample_folder / "outliers"), "-m", str(bundle), "--fail-on-outlier",
                                  "--method", "elbo"])
    assert result.exit_code == 3
    result = runner.invoke(main, ["score", str(sample_folder / "outliers"), "-m", str(bundle), "--threshold", "1e12",
                                  "--fail-on-outlier"])
    assert result.exit_code == 0


def test_usage_errors_exit_2(runner: CliRunner, bundle: Path, sample_folder: Path) -> None:
    assert runner.invoke(main, ["score", str(sample_folder), "-m", str(bundle), "--method", "nope"]).exit_code == 2
    assert runner.invoke(main, ["score", "-m", str(bundle)]).exit_code == 2
    assert runner.invoke(main, ["score", str(sample_folder), "-m", str(bundle), "--fpr", "2"]).exit_code == 2


def test_bad_bundle_is_a_clear_error(runner: CliRunner, tmp_path: Path, sample_folder: Path) -> None:
    result = runner.invoke(main, ["score", str(sample_folder), "-m", str(tmp_path)])
    assert result.exit_code == 1
    assert "edgevae.json is missing" in result.output and "Traceback" not in result.output


def test_encode_generate_reconstruct_info(runner: CliRunner, bundle: Path, sample_folder: Path, tmp_path: Path) -> None:
    r = runner.invoke(main, ["encode", str(sample_folder / "normal"), "-m", str(bundle), "-o", str(tmp_path / "z.npz")])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "z.npz") as z:
        assert z["mu"].shape == (10, 4) and z["items"].shape == (10,) and z["kl"].shape == (10,)
    r = runner.invoke(main, ["encode", str(sample_folder / "normal"), "-m", str(bundle), "-o", str(tmp_path / "z.jsonl")])
    assert r.exit_code == 0 and len((tmp_path / "z.jsonl").read_text().splitlines()) == 10
    r = runner.invoke(main, ["generate", "-m", str(bundle), "-n", "9", "--seed", "1", "-o", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    from PIL import Image

    with Image.open(tmp_path / "g.png") as img:
        assert img.size == (3 * 30 + 2, 3 * 30 + 2)
    r = runner.invoke(main, ["reconstruct", str(sample_folder / "normal"), "-m", str(bundle), "-o", str(tmp_path / "r.png")])
    assert r.exit_code == 0 and (tmp_path / "r.png").exists()
    r = runner.invoke(main, ["info", str(bundle)])
    assert r.exit_code == 0 and "CPUExecutionProvider" in r.output and "threshold" in r.output
    r = runner.invoke(main, ["info", str(bundle), "--json"])
    assert json.loads(r.output)["schema_version"] == 1


def test_strict_providers_refuses_unavailable(runner: CliRunner, bundle: Path, sample_folder: Path) -> None:
    r = runner.invoke(main, ["score", str(sample_folder), "-m", str(bundle), "--providers", "cuda"])
    assert r.exit_code == 1 and "not available" in r.output


@pytest.mark.slow
def test_train_export_score_in_real_subprocesses(tmp_path: Path, sample_folder: Path) -> None:
    exe = [sys.executable, "-m", "edgevae.cli"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(exe + list(args), capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)

    p = run("train", "--classes", "4", "--epochs", "2", "--latent-dim", "3", "--widths", "4,8", "--hidden", "16",
            "-o", "run")
    assert p.returncode == 0, p.stderr
    assert "best validation negative ELBO" in p.stdout and (tmp_path / "run" / "best.pt").exists()
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["model_config"]
    assert (stored["activation"], stored["encoder_activation"]) == ("silu", "relu")  # the default
    p = run("export", "run", "-o", "bundle", "--elbo-samples", "2", "--defect-upsampling", "nearest")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "bundle" / "edgevae.json").read_text())["scoring"]["defect"]["upsampling"] == "nearest"
    p = run("info", "bundle")
    assert p.returncode == 0 and "nearest from half resolution" in p.stdout, p.stderr
    p = run("score", str(sample_folder), "-m", "bundle", "--format", "csv")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 17
    p = run("export", "run", "-o", "bundle")
    assert p.returncode == 1 and "--force" in p.stderr
    p = run("train", "--data", "no/such/folder", "-o", "run2")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_score_and_info_say_what_the_calibration_can_promise(runner: CliRunner, bundle: Path, sample_folder: Path) -> None:
    r = runner.invoke(main, ["score", str(sample_folder / "normal"), "-m", str(bundle), "--fpr", "0.001"])
    assert r.exit_code == 0 and "warning: false-positive rate 0.001 is below what 100 calibration images" in r.output
    r = runner.invoke(main, ["info", str(bundle)])
    assert r.exit_code == 0 and "smallest false-positive rate they can promise is 1/(n+1) = 0.0099" in r.output
