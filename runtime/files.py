"""Read and check a bundle's files without building sessions: the manifest, and each file against its sha256.

Loading (``bundle.py``) and signing (``signing.py``) both build on these; neither imports the other.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

from .errors import BundleError
from .manifest import DECODER_FILE, ENCODER_FILE, MANIFEST_FILE, Manifest


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


__all__: Sequence[str] = ("read_manifest", "read_verified", "sha256_hex", "verify_files")
