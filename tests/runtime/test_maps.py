"""Anomaly maps, the local score and the combined default: runtime against the PyTorch twin, the bundle file,
the combined score's calibration, and the command line's --maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgevae.runtime.options import COMBINED_PARTS, DEFAULT_METHOD

pytestmark = pytest.mark.runtime


def test_bundle_stores_map_statistics_under_its_checksums(bundle: Path, model) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((bundle / "edgevae.json").read_text())
    entry = manifest["scoring"]["map"]
    assert entry["file"] in manifest["files"] and entry["shape"] == [2, 28, 28]
    raw = np.fromfile(bundle / entry["file"], dtype="<f4").reshape(2, 28, 28)
    np.testing.assert_array_equal(raw[0], model.maps.mean)
    np.testing.assert_array_equal(raw[1], model.maps.spread)
    assert (raw[1] > 0).all() and entry["top_k"] == 8  # 1 % of 784 pixels
    assert manifest["scoring"]["combined"]["parts"] == list(COMBINED_PARTS)
    assert set(manifest["calibration"]["methods"]["combined"]["references"]) == set(COMBINED_PARTS)
    assert manifest["scoring"]["default_method"] == DEFAULT_METHOD == "combined"


def test_map_statistics_file_altered_is_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from edgevae.runtime import BundleError, load

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "map_stats.f32").read_bytes())
    data[100] ^= 0x40
    (copy / "map_stats.f32").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="map_stats.f32.*sha256"):
        load(copy, ["CPUExecutionProvider"])


def test_anomaly_map_matches_the_pytorch_twin(tiny_run: Path, model, test_digits) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from edgevae.training import load_checkpoint
    from edgevae.training.objectives import anomaly_map, local_score

    x = model.prepare(test_digits[0][:16])
    vae = load_checkpoint(tiny_run).model.eval()
    with torch.no_grad():
        mean = vae.decode(vae.encode(torch.from_numpy(x))[0])[0]
        ref = anomaly_map(torch.from_numpy(x), mean, model.maps)
        ref_local = local_score(ref, model.maps.top_k).numpy()
    got = model.anomaly_map(x)
    assert got.shape == (16, 28, 28) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(model.raw_scores(x, "local"), ref_local, rtol=1e-4, atol=1e-4)


def test_local_score_finds_a_small_defect_that_the_average_dilutes(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    digits = test_digits[0][test_digits[1] <= 1][:40].copy()
    damaged = digits.copy()
    damaged[:, 2:6, 2:6] = 255  # a 4x4 spot in an empty corner
    maps = model.anomaly_map(damaged)
    assert (maps[:, 2:6, 2:6].max(axis=(1, 2)) > np.percentile(maps, 99, axis=(1, 2))).all()  # the map points at it
    local = model.raw_scores(np.concatenate([digits, damaged]), "local")
    labels = np.r_[np.zeros(40), np.ones(40)]
    from edgevae.runtime.calibration import auroc

    assert auroc(labels, local) > 0.95


def test_combined_is_minus_log_of_the_smaller_part_p_value(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    x = test_digits[0][:30]
    comb = model.combination
    parts = model.combined_parts(x)
    assert set(parts) == set(comb.parts)
    np.testing.assert_array_equal(parts["elbo"], model.raw_scores(x, "elbo", samples=model.spec.part_elbo_samples))
    p_min = np.min([comb.references[p].p_values(parts[p]) for p in comb.parts], axis=0)
    np.testing.assert_allclose(model.raw_scores(x, "combined"), -np.log(p_min), rtol=1e-6)
    # the references are the parts' calibration scores: a part's p-value inside combined is its calibrated one
    for p in ("local", "smooth_recon"):  # the elbo part draws fewer samples than the elbo method
        np.testing.assert_allclose(comb.references[p].p_values(parts[p]), model.score(x, p).p_values, rtol=1e-9)


def test_leave_one_out_statistics_match_a_direct_recomputation() -> None:
    from edgevae.runtime.maps import Reference, fit_combination

    rng = np.random.default_rng(0)
    scores = {"local": rng.gamma(2.0, size=60), "elbo": rng.normal(100, 5, size=60)}
    combination, loo = fit_combination(("local", "elbo"), scores)
    j = 17
    direct = min(Reference.fit(np.delete(scores[p], j)).p_values(np.array([scores[p][j]]))[0] for p in scores)
    assert loo[j] == pytest.approx(-np.log(direct), rel=1e-6)
    assert combination.references["elbo"].scores.size == 60


def test_combined_flags_what_either_part_flags_far_out(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    normal = test_digits[0][test_digits[1] <= 1][:50]
    white = np.full((5, 28, 28), 255, dtype=np.uint8)  # a global outlier
    spot = normal[:5].copy()
    spot[:, 20:25, 3:8] = 255  # a local one
    result = model.score(np.concatenate([white, spot]), "combined")
    assert result.is_outlier.all(), result.scores


def test_combined_calibration_holds_on_held_out_normals(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    """The stored threshold of the combined statistic flags about the stated rate of new normal images."""
    normal = test_digits[0][test_digits[1] <= 1]  # 200 test images of the training classes
    flagged = model.score(normal, "combined").is_outlier.mean()
    # 1 % target; 200 images and a 20-bit tiny model: a wide but failing-capable band
    assert flagged <= 0.06


def test_old_bundle_without_maps_scores_the_other_methods(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from edgevae.runtime import load
    from edgevae.runtime.manifest import dumps

    copy = tmp_path / "old"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "edgevae.json").read_text())
    del manifest["scoring"]["map"]
    for key in ("local", "combined"):
        del manifest["calibration"]["methods"][key]
    del manifest["files"]["map_stats.f32"]
    manifest["scoring"]["default_method"] = "smooth_recon"
    (copy / "map_stats.f32").unlink()
    (copy / "edgevae.json").write_text(dumps(manifest))
    old = load(copy, ["CPUExecutionProvider"])
    assert "combined" not in old.methods and old.score(np.zeros((2, 28, 28), np.uint8)).method == "smooth_recon"
    with pytest.raises(ValueError, match="no anomaly-map statistics.*re-export"):
        old.anomaly_map(np.zeros((1, 28, 28), np.uint8))


def test_score_maps_writes_one_panel_per_input(bundle: Path, sample_folder: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from edgevae.cli import main

    out = tmp_path / "maps"
    result = CliRunner().invoke(main, ["score", str(sample_folder / "outliers"), "-m", str(bundle), "--maps", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert len(files) == 6 and all(("_OUTLIER_" in f.name or "_normal_" in f.name) and "score" in f.name for f in files)
    with Image.open(files[0]) as img:
        assert img.mode == "RGB" and img.width > 3 * 28 and img.height >= 28


def test_combined_statistic_is_the_smallest_part_p_value(model) -> None:  # type: ignore[no-untyped-def]
    """The statistic reads every part at once; it equals -ln(min_i p_i) with each part's own p-values (read in log
    space: no floor), for scores below, inside and far beyond each part's tail, one image at a time or in a batch."""
    combination = model.combination
    rng = np.random.default_rng(0)
    parts = {}
    for part in combination.parts:
        ref = combination.references[part]
        probes = [ref.scores.min() - 1.0, ref.scores.max(), 5 * abs(ref.scores.max()) + 1.0]
        if ref.tail is not None:
            probes.append(ref.tail.start)
        parts[part] = np.concatenate([rng.choice(ref.scores, 60) + rng.normal(0, ref.scores.std() * 0.5, 60),
                                      probes + [probes[0]] * (4 - len(probes))]).astype(np.float32)
    want = -np.min([combination.references[p].log_p_values(parts[p]) for p in combination.parts], axis=0)
    np.testing.assert_allclose(np.exp(-want), np.min([combination.references[p].p_values(parts[p])
                                                      for p in combination.parts], axis=0), rtol=1e-12)
    got = combination.statistic(parts)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    for i in (0, 60, 62):
        assert combination.statistic({p: v[i:i + 1] for p, v in parts.items()})[0] == got[i]


