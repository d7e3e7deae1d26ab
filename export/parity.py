"""Refuse an export unless onnxruntime agrees with PyTorch: every graph output, and every score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from edgevae.runtime.methods import METHODS, SCORE_METHODS
from edgevae.runtime.manifest import DECODER_INPUT, DEFECT_INPUT, DEFECT_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUTS
from edgevae.runtime.model import Scorer
from edgevae.training.model import VAE
from edgevae.training.objectives import score as torch_score

from edgevae.runtime.errors import ExportError

PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 7)
# Relative tolerance for score parity (scores are sums over hundreds of pixels, so absolute float32
# rounding grows with their size); graph outputs use the absolute tolerance.
SCORE_RTOL = 1e-4
# Held-out images whose scores are compared.
SCORE_PARITY_IMAGES = 64
# Largest number of decoded values in one PyTorch call of the score comparison (bounds export's memory).
TORCH_VALUES = 1 << 22


@dataclass(frozen=True)
class ParityReport:
    """Largest differences between onnxruntime and PyTorch: absolute per graph output, relative per score."""

    graph_max_abs_diff: dict[str, float]
    score_max_rel_diff: dict[str, float]


def graph_parity(model: VAE, encoder: ort.InferenceSession, decoder: ort.InferenceSession, images: np.ndarray,
                 dec_names: list[str], batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES) -> dict[str, float]:
    """Max difference between onnxruntime and PyTorch for every graph output, at each batch size (absolute up to
    1, relative above)."""
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


def defect_parity(head: torch.nn.Module, session: ort.InferenceSession, images: np.ndarray,
                  batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES) -> dict[str, float]:
    """Max difference between onnxruntime and PyTorch for the defect head's logits, at each batch size."""
    diffs: dict[str, float] = {}
    for bs in batch_sizes:
        x = images[:bs]
        with torch.no_grad():
            ref = head(torch.from_numpy(x)).numpy()
        _record(diffs, f"defect.{DEFECT_OUTPUT}", ref, session.run([DEFECT_OUTPUT], {DEFECT_INPUT: x})[0])
    return diffs


def _record(diffs: dict[str, float], key: str, ref: np.ndarray, got: np.ndarray) -> None:
    """The largest difference, absolute for values up to 1 and relative above (float32 rounding grows with the
    value: a plain autoencoder's unpenalised codes give KLs in the thousands)."""
    if ref.shape != got.shape:
        raise ExportError(f"{key}: onnxruntime gives shape {got.shape}, PyTorch {ref.shape}")
    r = ref.astype(np.float64)
    diffs[key] = max(diffs.get(key, 0.0), float(np.max(np.abs(r - got) / np.maximum(1.0, np.abs(r)))))


def score_parity(model: VAE, scorer: Scorer, images: np.ndarray,
                 head: torch.nn.Module | None = None) -> dict[str, float]:
    """Max relative difference between runtime scores and the PyTorch twins, per method."""
    out: dict[str, float] = {}
    noise = {m: torch.from_numpy(n.copy()) for m in SCORE_METHODS if (n := scorer.noise(m)) is not None}
    for method in scorer.computable_methods:
        if METHODS[method].kind == "combination" and scorer.combination is not None:
            # Its parts are compared with PyTorch above. The statistic is a step function of them at the
            # references, which are these very images' scores, so float32 rounding can move a part across its
            # own reference value: the statistic is checked against its parts as the runtime computes them.
            ref = scorer.combination.statistic(scorer.combined_parts(images)).astype(np.float64)
        else:
            # Monte-Carlo methods decode K codes per image in one call: chunk the images so that a call holds at
            # most TORCH_VALUES decoded values (K = 256 at 3x64x64 for 64 images would need gigabytes)
            k = max(1, scorer.spec.samples(method))
            step = max(1, TORCH_VALUES // (k * images[0].size))
            ref = np.concatenate([torch_score(model, torch.from_numpy(images[i:i + step]), method, noise.get(method),
                                              scorer.spec.smooth_sigma, scorer.maps, scorer.combination,
                                              noise, defect_head=head,
                                              defect_window=scorer.spec.defect_window).numpy().astype(np.float64)
                                  for i in range(0, images.shape[0], step)])
        got = scorer.raw_scores(images, method).astype(np.float64)
        out[method] = float(np.max(np.abs(ref - got) / np.maximum(1.0, np.abs(ref))))
    return out


def check_parity(model: VAE, scorer: Scorer, images: np.ndarray, tolerance: float,
                 head: torch.nn.Module | None = None) -> ParityReport:
    """Compare graph outputs (absolute ``tolerance``) and scores (relative ``SCORE_RTOL``) with PyTorch; the
    defect head's too when the scorer has one (``head`` is its PyTorch module).

    Raises:
        ExportError: a difference beyond its tolerance.
    """
    encoder, decoder = scorer.runner.sessions(in_slice=False)
    diffs = graph_parity(model, encoder, decoder, images, list(scorer.spec.decoder_outputs))
    if scorer.has_defect_head:
        if head is None:
            raise ExportError("the scorer has a defect graph but no PyTorch head was given to check it against")
        diffs.update(defect_parity(head, scorer.runner.defect_session(False), images))
    _refuse(diffs, tolerance, "onnxruntime and PyTorch disagree beyond the tolerance")
    score_diffs = score_parity(model, scorer, images[:SCORE_PARITY_IMAGES], head)
    _refuse(score_diffs, SCORE_RTOL, "runtime scores disagree with PyTorch beyond relative tolerance")
    return ParityReport(diffs, score_diffs)


def _refuse(diffs: dict[str, float], tolerance: float, message: str) -> None:
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise ExportError(f"{message} {tolerance:g}: " + ", ".join(f"{k} {v:.3g}" for k, v in bad.items()))
