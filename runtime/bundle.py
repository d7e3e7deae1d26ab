"""Load a bundle folder, verifying it before any graph runs: manifest schema, sha256 of each graph, graph I/O."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from .errors import BundleError
from .manifest import (
    DECODER_FILE,
    DECODER_INPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    MANIFEST_FILE,
    Manifest,
    ScoringSpec,
)
from .maps import Combination, MapStats
from .model import Model
from .runner import GraphRunner, build_runner
from .scores import MethodCalibration
from .sessions import Providers
from .signing import KeySource, all_key_paths, verify_signature

# onnxruntime's errors for a graph it cannot load.
_ORT_LOAD_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                    ort.capi.onnxruntime_pybind11_state.InvalidProtobuf)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(bundle: str | os.PathLike[str]) -> Manifest:
    """Read and validate a bundle's manifest without creating sessions.

    Raises:
        BundleError: not a folder, no manifest, or a manifest that is malformed or of another schema.
    """
    path = Path(bundle)
    if path.suffix == ".pt" or (path.is_dir() and (path / "best.pt").exists() and not (path / MANIFEST_FILE).exists()):
        raise BundleError(f"{path}: a training run (checkpoint), not a bundle; export it first: "
                          f"edgevae export {path} -o bundle/   and score with -m bundle/")
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory (expected a folder with {MANIFEST_FILE}, "
                          f"{ENCODER_FILE}, {DECODER_FILE}); create one with 'edgevae export'")
    manifest_path = path / MANIFEST_FILE
    try:
        text = manifest_path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: {MANIFEST_FILE} is missing; this folder is not a complete bundle") from exc
    except OSError as exc:
        raise BundleError(f"{manifest_path}: cannot read ({exc})") from exc
    return Manifest.from_json(text)


def select_variant(manifest: Manifest, variant: str | None, path: Path) -> tuple[Manifest, list[str]]:
    """The manifest with the variant's calibration in force, and the variant's (encoder, decoder) files.

    Raises:
        BundleError: the bundle has no such variant, or its entry is malformed.
    """
    if variant in (None, "fp32"):
        return manifest, [ENCODER_FILE, DECODER_FILE]
    if variant not in manifest.variants:
        available = ", ".join(["fp32", *manifest.variants])
        raise BundleError(f"{path}: no variant {variant!r} in this bundle; available: {available}. "
                          "Add variants at export (--quantize int8, --precision fp16, --ort-format)")
    spec = manifest.variants[variant]
    try:
        names = [str(spec["encoder"]), str(spec["decoder"])]
        calibration = {m: MethodCalibration.from_dict(c) for m, c in spec["calibration"]["methods"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: variant {variant!r} is malformed in the manifest: {exc!r}") from exc
    return replace(manifest, calibration=calibration), names


def read_verified(path: Path, manifest: Manifest, fname: str) -> bytes:
    """A file of the bundle, after checking its sha256 against the manifest.

    Raises:
        BundleError: no checksum in the manifest, the file is missing, or its content differs.
    """
    if fname not in manifest.files or not isinstance(manifest.files[fname], dict):
        raise BundleError(f"{path}: the manifest has no checksum for {fname}; refusing to load it")
    try:
        data = (path / fname).read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: {fname} is missing; re-export the bundle") from exc
    digest = sha256_hex(data)
    expected = manifest.files[fname]["sha256"]
    if digest != expected:
        raise BundleError(
            f"{path / fname}: sha256 {digest[:16]}... does not match the manifest's {str(expected)[:16]}...; "
            "the graph was modified or corrupted. Refusing to load it; re-export or re-copy the bundle"
        )
    return data


def verify_files(path: Path, manifest: Manifest, skip: Iterable[str] = ()) -> None:
    """Check the sha256 of every file the manifest lists (graphs of every variant) but those in ``skip`` (which
    the caller reads, and so checks, anyway).

    Raises:
        BundleError: a listed file is missing or differs from its checksum.
    """
    for fname in set(manifest.files) - set(skip):
        read_verified(path, manifest, fname)


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
        inputs, outputs, shape = io[role]
        for session in sessions:
            _check_graph(session, role, inputs, outputs, shape, spec.latent_dim)


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
         trusted_keys: Iterable[KeySource] | None = None) -> Model:
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

    Raises:
        BundleError: missing files, checksum mismatch, unsupported schema, graphs that disagree; with trusted
            keys also an unsigned bundle, another signer, or a change after signing.
        MissingExtraError: trusted keys were given but the ``sign`` extra is not installed.
        ProviderError: unavailable provider, or (strict) a provider fell back.
        ValueError: bad ``threads`` or ``slice_workers``.
    """
    path = Path(bundle)
    manifest = read_manifest(path)
    keys = all_key_paths(trusted_keys)
    selected, names = select_variant(manifest, variant, path)
    if keys:  # the manifest object that was verified is the one used from here on: no re-read
        verify_signature(path, manifest.raw, keys)
        # those are read and checked below
        verify_files(path, manifest, skip=[*names, *_noise_files(manifest), *_map_files(manifest)])
    manifest = selected
    encoder, decoder = (read_verified(path, manifest, name) for name in names)
    try:
        runner = build_runner(encoder, decoder, providers, threads=threads, strict=strict, slice_workers=slice_workers)
    except _ORT_LOAD_ERRORS as exc:
        raise BundleError(f"{path}: onnxruntime cannot load the graphs: {exc}") from exc
    check_graphs(runner, manifest.scoring)
    maps, combination = read_maps(path, manifest, variant)
    return Model(manifest, runner, path=path, variant=variant or "fp32", noise=read_noise(path, manifest), maps=maps,
                 combination=combination)


