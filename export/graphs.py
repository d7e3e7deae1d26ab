"""Export a VAE's encoder and decoder as two ONNX graphs with the torch.export-based exporter."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import threading
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper
import torch

from edgevae.runtime.atomic import atomic_open
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
# Exported graphs by architecture (_GraphCache); a few entries, the most recently used kept.
_CACHE_ENTRIES = 8
# A folder that keeps them across processes too (_GraphCache): unset, the cache lives in this process alone.
CACHE_DIR_ENV = "EDGEVAE_EXPORT_CACHE_DIR"


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


def _architecture(module: torch.nn.Module) -> tuple[Any, ...]:
    """What fixes a module's traced graph apart from its weights: every submodule's class, its repr (layer
    hyperparameters) and its plain attributes (flags such as ``variational`` or ``likelihood``, configs), and the
    names, shapes and dtypes of its state."""
    parts: list[Any] = []
    for name, sub in module.named_modules():
        plain = sorted((k, repr(v)) for k, v in vars(sub).items() if not k.startswith("_"))
        parts.append((name, type(sub).__module__, type(sub).__qualname__, sub.extra_repr(), tuple(plain)))
    state = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in module.state_dict(keep_vars=False).items())
    return tuple(parts), state


@dataclass(frozen=True)
class _Cached:
    proto: onnx.ModelProto
    folded: dict[str, np.ndarray]  # buffers the exporter folded into the graph: a reuse needs the same values


class _GraphCache:
    """Exported graphs by architecture, so that exporting a model of an architecture seen before in this process
    swaps the new weights into the graph instead of tracing again (the exporter takes seconds; a grid search or
    scikit-learn's estimator checks export dozens of models of one architecture).

    A graph is kept only when every parameter is an initializer of its own name holding exactly its value (no
    weight folded into another tensor, as batch normalisation is folded into a convolution); a buffer that is not
    an initializer was folded, so a reuse requires the same value. Every reuse is checked: the graph with the new
    weights runs the example in onnxruntime and must match the module in PyTorch, or the module is exported
    afresh. Export's parity check on held-out images follows as before.

    With ``EDGEVAE_EXPORT_CACHE_DIR`` set to a folder, every kept graph is also written there (``KEY.onnx`` and the
    folded buffers in ``KEY.npz``, KEY a SHA-256 of the architecture), and a process that has not exported an
    architecture looks there first: separate ``edgevae export`` runs of one architecture (a sweep from a shell
    script, a test suite's command-line runs) trace it once. A file read from the folder gets the same check on
    the example as any reuse; an unreadable or mismatching one is exported afresh and overwritten.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[Any, ...], _Cached] = OrderedDict()

    @staticmethod
    def _disk(key: tuple[Any, ...]) -> Path | None:
        folder = os.environ.get(CACHE_DIR_ENV)
        return Path(folder) / hashlib.sha256(repr(key).encode()).hexdigest() if folder else None

    def _read(self, key: tuple[Any, ...]) -> _Cached | None:
        stem = self._disk(key)
        if stem is None or not stem.with_suffix(".onnx").is_file():
            return None
        try:
            proto = onnx.load_model_from_string(stem.with_suffix(".onnx").read_bytes())
            with np.load(stem.with_suffix(".npz"), allow_pickle=False) as folded:
                return _Cached(proto, {k: folded[k] for k in folded.files})
        except (OSError, ValueError, zipfile.BadZipFile, DecodeError):
            return None  # a damaged or foreign file: export afresh

    def _write(self, key: tuple[Any, ...], cached: _Cached) -> None:
        stem = self._disk(key)
        if stem is None:
            return
        try:
            stem.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(stem.with_suffix(".npz"), "wb") as handle:
                np.savez(handle, **cached.folded)  # type: ignore[arg-type]
            with atomic_open(stem.with_suffix(".onnx"), "wb") as handle:  # last: its presence means both are whole
                handle.write(cached.proto.SerializeToString())
        except OSError:
            pass  # a cache that cannot be written only costs the next process a trace

    def get(self, key: tuple[Any, ...], module: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto | None:
        cached = self._entries.get(key)
        if cached is None and (cached := self._read(key)) is not None:
            self._entries[key] = cached
        if cached is None:
            return None
        state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        if any(not np.array_equal(state[k], v) for k, v in cached.folded.items()):
            return None
        proto = onnx.ModelProto()
        proto.CopyFrom(cached.proto)
        for init in proto.graph.initializer:
            if init.name in state:
                old = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(state[init.name].astype(old.dtype), init.name))
        if not _same_outputs(proto, module, example):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return proto

    def put(self, key: tuple[Any, ...], module: torch.nn.Module, proto: onnx.ModelProto) -> None:
        inits = {i.name: i for i in proto.graph.initializer}
        params = {k for k, _ in module.named_parameters()}
        folded: dict[str, np.ndarray] = {}
        for name, value in module.state_dict().items():
            array = value.detach().cpu().numpy()
            if name not in inits:
                if name in params:
                    return  # a weight folded into another tensor: the graph cannot take new weights by name
                folded[name] = array.copy()
            elif not np.array_equal(numpy_helper.to_array(inits[name]), array):
                return
        kept = onnx.ModelProto()
        kept.CopyFrom(proto)
        self._entries[key] = _Cached(kept, folded)
        self._write(key, self._entries[key])
        while len(self._entries) > _CACHE_ENTRIES:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def _same_outputs(proto: onnx.ModelProto, module: torch.nn.Module, example: torch.Tensor) -> bool:
    """Does the graph give the module's outputs on ``example`` (to float32 rounding)?"""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        want = module(example)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    return len(got) == len(want) and all(g.shape == tuple(w.shape) and np.allclose(g, w.detach().numpy(), rtol=1e-3,
                                                                                   atol=1e-4) for g, w in zip(got, want))


GRAPH_CACHE = _GraphCache()


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
    An architecture exported before in this process reuses that graph with the new weights (:class:`_GraphCache`,
    checked on ``example``); ``EDGEVAE_EXPORT_CACHE=0`` turns that off.

    Raises:
        ExportError: the exporter returned nothing.
    """
    key = (_architecture(module), tuple(example.shape[1:]), str(example.dtype), input_name, tuple(output_names),
           opset, free_size)
    use_cache = os.environ.get("EDGEVAE_EXPORT_CACHE", "1") != "0"
    with _EXPORT_LOCK:
        if use_cache and (proto := GRAPH_CACHE.get(key, module, example)) is not None:
            return proto
        axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
        if free_size:
            axes.update({2: torch.export.Dim("height", min=8, max=MAX_SIDE),
                         3: torch.export.Dim("width", min=8, max=MAX_SIDE)})
        with quiet_exporter(), _shared_torchlib():
            program = torch.onnx.export(
                module, (example,), dynamo=True, input_names=[input_name], output_names=output_names,
                dynamic_shapes={input_name: axes}, opset_version=opset, verbose=False,
            )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        proto = program.model_proto
        onnx.checker.check_model(proto, full_check=True)
        if use_cache:
            GRAPH_CACHE.put(key, module, proto)
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
    """Export the defect head (x -> defect logits) with a free batch, height and width.

    Its batch normalisations are folded into the convolutions before it is traced (:func:`fold_batch_norms`), so
    that every weight of the graph is an initializer of its own name and the graph cache can reuse it.
    """
    return export_graph(fold_batch_norms(head), torch.from_numpy(images[:3]), DEFECT_INPUT, [DEFECT_OUTPUT], opset,
                        free_size=True)


def fold_batch_norms(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` in eval mode where every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an
    ``nn.Sequential`` is folded into that convolution's weights and bias (and replaced by ``nn.Identity``).

    The same arithmetic the exporter would do on its own, done in PyTorch first: the folded weights are then
    parameters of the convolution, not anonymous tensors of the graph.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(module).eval()
    for sequence in [m for m in folded.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(sequence._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = sequence._modules[first], sequence._modules[second]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                sequence._modules[first] = fuse_conv_bn_eval(conv, norm)
                sequence._modules[second] = torch.nn.Identity()
    return folded
