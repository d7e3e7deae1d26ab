"""Edge variants of a bundle's graphs: int8 (static QDQ quantization), fp16, and the ORT format.

Each variant is validated like the fp32 graphs: its scores are compared with the fp32 runtime's on held-out
images, it gets its own calibration (thresholds move when the arithmetic changes), and the change in outlier
AUROC is measured on a label-free check set (held-out normal images against perturbed copies of them:
pixel-shuffled, inverted and uniform-noise images), since export sees no real anomalies.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from edgevae.runtime.options import SCORE_METHODS, VARIANTS
from edgevae.runtime.calibration import auroc, scores_in_batches
from edgevae.runtime.manifest import DECODER_INPUT, DEFECT_INPUT, ENCODER_INPUT
from edgevae.runtime.model import Scorer

# Held-out images (and 3x as many perturbed copies) in the label-free check; Monte-Carlo scores use
# at most CHECK_SAMPLES samples there, to keep export quick.
CHECK_IMAGES = 200
CHECK_SAMPLES = 32
# Smallest Spearman rank correlation between a variant's scores and fp32's on held-out images.
MIN_RANK_CORRELATION = 0.9
# Elementwise operators that form the activation after the input convolution, kept in float with it in int8.
FIRST_LAYER_ACTIVATIONS = ("Relu", "Sigmoid", "Mul")


class _Reader:
    """Feeds calibration batches to onnxruntime's static quantizer."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._it = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def input_conv_nodes(proto: onnx.ModelProto, input_name: str) -> list[str]:
    """Names of the convolutions that read the graph input directly and of the activations that follow them.

    An activation is the chain of elementwise nodes (``Relu``; SiLU exports as ``Sigmoid`` + ``Mul``) fed only
    by the convolution's output or by each other. Empty when no convolution reads the input (a decoder).
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    picked: list[str] = []
    for conv in (n for n in consumers.get(input_name, []) if n.op_type == "Conv"):
        picked.append(conv.name)
        inside = set(conv.output)  # tensors computed by the first layer so far
        pending = list(conv.output)
        while pending:
            for node in consumers.get(pending.pop(), []):
                if (node.op_type in FIRST_LAYER_ACTIVATIONS and node.name not in picked
                        and all(i in inside for i in node.input)):
                    picked.append(node.name)
                    inside.update(node.output)
                    pending.extend(node.output)
    return picked


def quantize_int8(proto: onnx.ModelProto, input_name: str, batches: list[np.ndarray]) -> onnx.ModelProto:
    """Static QDQ int8 quantization (per-channel int8 weights, uint8 activations) calibrated on ``batches``.

    Weights use 7 of their 8 bits (``reduce_range``): on x86 CPUs with SSE4.1, AVX2 or AVX-512 but without VNNI,
    onnxruntime's uint8 x int8 products can overflow unless the weights lie in [-64, 63] (onnxruntime pull request
    12088, "x86/64 U8S8 Gemm Precision Fix"), and a bundle runs wherever it is shipped. With full-range weights,
    a small digit model's int8 variant ranked held-out images at Spearman 0.82 (smooth_recon) against fp32 on such
    a CPU (AMD EPYC, AVX2), below export's 0.9 bar.

    The convolution that reads the image, and its activation, stay in float32 (:func:`input_conv_nodes`):
    with one input channel it does 9 multiply-adds per output value, too few for onnxruntime's int8
    convolution to pay for its layout changes. Left in float32 it makes the int8 encoder faster (docs/benchmarks.md,
    the int8 layouts table) and keeps the input exact.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Reader, CalibrationDataReader):  # type: ignore[misc]
        pass

    with tempfile.TemporaryDirectory(prefix="edgevae-int8-") as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("src.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, src)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        keep_float = input_conv_nodes(onnx.load(pre), input_name)
        quantize_static(pre, out, Reader(input_name, batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=True, nodes_to_exclude=keep_float)
        return onnx.load(out)


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and arithmetic in float16; inputs and outputs stay float32 so callers do not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted: onnx.ModelProto = convert_float_to_float16(proto, keep_io_types=True)
    return converted


def to_ort_format(onnx_bytes: bytes) -> bytes:
    """Convert a graph to the ORT format used by onnxruntime's mobile and minimal builds."""
    with tempfile.TemporaryDirectory(prefix="edgevae-ort-") as tmp:
        target = os.path.join(tmp, "model.ort")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = target
        options.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        return Path(target).read_bytes()


def make_variant(name: str, enc: onnx.ModelProto, dec: onnx.ModelProto, images: np.ndarray,
                 latents: np.ndarray) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Build the encoder and decoder of a variant; int8 is calibrated on ``images`` and ``latents``."""
    if name == "int8":
        return (quantize_int8(enc, ENCODER_INPUT, [images[i:i + 64] for i in range(0, len(images), 64)]),
                quantize_int8(dec, DECODER_INPUT, [latents[i:i + 64] for i in range(0, len(latents), 64)]))
    if name == "fp16":
        return to_fp16(enc), to_fp16(dec)
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def make_defect_variant(name: str, graph: onnx.ModelProto, images: np.ndarray) -> onnx.ModelProto:
    """The defect head's graph in a variant: int8 calibrated on ``images``, or fp16."""
    if name == "int8":
        return quantize_int8(graph, DEFECT_INPUT, [images[i:i + 64] for i in range(0, len(images), 64)])
    if name == "fp16":
        return to_fp16(graph)
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def check_set(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label-free check set: held-out normals (label 0) and perturbed copies of them (label 1)."""
    rng = np.random.default_rng(seed)
    n = images.shape[0]
    flat = images.reshape(n, -1)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(images.shape)
    noise = rng.random(images.shape, dtype=np.float32)
    x = np.concatenate([images, shuffled, 1.0 - images, noise]).astype(np.float32)
    y = np.r_[np.zeros(n), np.ones(3 * n)].astype(int)
    return x, y


def compare(reference: Scorer, variant: Scorer, images: np.ndarray) -> dict[str, Any]:
    """Score agreement and label-free AUROC of a variant against the fp32 graphs, per method."""
    x, y = check_set(images[:CHECK_IMAGES])
    out: dict[str, Any] = {"max_abs_diff": {}, "rank_correlation": {}, "check_auroc": {}}
    enc_ref, enc_var = reference.encode(images), variant.encode(images)
    for name, a, b in zip(enc_ref._fields, enc_ref, enc_var):
        out["max_abs_diff"][f"encoder.{name}"] = float(np.max(np.abs(a - b)))
    for method in reference.computable_methods:
        k = min(CHECK_SAMPLES, reference.spec.samples(method)) or None
        ref = scores_in_batches(reference, x, method, samples=k)
        var = scores_in_batches(variant, x, method, samples=k)
        out["rank_correlation"][method] = _spearman(ref[y == 0], var[y == 0])
        out["check_auroc"][method] = {"fp32": auroc(y, ref), "variant": auroc(y, var)}
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])
