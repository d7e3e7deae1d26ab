"""ONNX export: graph parity with PyTorch, scores, preprocessing parity, and failure leaving nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgevae.export import ExportConfig, ExportError, export_bundle
from edgevae.runtime import load
from edgevae.runtime.scores import prior_noise
from edgevae.training import DataSpec, ModelConfig, TrainConfig, load_checkpoint, train
from edgevae.training.data import load_images
from edgevae.training.defect_head import load_head
from edgevae.training.objectives import kl_divergence, negative_elbo, score

pytestmark = pytest.mark.export


def test_manifest_records_parity_within_tolerance(bundle: Path) -> None:
    raw = json.loads((bundle / "edgevae.json").read_text())
    diffs = raw["parity"]["max_abs_diff"]
    assert set(diffs) == {"encoder.mu", "encoder.logvar", "encoder.kl", "decoder.x_mean", "decoder.x_logits",
                          "defect.defect_logits"}
    assert max(diffs.values()) <= 1e-4
    assert raw["parity"]["batch_sizes"] == [1, 7]
    assert all(v <= 1e-4 for v in raw["parity"]["score_max_rel_diff"].values())


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_every_graph_output_matches_pytorch(tiny_run: Path, model, test_digits, batch: int) -> None:  # type: ignore[no-untyped-def]
    torch_model = load_checkpoint(tiny_run).model
    x = model.prepare(test_digits[0][:batch])
    with torch.no_grad():
        ref = [t.numpy() for t in torch_model.encode(torch.from_numpy(x))]
    got = model.encode(x)
    for r, g in zip(ref, got):
        assert np.max(np.abs(r - g)) <= 1e-4
    t = np.random.default_rng(0).standard_normal((batch, 4), dtype=np.float32)
    with torch.no_grad():
        ref_dec = [v.numpy() for v in torch_model.decode(torch.from_numpy(t))]
    got_dec = model.decode_params(t)
    for r, g in zip(ref_dec, got_dec):
        assert r.shape == g.shape and np.max(np.abs(r - g)) <= 1e-4


def test_in_graph_kl_equals_closed_form(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    mu, logvar, kl = model.encode(test_digits[0][:50])
    closed = kl_divergence(torch.from_numpy(mu), torch.from_numpy(logvar)).numpy()
    np.testing.assert_allclose(kl, closed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["kl", "elbo", "recon", "rel_recon", "smooth_recon", "iwae", "local", "combined"])
def test_every_score_matches_pytorch(tiny_run: Path, model, test_digits, method: str) -> None:  # type: ignore[no-untyped-def]
    torch_model = load_checkpoint(tiny_run).model
    x = model.prepare(test_digits[0][::37])
    k = model.spec.iwae_samples if method == "iwae" else model.spec.elbo_samples
    eps = torch.from_numpy(prior_noise(k, 4, model.spec.seed).copy())
    part_noise = torch.from_numpy(prior_noise(model.spec.part_elbo_samples, 4, model.spec.seed).copy())
    noise = {"elbo": part_noise, "too_likely": part_noise}
    head = load_head(tiny_run)
    assert head is not None
    ref = score(torch_model, torch.from_numpy(x), method, eps, model.spec.smooth_sigma, model.maps, model.combination,
                noise, defect_head=head.head, defect_window=model.spec.defect_window).numpy()
    np.testing.assert_allclose(model.raw_scores(x, method), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("k", [1, 32])  # K = 1 takes the runtime's single-sample path
def test_elbo_estimate_matches_pytorch_under_same_noise(tiny_run: Path, model, test_digits, k: int) -> None:  # type: ignore[no-untyped-def]
    torch_model = load_checkpoint(tiny_run).model
    x = model.prepare(test_digits[0][:20])
    eps = prior_noise(k, 4, model.spec.seed)
    ours = model.raw_scores(x, "elbo", samples=k)
    with torch.no_grad():
        ref = negative_elbo(torch_model, torch.from_numpy(x), torch.from_numpy(eps.copy())).numpy()
    assert ours.shape == (20,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_preprocessing_parity_image_file(tiny_run: Path, model, sample_folder: Path) -> None:  # type: ignore[no-untyped-def]
    """A PNG scored by the runtime gets the score the training pipeline gives the same file."""
    files = sorted((sample_folder / "normal").glob("*.png"))
    runtime_x = np.stack([model.contract.read_image(f) for f in files])
    runtime_scores = model.raw_scores(runtime_x, "recon")
    ck = load_checkpoint(tiny_run)
    images, _, skipped = load_images(DataSpec(source=str(sample_folder / "normal")), ck.model_config.contract)
    assert not skipped and images.shape[0] == len(files)
    train_x = torch.from_numpy(images.astype(np.float32) / np.float32(255))
    np.testing.assert_allclose(runtime_scores, score(ck.model, train_x, "recon").numpy(), rtol=1e-4, atol=1e-4)


def test_graphs_pass_onnx_checker_and_carry_metadata(bundle: Path) -> None:
    for name in ("encoder.onnx", "decoder.onnx"):
        proto = onnx.load(str(bundle / name))
        onnx.checker.check_model(proto, full_check=True)
        keys = {p.key for p in proto.metadata_props}
        assert "edgevae.manifest" in keys
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis


def test_failed_parity_leaves_no_bundle(tiny_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "never"
    with pytest.raises(ExportError, match="disagree beyond the tolerance"):
        export_bundle(tiny_run, target, ExportConfig(tolerance=1e-12))
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_target_needs_force(tiny_run: Path, bundle: Path) -> None:
    with pytest.raises(ExportError, match="--force"):
        export_bundle(tiny_run, bundle)


@pytest.mark.slow
@pytest.mark.parametrize(
    "channels, size, likelihood, refine, activation",
    [(3, 32, "gaussian_learned", 0, "silu"), (1, 64, "gaussian", 0, "silu"), (3, 30, "gaussian", 5, "relu")],
)
def test_other_shapes_and_likelihoods_export(tmp_path: Path, channels: int, size: int, likelihood: str,
                                             refine: int, activation: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, size, size, channels), dtype=np.uint8)
    np.save(tmp_path / "data.npy", images)
    cfg = ModelConfig(channels=channels, height=size, width=size, latent_dim=3, widths=(4, 8, 8), hidden=16,
                      likelihood=likelihood, refine=refine, activation=activation)
    train(DataSpec(source=str(tmp_path / "data.npy")), tmp_path / "run", cfg, TrainConfig(epochs=1, val_fraction=0.25))
    from edgevae.runtime import CalibrationWarning

    with pytest.warns(CalibrationWarning, match="15 calibration images"):  # 60 images: too few for 1 %, and said
        m = export_bundle(tmp_path / "run", tmp_path / "bundle", ExportConfig(elbo_samples=2))
    assert max(m.manifest.raw["parity"]["max_abs_diff"].values()) <= 1e-4
    out = load(tmp_path / "bundle")
    x = images[:3]
    assert out.reconstruct(x).shape == (3, channels, size, size)
    assert np.isfinite(out.score(x, "elbo").scores).all()
    assert out.decode_params(out.encode(x).mu)[1].shape == (3, 1)


def _rehash(bundle: Path) -> None:
    import hashlib

    raw = json.loads((bundle / "edgevae.json").read_text())
    for name in ("encoder.onnx", "decoder.onnx"):
        data = (bundle / name).read_bytes()
        raw["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "edgevae.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("change, message", [("rename_output", "gives outputs"), ("extra_input", "takes inputs"),
                                             ("swap_graphs", "takes inputs")])
def test_graphs_that_disagree_with_the_manifest_are_refused(bundle: Path, tmp_path: Path, change: str,
                                                            message: str) -> None:
    """Even with matching checksums (a re-hashed manifest), graphs must match the manifest's contract."""
    import shutil

    from edgevae.runtime import BundleError

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    if change == "swap_graphs":
        enc, dec = (copy / "encoder.onnx").read_bytes(), (copy / "decoder.onnx").read_bytes()
        (copy / "encoder.onnx").write_bytes(dec)
        (copy / "decoder.onnx").write_bytes(enc)
    else:
        proto = onnx.load(str(copy / "encoder.onnx"))
        if change == "rename_output":
            old = proto.graph.output[2].name
            proto.graph.output[2].name = "kl_renamed"
            for node in proto.graph.node:
                node.output[:] = ["kl_renamed" if o == old else o for o in node.output]
        else:
            extra = onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, ["N", 1])
            proto.graph.input.append(extra)
        onnx.save(proto, str(copy / "encoder.onnx"))
    _rehash(copy)
    with pytest.raises(BundleError, match=message):
        load(copy)