def test_weighted_combination_reads_each_part_over_its_share_of_the_budget(model) -> None:  # type: ignore[no-untyped-def]
    """With weights w, the statistic is -ln(min_i p_i / s_i) with s_i = k w_i / sum(w) (weighted Bonferroni);
    equal weights give the unweighted statistic bit for bit; the leave-one-out calibration reads the same rule;
    weights that are not one positive number per part are refused."""
    from edgevae.runtime.maps import Combination, fit_combination

    plain = model.combination
    parts, k = plain.parts, len(plain.parts)
    rng = np.random.default_rng(1)
    scores = {p: (rng.choice(plain.references[p].scores, 40) * rng.uniform(0.8, 1.6, 40)).astype(np.float32)
              for p in parts}
    weights = tuple(float(i + 1) for i in range(k))
    weighted = Combination(parts, plain.references, weights)
    shares = np.array(weights) * k / sum(weights)
    log_p = np.array([plain.references[p].log_p_values(scores[p]) for p in parts])  # (k, N)
    want = np.max(-log_p + np.log(shares)[:, None], axis=0)
    np.testing.assert_allclose(weighted.statistic(scores), want.astype(np.float32), rtol=1e-6)
    assert not np.allclose(weighted.statistic(scores), plain.statistic(scores))
    np.testing.assert_array_equal(Combination(parts, plain.references, (2.5,) * k).statistic(scores),
                                  plain.statistic(scores))

    fitted, loo = fit_combination(parts, scores, weights)
    unweighted, loo_plain = fit_combination(parts, scores)
    assert fitted.weights == weights and unweighted.weights is None
    j = 7  # image j against the other images' scores, read over the shares
    others = {p: np.delete(scores[p], j) for p in parts}
    alone = Combination(parts, {p: type(plain.references[p]).fit(others[p]) for p in parts}, weights)
    assert loo[j] == pytest.approx(float(alone.statistic({p: scores[p][j:j + 1] for p in parts})[0]), rel=1e-6)
    assert not np.allclose(loo, loo_plain)
    for bad in ((1.0,) * (k - 1), (1.0,) * (k - 1) + (0.0,), (1.0,) * (k - 1) + (float("nan"),)):
        with pytest.raises(ValueError, match="one finite positive weight per part"):
            Combination(parts, plain.references, bad)


def test_reference_keeps_its_scores_sorted() -> None:
    from edgevae.runtime.maps import Reference

    ref = Reference(np.array([3.0, 1.0, 2.0]), None)
    assert ref.scores.tolist() == [1.0, 2.0, 3.0]
    assert ref.p_values(np.array([2.0])).tolist() == [0.75]  # (1 + #{>= 2}) / (3 + 1)