def _map_files(manifest: Manifest) -> list[str]:
    entry = manifest.raw.get("scoring", {}).get("map")
    return [str(entry.get("file"))] if isinstance(entry, dict) else []


def read_maps(path: Path, manifest: Manifest, variant: str | None = None) -> tuple[MapStats | None, Combination | None]:
    """The anomaly-map statistics (``scoring.map``, checked against their sha256 and shape) and the combined
    score's parts (``scoring.combined``) with the references of the variant's calibration; None for what a
    bundle predates.

    Raises:
        BundleError: a listed file is missing, altered, of another shape, or an entry is malformed.
    """
    entry = manifest.raw.get("scoring", {}).get("map")
    raw_cal = (manifest.raw["calibration"] if variant in (None, "fp32")
               else manifest.raw["variants"][variant]["calibration"])
    combined = raw_cal.get("methods", {}).get("combined")
    maps = combination = None
    c, h, w = manifest.contract.shape
    try:
        if entry is not None:
            shape = [int(v) for v in entry["shape"]]
            data = read_verified(path, manifest, str(entry["file"]))
            if shape != [2, h, w] or len(data) != 4 * 2 * h * w:
                raise BundleError(f"{path}: {entry['file']} holds {len(data)} bytes for shape {shape}, but the input "
                                  f"contract needs float32 (2, {h}, {w})")
            maps = MapStats.from_bytes(data, shape, float(entry["sigma"]), int(entry["top_k"]))
        if combined is not None:
            combination = Combination.from_manifest(manifest.scoring.combined_parts, combined["references"])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise BundleError(f"{path}: scoring.map or calibration.methods.combined is malformed: {exc!r}") from exc
    return maps, combination


def _noise_files(manifest: Manifest) -> list[str]:
    entries = manifest.raw.get("scoring", {}).get("noise_files") or {}
    return [str(e.get("file")) for e in entries.values() if isinstance(e, dict)]


def read_noise(path: Path, manifest: Manifest) -> dict[str, NDArray[np.float32]]:
    """The Monte-Carlo noise files the manifest lists under ``scoring.noise_files`` (bundles from before they
    existed list none), each checked against its sha256 and its stated shape.

    Raises:
        BundleError: a listed file is missing, altered, or of another shape.
    """
    entries = manifest.raw.get("scoring", {}).get("noise_files") or {}
    noise: dict[str, NDArray[np.float32]] = {}
    for method, entry in entries.items():
        try:
            shape = (int(entry["shape"][0]), int(entry["shape"][1]))
            data = read_verified(path, manifest, str(entry["file"]))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise BundleError(f"{path}: scoring.noise_files.{method} is malformed: {exc!r}") from exc
        expected = (manifest.scoring.samples(method), manifest.scoring.latent_dim)
        if shape != expected or len(data) != 4 * shape[0] * shape[1]:
            raise BundleError(f"{path}: {entry['file']} holds {len(data)} bytes for shape {shape}, but the manifest's "
                              f"scoring needs float32 {expected}")
        noise[method] = np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)
    return noise


__all__: Sequence[str] = ("check_graphs", "load", "read_manifest", "read_verified", "select_variant", "sha256_hex",
                          "verify_files")