def test_smooth_sigma_is_stored_calibrated_and_used(tiny_run: Path, test_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime.scores import smoothed_relative_reconstruction_error

    wide = export_bundle(tiny_run, tmp_path / "wide", ExportConfig(elbo_samples=2, iwae_samples=4, smooth_sigma=2.0))
    assert wide.spec.smooth_sigma == 2.0 and wide.manifest.raw["scoring"]["smooth_sigma"] == 2.0
    assert wide.manifest.raw["parity"]["score_max_rel_diff"]["smooth_recon"] <= 1e-4  # the twin used sigma 2 too
    x = wide.prepare(test_digits[0][:40])
    got = wide.raw_scores(x, "smooth_recon")
    np.testing.assert_allclose(got, smoothed_relative_reconstruction_error(x, wide.reconstruct(x), 2.0), rtol=1e-6)
    assert not np.allclose(got, smoothed_relative_reconstruction_error(x, wide.reconstruct(x), 1.0), rtol=1e-3)
    with pytest.raises(ValueError, match="smooth_sigma"):
        ExportConfig(smooth_sigma=0.0)


def test_calibration_with_enough_images_stores_a_tail_model_that_the_runtime_uses(  # type: ignore[no-untyped-def]
        tiny_run: Path, bundle: Path, test_digits, tmp_path: Path) -> None:
    from edgevae.runtime import CalibrationWarning, TailFit, fit_tail, threshold_at_fpr
    from edgevae.runtime.scores import tail_model

    images, labels = test_digits
    normal = images[labels <= 1]  # 200 held-out images of the run's classes: 40 in each tail fit
    m = export_bundle(tiny_run, tmp_path / "b", ExportConfig(elbo_samples=2, iwae_samples=4),
                      calibration_images=normal)
    raw = json.loads((tmp_path / "b" / "edgevae.json").read_text())
    fitted = 0
    for method in (x for x in m.methods if x != "combined"):  # combined: leave-one-out statistics (test_maps)
        cal = m.manifest.calibration[method]
        scores = m.raw_scores(m.prepare(normal), method).astype(np.float64)
        assert cal.tail is not None and TailFit.from_dict(raw["calibration"]["methods"][method]["tail"]) == cal.tail
        assert cal.tail == tail_model(scores)  # every calibration stores one: a fit, or an exponential past the top
        assert cal.threshold == pytest.approx(threshold_at_fpr(cal.sorted_scores, 0.01, cal.tail))
        fitted += fit_tail(scores) is not None
        with pytest.warns(CalibrationWarning, match="fitted tail model alone"):  # 0.002 < 1/201: said so
            assert m.threshold(method, 0.002) > cal.threshold  # other rates come from the same tail model
        result = m.score(normal, method)
        np.testing.assert_array_equal(result.p_values < 0.01, result.is_outlier)
    assert fitted >= 3
    # The tiny run's own validation split (auto: 100 of its 800 images) is too small for a Pareto fit: every method
    # gets an exponential tail over its top fifth, starting at the 81st of its 100 scores.
    small = json.loads((bundle / "edgevae.json").read_text())["calibration"]
    assert small["n"] == 100
    for entry in (c for name, c in small["methods"].items() if name != "combined"):
        tail = entry["tail"]
        assert tail["shape"] == 0.0 and tail["fraction"] == pytest.approx(0.2) and tail["start"] == entry["scores"][79]


def test_manifest_states_the_smallest_promisable_fpr_and_export_warns_below_it(tiny_run: Path, test_digits,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    from edgevae.runtime import CalibrationWarning

    normal = test_digits[0][test_digits[1] <= 1][:49]  # 49 calibration images: 1/(n+1) = 2 %
    with pytest.warns(CalibrationWarning, match=r"below what 49 calibration images can promise \(1/\(n\+1\) = 0.02\)"):
        m = export_bundle(tiny_run, tmp_path / "b", ExportConfig(elbo_samples=2, iwae_samples=4, fpr=0.01),
                          calibration_images=normal)
    raw = json.loads((tmp_path / "b" / "edgevae.json").read_text())
    assert raw["calibration"]["min_fpr"] == pytest.approx(0.02) and m.manifest.min_fpr == pytest.approx(0.02)
    assert m.manifest.calibration_n == 49
    with pytest.warns(CalibrationWarning, match="0.005"):
        m.threshold("kl", 0.005)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        m.threshold("kl", 0.05)  # within what 49 images can promise: no warning
    m.close()


def test_shared_exporter_table_gives_the_same_graphs_and_is_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports share torch.onnx's ATen-to-ONNX table (export/graphs.py, _shared_torchlib): the graphs are byte for
    byte those of an export that builds its own, and the exporter's constructor is restored afterwards."""
    import contextlib

    monkeypatch.setenv("EDGEVAE_EXPORT_CACHE", "0")  # every export here traces

    import torch
    from torch.onnx._internal.exporter import _registration

    import edgevae.export.graphs as graphs
    from edgevae.training import ModelConfig
    from edgevae.training.model import VAE

    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=4, widths=(8, 16), hidden=32)).eval()
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    before = _registration.ONNXRegistry.__dict__["from_torchlib"]
    shared = [graphs.export_graphs(model, x, 18) for _ in range(2)]
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is before
    own = graphs._shared_torchlib
    try:
        graphs._shared_torchlib = contextlib.nullcontext  # type: ignore[assignment]
        alone = graphs.export_graphs(model, x, 18)
    finally:
        graphs._shared_torchlib = own
    for g in shared:
        assert g.encoder.SerializeToString() == alone.encoder.SerializeToString()
        assert g.decoder.SerializeToString() == alone.decoder.SerializeToString()


