"""Export a checkpoint to a bundle: two ONNX graphs, parity-checked against PyTorch, calibrated, with a manifest.

The bundle is assembled in a temporary folder beside the target and renamed into place only after it has
been loaded back and verified, so an interrupted export never leaves a folder that loads as a bundle.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgevae import __version__
from edgevae.runtime.manifest import (
    DECODER_FILE,
    DECODER_INPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    FORMAT_NAME,
    MANIFEST_FILE,
    METADATA_KEY,
    SCHEMA_VERSION,
    Manifest,
    decoder_outputs,
    dumps,
)
from edgevae.runtime.model import Model, load, sha256_hex
from edgevae.runtime.scores import SCORE_METHODS, SMOOTH_SIGMA, fit_tail, prior_noise, threshold_at_fpr
from edgevae.runtime.sessions import create_session
from edgevae.training.loop import Checkpoint, held_out_images, load_checkpoint
from edgevae.training.model import VAE
from edgevae.training.objectives import score as torch_score

from .variants import MIN_RANK_CORRELATION, compare, make_variant, to_ort_format

OPSET = 18
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 7)
# Relative tolerance for score parity (scores are sums over hundreds of pixels, so absolute float32
# rounding grows with their size); graph outputs use the absolute PARITY_TOLERANCE.
SCORE_RTOL = 1e-4
MAX_CALIBRATION_SCORES = 5000


class ExportError(RuntimeError):
    """Export failed (parity outside tolerance, invalid graph, unusable target folder)."""


@dataclass(frozen=True)
class ExportConfig:
    """Export settings.

    Args:
        fpr: target false-positive rate of the stored thresholds (default 1 %).
        elbo_samples: Monte-Carlo samples K of the ``elbo`` score.
        iwae_samples: importance samples K of the ``iwae`` score.
        score_seed: seed of the shared noise of the Monte-Carlo scores.
        smooth_sigma: width (pixels) of the Gaussian that smooths the residual in ``smooth_recon``; the
            default suits 28x28 images, larger images may want a proportionally larger value.
        default_method: the method ``score`` uses when none is named.
        opset: ONNX opset of the graphs.
        tolerance: largest allowed max-abs difference between onnxruntime and PyTorch outputs.
        variants: edge variants to add: ``int8`` (static QDQ quantization), ``fp16``.
        ort_format: also write every graph (fp32 and variants) in the ORT format, as variants named
            ``ort`` (fp32) and ``<variant>-ort``.
    """

    fpr: float = 0.01
    elbo_samples: int = 16
    iwae_samples: int = 256
    score_seed: int = 0
    smooth_sigma: float = SMOOTH_SIGMA
    default_method: str = "smooth_recon"
    opset: int = OPSET
    tolerance: float = PARITY_TOLERANCE
    variants: tuple[str, ...] = ()
    ort_format: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.fpr < 0.5:
            raise ValueError(f"fpr must be in (0, 0.5), got {self.fpr}")
        if not 1 <= self.elbo_samples <= 10_000:
            raise ValueError(f"elbo_samples must be in 1..10000, got {self.elbo_samples}")
        if not 1 <= self.iwae_samples <= 100_000:
            raise ValueError(f"iwae_samples must be in 1..100000, got {self.iwae_samples}")
        if not 0.0 < self.smooth_sigma <= 16.0:
            raise ValueError(f"smooth_sigma must be in (0, 16] pixels, got {self.smooth_sigma}")
        if self.default_method not in SCORE_METHODS:
            raise ValueError(f"default_method must be one of {', '.join(SCORE_METHODS)}; got {self.default_method!r}")
        if not 17 <= self.opset <= 21:
            raise ValueError(f"opset must be in 17..21, got {self.opset}")
        if not 0 < self.tolerance <= 1e-2:
            raise ValueError(f"tolerance must be in (0, 0.01], got {self.tolerance}")
        object.__setattr__(self, "variants", tuple(dict.fromkeys(self.variants)))
        unknown = [v for v in self.variants if v not in ("int8", "fp16")]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from int8, fp16")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision notices, deprecation warnings) but keep errors."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _EncoderGraph(torch.nn.Module):
    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encoder(x)


def export_graph(module: torch.nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                 opset: int) -> onnx.ModelProto:
    """Export one module with the torch.export-based exporter and a dynamic batch axis; run onnx.checker."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet_exporter():
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=[input_name], output_names=output_names,
            dynamic_shapes={input_name: {0: batch}}, opset_version=opset, verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return create_session(proto.SerializeToString(), ["CPUExecutionProvider"])


