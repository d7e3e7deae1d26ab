"""Export a VAE's encoder and decoder as two ONNX graphs with the torch.export-based exporter."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import onnx
import torch

from edgevae.runtime.errors import ExportError
from edgevae.runtime.manifest import (
    DECODER_INPUT,
    DEFECT_INPUT,
    DEFECT_OUTPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    decoder_outputs,
)
from edgevae.training.model import VAE

# Largest batch the dynamic batch axis admits, and the largest side of the defect head's free image size.
MAX_BATCH = 1 << 20
MAX_SIDE = 1 << 15

# One table of ATen-to-ONNX functions per (registry class, opset), shared by edgevae's exports (_shared_torchlib).
_REGISTRIES: dict[tuple[Any, int], Any] = {}
_EXPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def _shared_torchlib() -> Iterator[None]:
    """Share torch.onnx's table of ATen-to-ONNX functions between edgevae's exports.

    The exporter rebuilds that table on every call (onnxscript re-reads the source of about 1,000 functions:
    0.6 s here, a third of exporting a small graph). edgevae's exports pass no custom translations, so nothing
    changes the table, and while one of them runs the table's constructor returns the one built first for the
    opset. The constructor is restored afterwards, so other code in the process is unaffected. Exports are
    serialised (a lock) so that two threads never swap the constructor at once. Where torch's private layout
    differs (another torch version), the exporter runs as it is.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, KeyError, AttributeError):
        yield
        return

    def shared(cls: Any, *args: Any, **kwargs: Any) -> Any:
        key = (cls, *args, *sorted(kwargs.items()))
        if key not in _REGISTRIES:
            _REGISTRIES[key] = build(cls, *args, **kwargs)
        return _REGISTRIES[key]

    setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(shared))
    try:
        yield
    finally:
        setattr(_registration.ONNXRegistry, "from_torchlib", original)



@dataclass(frozen=True)
class Graphs:
    """The two exported graphs, before the manifest is embedded in them."""

    encoder: onnx.ModelProto
    decoder: onnx.ModelProto


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
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
        mu, logvar, kl = self.encoder(x)
        return mu, logvar, kl


def export_graph(module: torch.nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                 opset: int, *, free_size: bool = False) -> onnx.ModelProto:
    """Export one module with the torch.export-based exporter and a dynamic batch axis; run onnx.checker.

    ``free_size`` also leaves the height and width free (a fully convolutional graph: any image size).

    Raises:
        ExportError: the exporter returned nothing.
    """
    axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if free_size:
        axes.update({2: torch.export.Dim("height", min=8, max=MAX_SIDE), 3: torch.export.Dim("width", min=8, max=MAX_SIDE)})
    with _EXPORT_LOCK, quiet_exporter(), _shared_torchlib():
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=[input_name], output_names=output_names,
            dynamic_shapes={input_name: axes}, opset_version=opset, verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_graphs(model: VAE, images: np.ndarray, opset: int) -> Graphs:
    """Export the encoder (x -> mu, logvar, kl) and the decoder (t -> mean, likelihood parameter)."""
    example = torch.from_numpy(images[:3])  # (3, C, H, W)
    encoder = export_graph(_EncoderGraph(model), example, ENCODER_INPUT, list(ENCODER_OUTPUTS), opset)
    with torch.no_grad():
        t_example = model.encode(example)[0]  # (3, D)
    decoder = export_graph(model.decoder, t_example, DECODER_INPUT, list(decoder_outputs(model.config.likelihood)),
                           opset)
    return Graphs(encoder, decoder)


def export_defect_graph(head: torch.nn.Module, images: np.ndarray, opset: int) -> onnx.ModelProto:
    """Export the defect head (x -> defect logits) with a free batch, height and width."""
    return export_graph(head.eval(), torch.from_numpy(images[:3]), DEFECT_INPUT, [DEFECT_OUTPUT], opset, free_size=True)