def test_an_architecture_seen_before_takes_new_weights_into_the_same_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """export/graphs.py's graph cache: a second model of one architecture is not traced again, and its graphs are
    byte for byte those a fresh export gives; the defect head, its batch normalisations folded before the trace,
    is reused alike; another architecture or a cached graph that no longer matches the module is exported
    afresh."""
    import onnxruntime as ort

    import edgevae.export.graphs as graphs
    from edgevae.training.defect_head import DefectHead
    from edgevae.training.model import VAE

    traced: list[str] = []
    real_export = torch.onnx.export

    def counting(module, *args, **kwargs):  # type: ignore[no-untyped-def]
        traced.append(type(module).__name__)
        return real_export(module, *args, **kwargs)

    def vae(seed: int, **changes: object) -> VAE:
        torch.manual_seed(seed)
        return VAE(ModelConfig(latent_dim=4, widths=(8, 16), hidden=32, **changes)).eval()  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", counting)
    monkeypatch.delenv(graphs.CACHE_DIR_ENV, raising=False)  # this process's cache alone
    graphs.GRAPH_CACHE.clear()
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    graphs.export_graphs(vae(0), x, 18)
    assert traced == ["_EncoderGraph", "Decoder"]
    reused = graphs.export_graphs(vae(1), x, 18)
    assert len(traced) == 2
    monkeypatch.setenv("EDGEVAE_EXPORT_CACHE", "0")
    fresh = graphs.export_graphs(vae(1), x, 18)
    assert reused.encoder.SerializeToString() == fresh.encoder.SerializeToString()
    assert reused.decoder.SerializeToString() == fresh.decoder.SerializeToString()
    monkeypatch.setenv("EDGEVAE_EXPORT_CACHE", "1")

    traced.clear()
    graphs.export_graphs(vae(2, variational=False), x, 18)  # a flag the forward pass reads: another graph
    assert traced == ["_EncoderGraph"]

    traced.clear()
    heads = []
    for seed in (0, 1):  # batch normalisation is folded into the convolutions first: their weights swap by name
        torch.manual_seed(seed)
        heads.append(DefectHead(1, widths=(4, 4, 4)))
        for norm in (m for m in heads[-1].modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.running_mean.uniform_(-0.5, 0.5)  # statistics a trained head would have, unlike a new one's 0 and 1
            norm.running_var.uniform_(0.5, 2.0)
        proto = graphs.export_defect_graph(heads[-1], x, 18)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            want = heads[-1].eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], want, atol=1e-5)
    assert traced == ["DefectHead"]

    # A cached graph that keeps a stale weight under another name (as a folded tensor would) fails the check on
    # the example and is exported afresh.
    key, cached = next((k, c) for k, c in graphs.GRAPH_CACHE._entries.items() if "encoder.head.bias" in
                       {i.name for i in c.proto.graph.initializer})
    for init in cached.proto.graph.initializer:
        if init.name == "encoder.head.bias":
            init.name = "stale"
    for node in cached.proto.graph.node:
        node.input[:] = ["stale" if n == "encoder.head.bias" else n for n in node.input]
    traced.clear()
    model = vae(3)
    again = graphs.export_graphs(model, x, 18)
    assert traced == ["_EncoderGraph"]
    session = ort.InferenceSession(again.encoder.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model.encode(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], want, atol=1e-5)