def parity(model: VAE, encoder: ort.InferenceSession, decoder: ort.InferenceSession, images: np.ndarray,
           dec_names: list[str], batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES) -> dict[str, float]:
    """Max abs difference between onnxruntime and PyTorch for every graph output, at each batch size."""
    diffs: dict[str, float] = {}
    rng = np.random.default_rng(1234)
    for bs in batch_sizes:
        x = images[:bs]
        with torch.no_grad():
            ref_enc = [t.numpy() for t in model.encode(torch.from_numpy(x))]
        got_enc = encoder.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: x})
        for name, ref, got in zip(ENCODER_OUTPUTS, ref_enc, got_enc):
            _record(diffs, f"encoder.{name}", ref, got)
        t = np.concatenate([ref_enc[0], rng.standard_normal(ref_enc[0].shape, dtype=np.float32)])  # (2*bs, D)
        with torch.no_grad():
            ref_dec = [v.numpy() for v in model.decode(torch.from_numpy(t))]
        got_dec = decoder.run(dec_names, {DECODER_INPUT: t})
        for name, ref, got in zip(dec_names, ref_dec, got_dec):
            _record(diffs, f"decoder.{name}", ref, got)
    return diffs


def _record(diffs: dict[str, float], key: str, ref: np.ndarray, got: np.ndarray) -> None:
    if ref.shape != got.shape:
        raise ExportError(f"{key}: onnxruntime gives shape {got.shape}, PyTorch {ref.shape}")
    diffs[key] = max(diffs.get(key, 0.0), float(np.max(np.abs(ref.astype(np.float64) - got))))


def score_parity(model: VAE, runtime_model: Model, images: np.ndarray) -> dict[str, float]:
    """Max relative difference between runtime scores and the PyTorch twins, per method."""
    m = runtime_model.manifest
    out: dict[str, float] = {}
    for method in SCORE_METHODS:
        k = m.iwae_samples if method == "iwae" else m.elbo_samples
        eps = torch.from_numpy(prior_noise(k, runtime_model.latent_dim, m.score_seed).copy())
        ref = torch_score(model, torch.from_numpy(images), method, eps, m.smooth_sigma).numpy().astype(np.float64)
        got = runtime_model.raw_scores(images, method).astype(np.float64)
        out[method] = float(np.max(np.abs(ref - got) / np.maximum(1.0, np.abs(ref))))
    return out


