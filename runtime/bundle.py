"""Load a bundle folder, verifying it before any graph runs: manifest schema, sha256 of each graph, graph I/O."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import BundleError
from .manifest import (
    DECODER_FILE,
    DECODER_INPUT,
    DEFECT_INPUT,
    DEFECT_OUTPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    Manifest,
    ScoringSpec,
)
from .maps import Combination, MapStats
from .tiles import ALIGN_TIE, DefectStats, FrameAlignment, Positional
from .model import Model
from .runner import GraphRunner, build_runner
from .files import read_manifest, read_verified, sha256_hex, verify_files
from .sessions import Providers, onnxruntime
from .signing import KeySource, all_key_paths, verify_signature

if TYPE_CHECKING:
    import onnxruntime as ort



def _ort_load_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's errors for a graph it cannot load."""
    state = onnxruntime().capi.onnxruntime_pybind11_state
    return (state.Fail, state.InvalidGraph, state.InvalidProtobuf)


def select_variant(manifest: Manifest, variant: str | None, path: Path) -> tuple[Manifest, list[str]]:
    """The manifest with the variant's calibration in force, and the variant's graph files: encoder, decoder and,
    when the bundle has a defect head, its graph (the fp32 one for a variant that lists none).

    Raises:
        BundleError: the bundle has no such variant.
    """
    if variant in (None, "fp32"):
        return manifest, manifest.graph_files()
    try:
        selected = manifest.with_variant(variant)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    spec = manifest.variants[variant]
    files = spec.graph_files
    if manifest.defect is not None and spec.defect is None:
        files = files + [manifest.defect.file]
    return selected, files


def check_graphs(runner: GraphRunner, spec: ScoringSpec) -> None:
    """Check that every session's inputs and outputs are the ones the spec describes.

    Raises:
        BundleError: a name, type or shape differs.
    """
    io = {
        "encoder": ([ENCODER_INPUT], list(ENCODER_OUTPUTS), list(spec.contract.shape)),
        "decoder": ([DECODER_INPUT], list(spec.decoder_outputs), [spec.latent_dim]),
    }
    for role, sessions in runner.all_sessions().items():
        for session in sessions:
            if role == "defect":
                _check_defect_graph(session, spec.contract.channels)
                continue
            inputs, outputs, shape = io[role]
            _check_graph(session, role, inputs, outputs, shape, spec.latent_dim)


def _check_defect_graph(session: ort.InferenceSession, channels: int) -> None:
    """The defect head takes images (N, C, H, W) with the contract's C (H and W may be fixed or free) and gives
    one logit map (N, 1, H, W)."""
    got_in = [a.name for a in session.get_inputs()]
    got_out = [a.name for a in session.get_outputs()]
    if got_in != [DEFECT_INPUT] or got_out != [DEFECT_OUTPUT]:
        raise BundleError(f"defect graph maps {got_in} to {got_out}; the manifest says [{DEFECT_INPUT!r}] to "
                          f"[{DEFECT_OUTPUT!r}]")
    arg = session.get_inputs()[0]
    if arg.type != "tensor(float)" or len(arg.shape) != 4 or arg.shape[1] != channels:
        raise BundleError(f"defect input {arg.name!r} is {arg.type} {arg.shape}; the manifest says float [N, {channels}, "
                          "H, W]")


def _check_graph(session: ort.InferenceSession, name: str, inputs: list[str], outputs: list[str],
                 shape: list[int], latent_dim: int) -> None:
    got_in = [a.name for a in session.get_inputs()]
    got_out = [a.name for a in session.get_outputs()]
    if got_in != inputs:
        raise BundleError(f"{name} graph takes inputs {got_in}, the manifest says {inputs}")
    if sorted(got_out) != sorted(outputs):
        raise BundleError(f"{name} graph gives outputs {got_out}, the manifest says {outputs}")
    for arg in session.get_inputs():
        if arg.type != "tensor(float)":
            raise BundleError(f"{name} input {arg.name!r} is {arg.type}, expected tensor(float)")
        if list(arg.shape[1:]) != shape:
            raise BundleError(f"{name} input {arg.name!r} has shape {arg.shape}, the manifest says [N, "
                              f"{', '.join(map(str, shape))}]")
    for arg in session.get_outputs():
        if arg.name in ("mu", "logvar") and arg.shape[-1] != latent_dim:
            raise BundleError(f"{name} output {arg.name!r} has shape {arg.shape}, latent size is {latent_dim}")