def test_the_graph_cache_folder_serves_other_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGEVAE_EXPORT_CACHE_DIR: a graph traced in this process is reused by another process (no trace there, the
    same bytes as a fresh export); a damaged file in the folder is traced afresh and replaced."""
    import subprocess
    import sys

    import edgevae.export.graphs as graphs
    from edgevae.training.model import VAE

    folder = tmp_path / "graphs"
    monkeypatch.setenv(graphs.CACHE_DIR_ENV, str(folder))
    graphs.GRAPH_CACHE.clear()
    torch.manual_seed(0)
    graphs.export_graphs(VAE(ModelConfig(latent_dim=3, widths=(4, 8), hidden=16)).eval(),
                         np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32), 18)
    assert len(list(folder.glob("*.onnx"))) == 2 and len(list(folder.glob("*.npz"))) == 2
    assert not list(folder.glob(".*"))  # no temporary file left behind

    child = """
import sys, numpy as np, torch
import edgevae.export.graphs as graphs
from edgevae.training.model import VAE, ModelConfig
traced = []
real = torch.onnx.export
torch.onnx.export = lambda module, *a, **k: traced.append(type(module).__name__) or real(module, *a, **k)
torch.manual_seed(1)
model = VAE(ModelConfig(latent_dim=3, widths=(4, 8), hidden=16)).eval()
x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
got = graphs.export_graphs(model, x, 18)
with open(sys.argv[1], "wb") as f:
    f.write(got.encoder.SerializeToString())
