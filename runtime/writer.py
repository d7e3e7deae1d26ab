"""The one bundle writer, for export and recalibration alike (numpy-free; no onnx package needed).

A bundle is assembled in a temporary folder beside the target: the manifest is validated by the schema that
reads it (:class:`~edgevae.runtime.manifest.Manifest`), embedded in every ONNX graph's ``metadata_props``, the
files are written with their sha256, the manifest and (given a key) the signature beside them; then every variant
is loaded back exactly as a device will load it, and only then is the folder renamed into place. An interrupted
write leaves the target as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .atomic import atomic_folder, write_synced
from .files import sha256_hex
from .manifest import MANIFEST_FILE, METADATA_KEY, Manifest, dumps, embedded_manifest
from .onnx_metadata import set_metadata
from .signing import SIGNATURE_FILE, KeySource, sign_manifest


def graph_with_manifest(graph: bytes, manifest: Mapping[str, Any]) -> bytes:
    """An ONNX graph with the manifest (less ``files`` and ``variants``) in its ``metadata_props``."""
    return set_metadata(graph, METADATA_KEY, dumps(embedded_manifest(manifest)))


def write_bundle(target: str | os.PathLike[str], files: Mapping[str, bytes], manifest: Manifest | Mapping[str, Any],
                 *, replace: bool = False, sign_key: KeySource | None = None) -> dict[str, Any]:
    """Write a bundle folder atomically and check that it loads.

    Args:
        target: the bundle folder.
        files: every file but the manifest and the signature, by name (graphs of every variant, noise, maps).
            ONNX graphs (``.onnx``) get the manifest embedded; other files are written as they are.
        manifest: the manifest (``files`` is filled in here from what is written).
        replace: replace an existing folder (else it must not exist).
        sign_key: an Ed25519 private key: the manifest is signed and the bundle verified with that key.

    Returns:
        The manifest as written.

    Raises:
        FileExistsError: ``target`` exists and ``replace`` is not set.
        BundleError: the manifest does not validate, or the written bundle does not load.
    """
    from .bundle import load  # loading builds sessions: imported when a bundle is written, not with this module

    data = manifest.to_dict() if isinstance(manifest, Manifest) else dict(manifest)
    Manifest.from_dict(data, require_files=False)  # the schema that reads it accepts it, before anything is written
    with atomic_folder(target, replace=replace) as tmp:
        data["files"] = {}
        for name, content in files.items():
            if name.endswith(".onnx"):
                content = graph_with_manifest(content, data)
            write_synced(tmp / name, content)
            data["files"][name] = {"sha256": sha256_hex(content), "bytes": len(content)}
        write_synced(tmp / MANIFEST_FILE, dumps(data))
        if sign_key is not None:
            write_synced(tmp / SIGNATURE_FILE, sign_manifest(data, sign_key).to_json())
        keys = [sign_key] if sign_key is not None else []
        for variant in [None, *(data.get("variants") or {})]:
            load(tmp, ["CPUExecutionProvider"], variant=variant, slice_workers=1, trusted_keys=keys).close()
    return data


def bundle_files(folder: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file of an existing bundle but the manifest and the signature (what a rewrite carries over)."""
    path = Path(folder)
    return {item.name: item.read_bytes() for item in sorted(path.iterdir())
            if item.is_file() and item.name not in (MANIFEST_FILE, SIGNATURE_FILE)}


__all__ = ("bundle_files", "graph_with_manifest", "write_bundle")
