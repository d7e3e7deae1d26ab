"""Loading bundles, verifying them, and the runtime's model API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgevae.runtime import SCORE_METHODS, BundleError, GraphRunner, ProviderError, load, read_manifest, resolve_providers
from edgevae.runtime.manifest import Manifest, dumps

pytestmark = pytest.mark.runtime


@pytest.fixture
def bundle_copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def test_manifest_round_trip(bundle: Path) -> None:
    raw = json.loads((bundle / "edgevae.json").read_text())
    parsed = Manifest.from_json(dumps(raw))
    again = Manifest.from_json(dumps(dict(parsed.raw)))
    assert again == parsed
    assert parsed.contract.shape == (1, 28, 28) and parsed.scoring.latent_dim == 4
    assert set(parsed.calibration) == set(SCORE_METHODS)


def test_manifest_rides_in_graph_metadata(model) -> None:  # type: ignore[no-untyped-def]
    on_disk = dict(model.manifest.raw)
    for session in model.runner.sessions(in_slice=False):
        meta = session.get_modelmeta().custom_metadata_map
        embedded = json.loads(meta["edgevae.manifest"])
        assert embedded == {k: v for k, v in on_disk.items() if k not in ("files", "variants")}


def test_tampered_graph_is_refused(bundle_copy: Path) -> None:
    data = bytearray((bundle_copy / "encoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle_copy / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        load(bundle_copy)


def test_swapped_graphs_are_refused(bundle_copy: Path) -> None:
    enc, dec = (bundle_copy / "encoder.onnx").read_bytes(), (bundle_copy / "decoder.onnx").read_bytes()
    (bundle_copy / "encoder.onnx").write_bytes(dec)
    (bundle_copy / "decoder.onnx").write_bytes(enc)
    with pytest.raises(BundleError, match="sha256"):
        load(bundle_copy)


@pytest.mark.parametrize("missing", ["encoder.onnx", "decoder.onnx", "edgevae.json"])
def test_missing_file_is_refused(bundle_copy: Path, missing: str) -> None:
    (bundle_copy / missing).unlink()
    with pytest.raises(BundleError, match="missing"):
        load(bundle_copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda m: m.update(format="something-else"), "not an edgevae manifest"),
        (lambda m: m.pop("calibration"), "malformed"),
        (lambda m: m.update(latent_dim=5), "latent size is 5"),
        (lambda m: m["input"].update(height=32), "manifest says"),
    ],
)
def test_bad_manifest_is_refused(bundle_copy: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((bundle_copy / "edgevae.json").read_text())
    edit(raw)
    (bundle_copy / "edgevae.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=message):
        load(bundle_copy)


def test_not_json_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "edgevae.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(bundle_copy)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle directory"):
        load(tmp_path / "nope")


def test_providers() -> None:
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="available: .*CPUExecutionProvider"):
        resolve_providers(["NoSuchExecutionProvider"])


def test_model_reports_providers(model) -> None:  # type: ignore[no-untyped-def]
    graphs = ["encoder", "decoder"] + (["defect"] if model.has_defect_head else [])
    assert model.providers == {g: ["CPUExecutionProvider"] for g in graphs}


def test_shapes_and_kl(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    x = test_digits[0][:5]
    mu, logvar, kl = model.encode(x)
    assert mu.shape == logvar.shape == (5, 4) and kl.shape == (5,)
    assert model.decode(mu).shape == (5, 1, 28, 28)
    assert model.reconstruct(x).shape == (5, 1, 28, 28)
    np.testing.assert_allclose(kl, 0.5 * (mu**2 + np.exp(logvar) - logvar - 1).sum(1), rtol=1e-5, atol=1e-5)


def test_generate_is_deterministic_per_seed(model) -> None:  # type: ignore[no-untyped-def]
    a, b, c = model.generate(6, seed=3), model.generate(6, seed=3), model.generate(6, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (6, 1, 28, 28) and 0 <= a.min() and a.max() <= 1


def test_scores_do_not_depend_on_batching(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    x = test_digits[0][:9]
    for method in ("kl", "elbo", "recon", "rel_recon", "smooth_recon", "iwae"):
        whole = model.raw_scores(x, method)
        single = np.concatenate([model.raw_scores(x[i:i + 1], method) for i in range(9)])
        np.testing.assert_allclose(whole, single, rtol=1e-5, atol=1e-4)


def test_score_result(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    x = test_digits[0][:20]
    r = model.score(x, "elbo")
    assert r.scores.shape == r.p_values.shape == r.is_outlier.shape == (20,)
    assert ((r.p_values > 0) & (r.p_values <= 1)).all()
    np.testing.assert_array_equal(r.is_outlier, r.scores > r.threshold)
    assert model.score(x, "elbo", threshold=-1e9).is_outlier.all()
    assert model.threshold("elbo", 0.2) <= model.threshold("elbo", 0.01)


def test_noise_images_score_higher_than_digits(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    digits = test_digits[0][test_digits[1] <= 1][:50]
    noise = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    # The KL score alone does not separate noise from digits (noise gets a posterior near the prior);
    # docs/scoring.md discusses this. The likelihood-based scores must.
    for method in ("elbo", "recon", "iwae"):
        assert np.median(model.raw_scores(noise, method)) > np.median(model.raw_scores(digits, method))


def test_bad_latents_refused(model) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime import ArrayInputError

    with pytest.raises(ArrayInputError, match=r"\(N, 4\)"):
        model.decode(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="unknown score method"):
        model.raw_scores(np.zeros((1, 28, 28), np.uint8), "bogus")


def test_iwae_bound_is_tighter_than_elbo(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    x = test_digits[0][:30]
    elbo = model.raw_scores(x, "elbo", samples=256)
    iwae = model.raw_scores(x, "iwae", samples=256)
    assert np.mean(iwae) < np.mean(elbo)  # -log p(x) <= -ELBO, and the IWAE bound is tighter
    rel = model.raw_scores(x, "rel_recon")
    assert ((rel >= 0) & (rel < 1)).all()


def test_cli_method_choices_are_the_runtime_methods() -> None:
    from edgevae.cli import main
    from edgevae.runtime import SCORE_METHODS

    for command in ("score", "export"):
        method = next(p for p in main.commands[command].params if p.name in ("method", "default_method"))
        assert tuple(method.type.choices) == SCORE_METHODS


def test_sliced_batches_equal_single_calls(bundle: Path, test_digits) -> None:  # type: ignore[no-untyped-def]
    """Large batches split over concurrent one-thread sessions give exactly what one call gives."""
    single = load(bundle, ["CPUExecutionProvider"], slice_workers=1)
    sliced = load(bundle, ["CPUExecutionProvider"], slice_workers=3)
    assert single.slice_workers == 1 and sliced.slice_workers == 3
    x = test_digits[0][:200]  # 200 // 32 >= 3: three slices
    for method in ("kl", "elbo", "recon", "rel_recon", "smooth_recon", "iwae"):
        np.testing.assert_array_equal(sliced.raw_scores(x, method), single.raw_scores(x, method))
    np.testing.assert_array_equal(sliced.raw_scores(x, "elbo", samples=1), single.raw_scores(x, "elbo", samples=1))
    np.testing.assert_array_equal(sliced.encode(x).mu, single.encode(x).mu)
    np.testing.assert_array_equal(sliced.generate(150, seed=3), single.generate(150, seed=3))
    np.testing.assert_array_equal(sliced.reconstruct(x[:33]), single.reconstruct(x[:33]))  # below the slice size
    with pytest.raises(ValueError, match="slice_workers"):
        load(bundle, ["CPUExecutionProvider"], slice_workers=0)
    with pytest.raises(ValueError, match="slice_workers"):
        GraphRunner(sliced.runner.encoder, sliced.runner.decoder, slice_workers=0)
    with pytest.raises(AttributeError):  # built in one step: nothing is re-assigned afterwards
        sliced.slice_workers = 0  # type: ignore[misc]
    sliced.close()
    single.close()


def test_bundle_ships_the_monte_carlo_noise_and_refuses_a_changed_one(model, bundle: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime.scores import prior_noise

    for method in ("elbo", "iwae"):
        entry = model.manifest.raw["scoring"]["noise_files"][method]
        stored = np.fromfile(bundle / entry["file"], dtype="<f4").reshape(entry["shape"])
        np.testing.assert_array_equal(stored, prior_noise(model.spec.samples(method), model.latent_dim, model.spec.seed))
        np.testing.assert_array_equal(model.noise(method), stored)
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "noise.elbo.f32").read_bytes())
    data[0] ^= 1
    (copy / "noise.elbo.f32").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load(copy, ["CPUExecutionProvider"])