print(",".join(traced))
"""
    script = tmp_path / "child.py"
    script.write_text(child)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "enc.onnx")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""  # nothing traced: both graphs came from the folder
    torch.manual_seed(1)
    model = VAE(ModelConfig(latent_dim=3, widths=(4, 8), hidden=16)).eval()
    monkeypatch.setenv("EDGEVAE_EXPORT_CACHE", "0")
    fresh = graphs.export_graphs(model, np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32), 18)
    assert (tmp_path / "enc.onnx").read_bytes() == fresh.encoder.SerializeToString()
    monkeypatch.setenv("EDGEVAE_EXPORT_CACHE", "1")

    for path in folder.glob("*.onnx"):
        path.write_bytes(b"not a graph")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "enc.onnx")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "_EncoderGraph,Decoder"
    assert (tmp_path / "enc.onnx").read_bytes() == fresh.encoder.SerializeToString()
    assert all(path.read_bytes() != b"not a graph" for path in folder.glob("*.onnx"))


def test_combined_weights_are_equal_unless_asked_and_checked_against_the_parts(bundle: Path) -> None:
    """An untiled export keeps equal shares (no weights in the manifest: bundles as before); given weights name
    parts of combined and are positive; the command line reads part=weight pairs or 'equal'."""
    import click

    from edgevae.cli.export import parse_weights

    raw = json.loads((bundle / "edgevae.json").read_text())
    assert "weights" not in raw["scoring"]["combined"] and "weights" not in raw["scoring"]["method_specs"]["combined"]
    assert ExportConfig().for_tiles(False).weights_tuple() is None
    assert ExportConfig(combined_parts=("local", "elbo"), combined_weights={"elbo": 3}).weights_tuple() == (1.0, 3.0)
    tiled = ExportConfig().for_tiles(True)
    assert tiled.weights_tuple() == tuple(4.0 if p == "defect" else 1.0 for p in tiled.combined_parts)
    assert ExportConfig(combined_weights={}).for_tiles(True).weights_tuple() is None  # 'equal' wins over the default
    with pytest.raises(ValueError, match="not parts of combined"):
        ExportConfig(combined_parts=("local", "elbo"), combined_weights={"defect": 2})
    with pytest.raises(ValueError, match="one finite positive weight"):
        ExportConfig(combined_weights={"elbo": -1})
    assert parse_weights("equal") == {} and parse_weights(" defect=4, elbo=0.5") == {"defect": 4.0, "elbo": 0.5}
    for bad in ("defect", "defect=0", "defect=x", "=2", "defect=inf"):
        with pytest.raises(click.BadParameter, match="part=weight"):
            parse_weights(bad)