def _versions() -> dict[str, str]:
    import onnxscript

    return {"edgevae": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": ort.__version__}


def build_manifest(ck: Checkpoint, cfg: ExportConfig, calibration: Mapping[str, Any], parity_diffs: Mapping[str, float],
                   score_diffs: Mapping[str, float], n_calibration: int) -> dict[str, Any]:
    mc = ck.model_config
    contract = mc.contract
    dec_names = list(decoder_outputs(mc.likelihood))
    c, h, w = contract.shape
    dec_param_shape: list[Any] = ["N", c, h, w] if mc.likelihood == "bernoulli" else ["N", 1]
    history = ck.history
    best = next((r for r in history if r.get("epoch") == ck.raw.get("best_epoch")), history[-1] if history else {})
    return {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "producer": _versions(),
        "opset": cfg.opset,
        "input": contract.to_dict(),
        "latent_dim": mc.latent_dim,
        "likelihood": mc.likelihood,
        "prior": "N(0, I)",
        "graphs": {
            "encoder": {"file": ENCODER_FILE, "inputs": {ENCODER_INPUT: ["N", c, h, w]},
                        "outputs": {"mu": ["N", mc.latent_dim], "logvar": ["N", mc.latent_dim], "kl": ["N"]}},
            "decoder": {"file": DECODER_FILE, "inputs": {DECODER_INPUT: ["N", mc.latent_dim]},
                        "outputs": {dec_names[0]: ["N", c, h, w], dec_names[1]: dec_param_shape}},
        },
        "scoring": {
            "default_method": cfg.default_method,
            "methods": list(SCORE_METHODS),
            "elbo_samples": cfg.elbo_samples,
            "iwae_samples": cfg.iwae_samples,
            "smooth_sigma": cfg.smooth_sigma,
            "seed": cfg.score_seed,
            "noise": "numpy.random.default_rng(seed).standard_normal((K, latent_dim), float32) with K = elbo_samples "
                     "or iwae_samples, "
                     "shared by every image",
        },
        "calibration": {
            "fpr": cfg.fpr,
            "n": n_calibration,
            "source": "validation split of the training data (held out from gradient updates)",
            "methods": dict(calibration),
        },
        "parity": {
            "tolerance": cfg.tolerance,
            "batch_sizes": list(PARITY_BATCH_SIZES),
            "max_abs_diff": dict(parity_diffs),
            "score_max_rel_diff": dict(score_diffs),
        },
        "model": mc.to_dict(),
        "training": {
            "data": ck.data.to_dict(),
            "n_train": ck.raw.get("n_train"),
            "n_val": ck.raw.get("n_val"),
            "epochs": ck.train_config.epochs,
            "best_epoch": ck.raw.get("best_epoch"),
            "val_neg_elbo": ck.best_val_neg_elbo,
            "val_recon": best.get("val_recon"),
            "val_kl": best.get("val_kl"),
            "seconds": best.get("seconds"),
            "train_config": ck.train_config.__dict__,
        },
    }


def _embed(proto: onnx.ModelProto, manifest: Mapping[str, Any]) -> bytes:
    """Put the manifest in metadata_props, without ``files`` (a graph cannot hold its own checksum) and
    ``variants`` (which describes other files)."""
    embedded = {k: v for k, v in manifest.items() if k not in ("files", "variants")}
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, dumps(embedded)
    proto.producer_name, proto.producer_version = "edgevae", __version__
    return proto.SerializeToString()


def export_bundle(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    bundle_dir: str | os.PathLike[str],
    config: ExportConfig | None = None,
    *,
    calibration_images: np.ndarray | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Model:
    """Export a checkpoint to a verified bundle directory and return it loaded through the runtime.

    Args:
        checkpoint: a checkpoint file or run folder (``best.pt`` is used), or a loaded Checkpoint.
        bundle_dir: target folder; it must not exist unless ``force``.
        config: export settings.
        calibration_images: held-out normal images for parity and calibration (default: the run's
            validation split, re-created from the checkpoint's data source).
        force: replace an existing bundle folder.
        progress: called with a short message per step.

    Raises:
        ExportError: parity outside tolerance, invalid graph, or target exists.
    """
    cfg = config or ExportConfig()
    say = progress or (lambda msg: None)
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    target = Path(bundle_dir)
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; choose another folder or pass --force to replace it")
    model = ck.model.eval()
    mc = ck.model_config
    contract = mc.contract
    images = (held_out_images(ck.data, mc, ck.train_config) if calibration_images is None
              else contract.prepare(calibration_images))
    if images.shape[0] < 10:
        raise ExportError(f"calibration needs at least 10 held-out images, got {images.shape[0]}")

    say("exporting encoder.onnx")
    example = torch.from_numpy(images[:3])
    enc_proto = export_graph(_EncoderGraph(model), example, ENCODER_INPUT, list(ENCODER_OUTPUTS), cfg.opset)
    say("exporting decoder.onnx")
    dec_names = list(decoder_outputs(mc.likelihood))
    with torch.no_grad():
        t_example = model.encode(example)[0]
    dec_proto = export_graph(model.decoder, t_example, DECODER_INPUT, dec_names, cfg.opset)

    say("checking parity with PyTorch at batch sizes 1 and 7")
    enc_sess, dec_sess = _session(enc_proto), _session(dec_proto)
    diffs = parity(model, enc_sess, dec_sess, images, dec_names)
    bad = {k: v for k, v in diffs.items() if not v <= cfg.tolerance}
    if bad:
        raise ExportError("onnxruntime and PyTorch disagree beyond the tolerance "
                          f"{cfg.tolerance:g}: " + ", ".join(f"{k} {v:.3g}" for k, v in bad.items()))

    say(f"calibrating thresholds at FPR {cfg.fpr:g} on {images.shape[0]} held-out images")
    provisional = build_manifest(ck, cfg, {m: {"threshold": 0.0, "scores": [0.0, 0.0]} for m in SCORE_METHODS},
                                 diffs, {}, images.shape[0])
    probe = Model(Manifest.from_dict(provisional, require_files=False), enc_sess, dec_sess)
    score_diffs = score_parity(model, probe, images[:64])
    bad = {k: v for k, v in score_diffs.items() if not v <= SCORE_RTOL}
    if bad:
        raise ExportError("runtime scores disagree with PyTorch beyond relative tolerance "
                          f"{SCORE_RTOL:g}: " + ", ".join(f"{k} {v:.3g}" for k, v in bad.items()))
    calibration = calibrate(probe, images, cfg.fpr)
    manifest = build_manifest(ck, cfg, calibration, diffs, score_diffs, images.shape[0])
    graph_files: dict[str, bytes] = {ENCODER_FILE: _embed(enc_proto, manifest), DECODER_FILE: _embed(dec_proto, manifest)}
    manifest["variants"] = {}
    builds: list[tuple[str, bytes, bytes]] = [("fp32", graph_files[ENCODER_FILE], graph_files[DECODER_FILE])]
    for name in cfg.variants:
        say(f"building the {name} variant")
        with torch.no_grad():
            latents = model.encode(torch.from_numpy(images))[0].numpy()
        with _quiet_exporter():
            v_enc, v_dec = make_variant(name, enc_proto, dec_proto, images, latents)
        builds.append((name, _embed(v_enc, manifest), _embed(v_dec, manifest)))
    if cfg.ort_format:
        say("converting graphs to the ORT format")
        builds += [(("ort" if n == "fp32" else f"{n}-ort"), to_ort_format(e), to_ort_format(d)) for n, e, d in builds]
    for name, enc_bytes, dec_bytes in builds[1:]:
        say(f"validating and calibrating the {name} variant")
        ext = "ort" if name.endswith("ort") else "onnx"
        stem = name.replace("-ort", "") if name != "ort" else "fp32"
        files_of = {"encoder": f"encoder.{stem}.{ext}", "decoder": f"decoder.{stem}.{ext}"}
        var_model = Model(Manifest.from_dict(provisional, require_files=False), _session_bytes(enc_bytes),
                          _session_bytes(dec_bytes))
        report = compare(probe, var_model, images, _auroc)
        weak = {m: r for m, r in report["rank_correlation"].items() if not r >= MIN_RANK_CORRELATION}
        if weak:
            raise ExportError(f"the {name} variant ranks held-out images unlike fp32 (Spearman "
                              + ", ".join(f"{m} {r:.3f}" for m, r in weak.items())
                              + f" < {MIN_RANK_CORRELATION}); leave it out")
        graph_files[files_of["encoder"]], graph_files[files_of["decoder"]] = enc_bytes, dec_bytes
        manifest["variants"][name] = {**files_of, "format": ext, **report,
                                      "calibration": {"fpr": cfg.fpr, "methods": calibrate(var_model, images, cfg.fpr)}}

    say("writing the bundle")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    tmp.chmod(0o755)
    try:
        files: dict[str, Any] = {}
        for fname, data in graph_files.items():
            _write_synced(tmp / fname, data)
            files[fname] = {"sha256": sha256_hex(data), "bytes": len(data)}
        manifest["files"] = files
        _write_synced(tmp / MANIFEST_FILE, dumps(manifest).encode())
        for variant in [None, *manifest["variants"]]:  # verify what was written, exactly as a device will
            load(tmp, ["CPUExecutionProvider"], variant=variant)
        _move_into_place(tmp, target, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"wrote {target}")
    return load(target, ["CPUExecutionProvider"])


def calibrate(model: Model, images: np.ndarray, fpr: float) -> dict[str, Any]:
    """Per method: threshold at ``fpr``, the sorted held-out scores (at most MAX_CALIBRATION_SCORES quantiles)
    and, with enough images, a generalised Pareto model of their upper tail (``scores.fit_tail``)."""
    calibration = {}
    for method in SCORE_METHODS:
        scores = np.concatenate([model.raw_scores(images[i:i + 256], method)
                                 for i in range(0, images.shape[0], 256)]).astype(np.float64)
        if not np.isfinite(scores).all():
            raise ExportError(f"{method} scores of held-out images are not finite; the model is unusable")
        kept = np.sort(scores)
        if kept.size > MAX_CALIBRATION_SCORES:
            kept = np.quantile(kept, np.linspace(0, 1, MAX_CALIBRATION_SCORES))
        tail = fit_tail(scores)
        calibration[method] = {"threshold": threshold_at_fpr(scores, fpr, tail),
                               "scores": [float(np.float32(s)) for s in kept]}
        if tail is not None:
            calibration[method]["tail"] = tail.to_dict()
    return calibration


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC via the rank-sum identity (export does not depend on scikit-learn)."""
    ranks = np.empty(scores.size)
    order = np.argsort(scores, kind="mergesort")
    ranks[order] = np.arange(1, scores.size + 1)
    for value in np.unique(scores):  # average ranks of ties
        tie = scores == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _session_bytes(data: bytes) -> ort.InferenceSession:
    return create_session(data, ["CPUExecutionProvider"])


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _move_into_place(tmp: Path, target: Path, force: bool) -> None:
    if target.exists():
        if not force:
            raise ExportError(f"{target} appeared while exporting; pass --force to replace it")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