def load(bundle: str | os.PathLike[str], providers: Providers = "auto", *, threads: int | None = None,
         strict: bool = False, variant: str | None = None, slice_workers: int | None = None,
         trusted_keys: Iterable[KeySource] | None = None, manifest: Manifest | None = None) -> Model:
    """Load a bundle directory, verifying it before any graph runs.

    Checks the manifest's format and schema version, the sha256 of each graph, and that the graphs'
    inputs and outputs match the manifest.

    Args:
        bundle: the bundle directory written by ``edgevae export``.
        providers: ``"auto"`` (best available), a list of provider names, or a comma-separated string.
        threads: intra-op threads of each session (None: onnxruntime's default, one per core).
        slice_workers: concurrent calls a large batch (>= 64) is split into, each on a one-thread session.
            None: on the CPU provider ``threads`` (or one per core); elsewhere 1. See
            :func:`~edgevae.runtime.runner.build_runner`.
        strict: fail when a requested provider is not active in the sessions.
        variant: an edge variant listed in the manifest (``int8``, ``fp16``, ``ort``, ``int8-ort``, ...);
            None or ``fp32`` loads the fp32 ONNX graphs. A variant brings its own calibration.
        trusted_keys: paths of Ed25519 public keys (``edgevae keygen``). When any are given, the bundle loads
            only if it is signed by one of them and every file it lists is unaltered since. None: the keys named
            by the ``EDGEVAE_TRUSTED_KEYS`` environment variable (paths separated by ``os.pathsep``), if set;
            an empty list: no signature check.
        manifest: the bundle's manifest when the caller has read it already (``read_manifest``): it is not read
            again, and it is the one that is verified and used.

    Raises:
        BundleError: missing files, checksum mismatch, unsupported schema, graphs that disagree; with trusted
            keys also an unsigned bundle, another signer, or a change after signing.
        MissingExtraError: trusted keys were given but the ``sign`` extra is not installed.
        ProviderError: unavailable provider, or (strict) a provider fell back.
        ValueError: bad ``threads`` or ``slice_workers``.
    """
    path = Path(bundle)
    manifest = manifest if manifest is not None else read_manifest(path)
    keys = all_key_paths(trusted_keys)
    selected, names = select_variant(manifest, variant, path)
    if keys:  # the manifest object that was verified is the one used from here on: no re-read
        verify_signature(path, manifest.raw, keys)
        # those are read and checked below
        verify_files(path, manifest, skip=[*names, *manifest.data_files()])
    manifest = selected
    encoder, decoder, *defect = (read_verified(path, manifest, name) for name in names)
    try:
        runner = build_runner(encoder, decoder, providers, threads=threads, strict=strict, slice_workers=slice_workers,
                              defect=defect[0] if defect else None)
    except _ort_load_errors() as exc:
        raise BundleError(f"{path}: onnxruntime cannot load the graphs: {exc}") from exc
    check_graphs(runner, manifest.scoring)
    maps, combination = read_maps(path, manifest)
    return Model(manifest, runner, path=path, variant=variant or "fp32", noise=read_noise(path, manifest), maps=maps,
                 combination=combination, positional=read_positional(path, manifest))


def read_positional(path: Path, manifest: Manifest) -> Positional | None:
    """A fixed camera's per-position statistics (``tiling.map``, checked against its sha256 and the frame's
    size) and its ``combined`` references; None for a bundle that is not positional.

    Raises:
        BundleError: the file is missing, altered or of another size.
    """
    tiling = manifest.tiling
    if tiling is None or not tiling.positional or tiling.map is None or tiling.frame is None:
        return None
    entry = tiling.map
    data = read_verified(path, manifest, entry.file)
    h, w = tiling.frame
    if len(data) != 4 * 2 * h * w:
        raise BundleError(f"{path}: {entry.file} holds {len(data)} bytes, but tiling.frame needs float32 (2, {h}, {w})")
    try:
        stats = MapStats.from_bytes(data, entry.shape, entry.sigma, entry.top_k)
    except ValueError as exc:
        raise BundleError(f"{path}: {entry.file} is unusable: {exc}") from exc
    defect = None
    if tiling.defect_map is not None:
        file = str(tiling.defect_map["file"])
        data = read_verified(path, manifest, file)
        if len(data) != 4 * 2 * h * w:
            raise BundleError(f"{path}: {file} holds {len(data)} bytes, but tiling.frame needs float32 (2, {h}, {w})")
        try:
            defect = DefectStats.from_bytes(data, (h, w))
        except ValueError as exc:
            raise BundleError(f"{path}: {file} is unusable: {exc}") from exc
    alignment = None
    if tiling.alignment is not None:
        alignment = _read_alignment(path, manifest, stats, defect)
    return Positional(stats, tiling.combination(manifest.scoring.combined_parts, manifest.scoring.combined_weights),
                      defect, alignment)


