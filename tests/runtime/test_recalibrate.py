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
    raw = recalibrate(copy, normal, 0.02, mode="replace")
    assert raw["calibration"]["n"] == 150 and raw["calibration"]["fpr"] == 0.02
    assert raw["calibration"]["recalibration"]["decision"] == "replaced"
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


@pytest.mark.parametrize("n", [100, 150])
def test_recalibrating_on_a_small_set_keeps_what_the_default_flagged(bundle: Path, test_digits, tmp_path: Path,
                                                                    n: int) -> None:
    """The default (combined) keeps its global part after a recalibration on few images: its threshold is within
    reach of every part, so the images that are plainly not digits, which it flagged before, are still flagged
    (other digits and blends of two digits, near the boundary, move with the threshold: benchmarks/recalibration.py measures them on real
    models), and no two of the inputs beyond the calibration range tie."""
    import warnings

    from edgevae.runtime import CalibrationWarning
    from edgevae.training.samples import synthetic_outliers

    x, y = test_digits
    rng = np.random.default_rng(0)
    kinds = {"other digits": x[y >= 2][:300],
             **{k: np.stack(v) for k, v in _synthetic(synthetic_outliers, x[y >= 2], rng).items()}}
    with load(bundle, ["CPUExecutionProvider"]) as model:
        before = {k: model.score(v).is_outlier for k, v in kinds.items()}
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        recalibrate(copy, x[y <= 1][:n], mode="replace")  # the small set alone: the hardest case
    with load(copy, ["CPUExecutionProvider"]) as model:
        assert model.manifest.calibration_n == n
        for kind, images in kinds.items():
            after = model.score(images).is_outlier
            if kind not in ("other digits", "rotated_digit_blend") and before[kind].sum() >= 5:  # near the boundary
                assert (after & before[kind]).sum() >= 0.9 * before[kind].sum(), kind
        distinct = np.unique(np.concatenate(list(kinds.values())), axis=0)  # checkerboards etc. repeat exactly
        beyond = model.score(distinct)
        far = beyond.scores > model.manifest.calibration["combined"].sorted_scores[-1]
        assert far.sum() >= 10 and np.unique(beyond.scores[far]).size == far.sum()  # no ties beyond the range


def _synthetic(make, digits: np.ndarray, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[np.ndarray]] = {}
    for _ in range(20):
        for name, image in make(digits[rng.choice(digits.shape[0], 3, replace=False)], rng).items():
            out.setdefault(name, []).append(image)
    return out


def test_ks_two_sample_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    from edgevae.runtime.recalibrate import ks_two_sample

    rng = np.random.default_rng(3)
    for shift, (n, m) in [(0.0, (100, 150)), (0.3, (100, 100)), (0.8, (400, 120)), (0.05, (1000, 1000))]:
        a, b = rng.normal(0, 1, n), rng.normal(shift, 1, m)
        d, p = ks_two_sample(a, b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert abs(p - ref.pvalue) <= 0.02 + 0.1 * ref.pvalue, (shift, p, ref.pvalue)


def test_auto_pools_images_like_the_stored_ones_and_replaces_changed_ones(bundle: Path, test_digits,
                                                                          tmp_path: Path) -> None:
    """``auto``: new images whose scores are consistent with the stored calibration images' are pooled with them
    (every method's scores and each image's combined parts, so ``combined`` is fitted on all of them); darker
    images (a new camera) and images of another mix (only 1s) replace them; a bundle that does not keep its images' scores is replaced, and ``pool``
    refuses it."""
    import warnings

    from edgevae.runtime import CalibrationWarning
    from edgevae.runtime.maps import fit_combination

    x, y = test_digits
    normal = x[y <= 1][np.random.default_rng(0).choice(int((y <= 1).sum()), 120, replace=False)]  # 0s and 1s alike
    stored = json.loads((bundle / "edgevae.json").read_text())["calibration"]
    n0 = stored["n"]
    paired = stored["methods"]["combined"]["paired"]
    assert set(paired) == set(stored["methods"]["combined"]["references"]) and all(len(v) == n0 for v in paired.values())
    copies = {}
    for name in ("same", "darker", "old"):
        copies[name] = tmp_path / name
        shutil.copytree(bundle, copies[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        same = recalibrate(copies["same"], normal)["calibration"]
        darker = recalibrate(copies["darker"], (normal * 0.55).astype(np.uint8))["calibration"]
    assert same["recalibration"]["decision"] == "pooled" and same["n"] == n0 + 120, same["recalibration"]
    assert all(len(c["scores"]) == n0 + 120 for c in same["methods"].values())
    with load(copies["same"], ["CPUExecutionProvider"]) as model:
        parts = model.combined_parts(normal)
    pooled = {p: np.concatenate([np.asarray(paired[p]), np.asarray(parts[p], np.float64)]) for p in paired}
    loo = fit_combination(tuple(paired), pooled)[1]
    np.testing.assert_allclose(same["methods"]["combined"]["scores"], np.sort(loo), rtol=1e-6)
    assert darker["recalibration"]["decision"] == "replaced" and darker["n"] == 120
    assert "differ from the stored" in darker["recalibration"]["reason"]
    ones = recalibrate(copies["old"], x[y == 1][:100], mode="auto")["calibration"]  # the stored images are 0s and 1s
    assert ones["recalibration"]["decision"] == "replaced", ones["recalibration"]
    manifest = json.loads((copies["old"] / "edgevae.json").read_text())
    del manifest["calibration"]["methods"]["combined"]["paired"]  # as bundles exported before it was kept
    (copies["old"] / "edgevae.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(CalibrationError, match="cannot be pooled"):
        recalibrate(copies["old"], normal, mode="pool")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        old = recalibrate(copies["old"], normal)["calibration"]
    assert old["recalibration"]["decision"] == "replaced" and "cannot be pooled" in old["recalibration"]["reason"]
    result = CliRunner().invoke(main, ["calibrate", str(copies["darker"]), "--mode", "pool", str(_saved(normal, tmp_path))])
    assert result.exit_code == 0 and "pooled: asked to pool" in result.output, result.output


def _saved(images: np.ndarray, folder: Path) -> Path:
    path = folder / "normal.npy"
    np.save(path, images)
    return path
