"""`edgevae calibrate`: a bundle re-calibrated on the user's own normal images, rewritten atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgevae.cli import main
from edgevae.runtime import CalibrationError, load
from edgevae.runtime.onnx_metadata import set_metadata
from edgevae.runtime.recalibrate import recalibrate

pytestmark = pytest.mark.runtime


def test_set_metadata_changes_only_that_entry(bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    data = (bundle / "encoder.onnx").read_bytes()
    out = set_metadata(set_metadata(data, "edgevae.manifest", '{"x": 1}'), "other", "kept")
    before, after = onnx.load_from_string(data), onnx.load_from_string(out)
    assert after.graph == before.graph and after.opset_import == before.opset_import
    assert {p.key: p.value for p in after.metadata_props} == {"edgevae.manifest": '{"x": 1}', "other": "kept"}


def test_recalibrate_replaces_the_calibration_and_keeps_the_old_one(bundle: Path, test_digits, tmp_path: Path) -> None:
    import onnxruntime as ort

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    old = json.loads((copy / "edgevae.json").read_text())
    x, y = test_digits
    normal = x[y <= 1][:150]
    raw = recalibrate(copy, normal, 0.02)
    assert raw["calibration"]["n"] == 150 and raw["calibration"]["fpr"] == 0.02
    assert raw["calibration_history"][-1]["methods"] == old["calibration"]["methods"]
    with load(copy, ["CPUExecutionProvider"]) as model:  # checksums and schema hold
        flagged = model.score(normal, "kl").is_outlier.mean()
        assert flagged <= 0.02 + 1e-9  # at most the rate on the images it was calibrated on
        embedded = ort.InferenceSession(str(copy / "encoder.onnx")).get_modelmeta().custom_metadata_map
        assert json.loads(embedded["edgevae.manifest"])["calibration"]["n"] == 150
    with pytest.raises(CalibrationError, match="at least 10"):
        recalibrate(copy, normal[:5])
    assert json.loads((copy / "edgevae.json").read_text())["calibration"]["n"] == 150  # the failed run changed nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folder left


def test_calibrate_command_and_signatures(bundle: Path, sample_folder: Path, tmp_path: Path, test_digits) -> None:
    pytest.importorskip("cryptography")
    from edgevae.runtime import generate_key, sign_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    _, public, _ = generate_key(tmp_path / "k")
    sign_bundle(copy, tmp_path / "k")
    folder = tmp_path / "normal"
    folder.mkdir()
    x, y = test_digits
    np.save(folder / "zeros_ones.npy", x[y <= 1][:120])
    runner = CliRunner()
    r = runner.invoke(main, ["calibrate", str(copy), str(folder)])
    assert r.exit_code == 0 and "recalibrated" in r.output and "signature is removed" in r.output, r.output
    assert not (copy / "edgevae.sig").exists()
    r = runner.invoke(main, ["calibrate", str(copy), str(folder), "--sign", str(tmp_path / "k"), "--fpr", "0.05"])
    assert r.exit_code == 0, r.output
    with load(copy, ["CPUExecutionProvider"], trusted_keys=[public]) as model:
        assert model.manifest.calibration_fpr == 0.05 and len(model.manifest.raw["calibration_history"]) == 2