def _read_alignment(path: Path, manifest: Manifest, stats: MapStats, defect: DefectStats | None) -> FrameAlignment:
    """A fixed camera's frame alignment (``tiling.alignment``): its reference and aligned statistics, each file
    checked against its sha256 and size.

    Raises:
        BundleError: a file is missing, altered or of another size, or the reference has another channel count.
    """
    tiling = manifest.tiling
    assert tiling is not None and tiling.alignment is not None and tiling.frame is not None
    entry = tiling.alignment
    h, w = tiling.frame
    c = int(entry["shape"][0])
    if c != manifest.contract.channels:
        raise BundleError(f"{path}: tiling.alignment.shape has {c} channel(s), the input contract "
                          f"{manifest.contract.channels}")

    def data(key: str | None, need: int) -> bytes:
        file = str(entry["file"] if key is None else entry[key]["file"])
        raw = read_verified(path, manifest, file)
        if len(raw) != 4 * need:
            raise BundleError(f"{path}: {file} holds {len(raw)} bytes, but tiling.alignment needs {need} float32 values")
        return raw

    try:
        aligned = MapStats.from_bytes(data("map", 2 * h * w), (2, h, w), stats.sigma, stats.top_k)
        aligned_defect = (DefectStats.from_bytes(data("defect_map", 2 * h * w), (h, w))
                          if entry.get("defect_map") is not None else None)
        return FrameAlignment.from_bytes(data(None, c * h * w), (c, h, w), int(entry["radius"]), aligned,
                                         aligned_defect, float(entry.get("tie", ALIGN_TIE)))
    except ValueError as exc:
        raise BundleError(f"{path}: tiling.alignment is unusable: {exc}") from exc


def read_maps(path: Path, manifest: Manifest) -> tuple[MapStats | None, Combination | None]:
    """The anomaly-map statistics (``scoring.map``, checked against their sha256 and shape) and the combined
    score's parts with the references of the calibration in force; None for what a bundle predates.

    Raises:
        BundleError: a listed file is missing, altered, of another shape, or an entry is malformed.
    """
    entry = manifest.map
    maps = None
    c, h, w = manifest.contract.shape
    try:
        if entry is not None:
            data = read_verified(path, manifest, entry.file)
            if entry.shape != (2, h, w) or len(data) != 4 * 2 * h * w:
                raise BundleError(f"{path}: {entry.file} holds {len(data)} bytes for shape {list(entry.shape)}, but "
                                  f"the input contract needs float32 (2, {h}, {w})")
            maps = MapStats.from_bytes(data, entry.shape, entry.sigma, entry.top_k)
        combination = manifest.combination
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise BundleError(f"{path}: scoring.map or calibration.methods.combined is malformed: {exc!r}") from exc
    return maps, combination


def read_noise(path: Path, manifest: Manifest) -> dict[str, NDArray[np.float32]]:
    """The Monte-Carlo noise files the manifest lists under ``scoring.noise_files`` (bundles from before they
    existed list none), each checked against its sha256 and its stated shape.

    Raises:
        BundleError: a listed file is missing, altered, or of another shape.
    """
    noise: dict[str, NDArray[np.float32]] = {}
    for method, entry in manifest.noise.items():
        data = read_verified(path, manifest, entry.file)
        expected = (manifest.scoring.samples(method), manifest.scoring.latent_dim)
        if entry.shape != expected or len(data) != 4 * entry.shape[0] * entry.shape[1]:
            raise BundleError(f"{path}: {entry.file} holds {len(data)} bytes for shape {entry.shape}, but the "
                              f"manifest's scoring needs float32 {expected}")
        noise[method] = np.frombuffer(data, dtype="<f4").reshape(entry.shape).astype(np.float32)
    return noise


__all__: Sequence[str] = ("check_graphs", "load", "read_manifest", "read_verified", "select_variant", "sha256_hex",
                          "verify_files")
