"""Inputs from disk: image files, folders, globs, .npy/.npz arrays and MNIST IDX files, streamed in batches.

Bad items never stop a batch: each one is reported with its error and the rest are still returned.
"""

from __future__ import annotations

import glob
import gzip
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from .contract import IMAGE_EXTENSIONS, InputContract, uint8_to_unit
from .errors import ArrayInputError, IDXFormatError, InputError, PathError

ARRAY_EXTENSIONS = (".npy", ".npz")
_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def is_idx_path(path: str | os.PathLike[str]) -> bool:
    name = os.fspath(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(".idx") or "ubyte" in os.path.basename(name) or name.endswith((".idx1", ".idx3"))


def is_array_path(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(ARRAY_EXTENSIONS)


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def _kind(name: str) -> str:
    """``image``, ``array`` or ``idx`` by file name; "" for files edgevae does not read."""
    if is_image_path(name):
        return "image"
    if is_array_path(name):
        return "array"
    return "idx" if is_idx_path(name) else ""


def read_idx(path: str | os.PathLike[str]) -> NDArray[Any]:
    """Read an IDX file (plain or .gz), as MNIST distributes images and labels.

    Raises:
        IDXFormatError: bad magic number, unknown element type, or a length that disagrees with the header.
    """
    name = os.fspath(path)
    try:
        opener = gzip.open if name.lower().endswith(".gz") else open
        with opener(name, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise IDXFormatError(f"{name}: cannot read IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXFormatError(f"{name}: not an IDX file (magic number must start with two zero bytes)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES:
        raise IDXFormatError(f"{name}: unknown IDX element type 0x{type_code:02x}")
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise IDXFormatError(f"{name}: IDX header is truncated or has {ndim} dimensions")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(dims)) * dtype.itemsize
    body = memoryview(data)[4 + 4 * ndim:]
    if len(body) != expected:
        raise IDXFormatError(f"{name}: header says shape {dims} ({expected} bytes of data) but the file holds "
                             f"{len(body)} bytes; the file is truncated or not IDX")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_array_file(path: str | os.PathLike[str], key: str | None = None) -> NDArray[Any]:
    """Load images from .npy or .npz (key: ``key``, else ``images``, ``x``, or the only array)."""
    name = os.fspath(path)
    try:
        loaded = np.load(name, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ArrayInputError(f"{name}: cannot read array file ({exc})") from exc
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded as npz:
        keys = list(npz.keys())
        chosen = key or next((k for k in ("images", "x", "X") if k in keys), None)
        if chosen is None and len(keys) == 1:
            chosen = keys[0]
        if chosen is None or chosen not in keys:
            raise ArrayInputError(f"{name}: choose the array holding images; the archive has {keys}")
        try:
            images: NDArray[Any] = npz[chosen]
            return images
        except ValueError as exc:
            raise ArrayInputError(f"{name}[{chosen}]: cannot read array ({exc})") from exc


@dataclass
class Batch:
    """A batch of prepared images plus the items that failed, both in input order.

    ``order`` interleaves the two as the inputs came: (False, i) is ``names[i]`` / ``images[i]``, (True, j) is
    ``failures[j]``.
    """

    names: list[str] = field(default_factory=list)
    images: NDArray[np.float32] | None = None
    # per image, what was converted to fit the model ("" when nothing): a channel count that differed
    warnings: list[str] = field(default_factory=list)
    failures: list[tuple[str, InputError]] = field(default_factory=list)
    order: list[tuple[bool, int]] = field(default_factory=list)

    def __repr__(self) -> str:
        shape = None if self.images is None else self.images.shape
        return f"Batch({len(self.names)} images {shape}, {len(self.failures)} failures)"


@dataclass(frozen=True)
class _Source:
    kind: str  # "image" | "array" | "idx" | "error"
    path: str
    error: InputError | None = None


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[_Source]:
    """Expand files, folders (recursive, sorted) and glob patterns into sources, in a stable order."""
    for raw in paths:
        text = os.fspath(raw)
        if not os.path.exists(text) and glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                yield _Source("error", text, PathError(f"{text}: pattern matches no files"))
            for m in matches:
                yield from expand_paths([m])
            continue
        p = Path(text)
        if p.is_dir():
            found = False
            for sub in _walk(p):
                found = True
                yield sub
            if not found:
                yield _Source("error", text, PathError(
                    f"{text}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)}), arrays or IDX files"))
        elif not p.exists():
            yield _Source("error", text, PathError(f"{text}: no such file or folder (or a broken or looping symlink)"))
        elif not p.is_file():
            yield _Source("error", text, PathError(_NOT_REGULAR.format(text)))
        else:  # a file named on the command line is read as an image unless it is an array or IDX file
            yield _Source(_kind(text) or "image", text)


_NOT_REGULAR = "{}: not a regular file (a FIFO, socket or device); skipped without reading it"


def _walk(root: Path) -> Iterator[_Source]:
    """Files under ``root`` in sorted order, following symlinks; each folder is entered once (loops end)."""
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            yield _Source("error", folder, PathError(f"{folder}: cannot list folder ({err.strerror})"))
            continue
        subfolders = []
        for entry in entries:
            name, full = entry.name, entry.path
            kind = _kind(name)
            try:
                is_dir = entry.is_dir()  # follows symlinks; the type comes from the listing for plain entries
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(full)
            elif not kind:
                continue
            elif entry.is_symlink() and not os.path.exists(full):
                yield _Source("error", full, PathError(f"{full}: broken or looping symlink"))
            elif not entry.is_file():  # never open a FIFO, socket or device: reading one can block forever
                yield _Source("error", full, PathError(_NOT_REGULAR.format(full)))
            else:
                yield _Source(kind, full)
        stack.extend(reversed(subfolders))


def _array_items(source: _Source, contract: InputContract) -> Iterator[tuple[str, NDArray[Any] | InputError]]:
    try:
        arr = read_idx(source.path) if source.kind == "idx" else read_array_file(source.path)
        batch = contract.to_nchw(arr)
    except InputError as exc:
        yield source.path, exc
        return
    for i in range(batch.shape[0]):
        yield f"{source.path}[{i}]", batch[i]


def iter_batches(paths: Sequence[str | os.PathLike[str]], contract: InputContract, batch_size: int = 256,
                 workers: int | None = None, *, strict_size: bool = False,
                 strict_channels: bool = False) -> Iterator[Batch]:
    """Stream prepared batches from paths; image files are decoded by ``workers`` threads (default 1).

    Items keep their input order. Memory stays bounded by about two batches, whatever the number of files.
    Image files of another size are resized and of another channel count converted (``Batch.warnings`` says so
    per image) unless ``strict_size`` / ``strict_channels`` turn them into failures.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # One decode thread by default: it overlaps with onnxruntime (which releases the GIL); more threads only
    # pay off for large images, where Pillow's decoders release the GIL too (benchmarks/speed.py).
    workers = workers or 1

    def items() -> Iterator[tuple[str, Any]]:
        # (name, path-to-decode | array | error) in order
        for source in expand_paths(paths):
            if source.kind == "error":
                yield source.path, source.error or InputError(f"{source.path}: cannot be read")
            elif source.kind == "image":
                yield source.path, source.path
            else:
                yield from _array_items(source, contract)

    def decode(item: tuple[str, Any]) -> tuple[str, Any, str]:
        return _decode(item, contract, strict_size, strict_channels)

    def chunks(it: Iterable[tuple[str, Any]]) -> Iterator[list[tuple[str, Any]]]:
        chunk: list[tuple[str, Any]] = []
        for item in it:
            chunk.append(item)
            if len(chunk) == batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def decode_slice(part: list[tuple[str, Any]]) -> list[tuple[str, Any, str]]:
        return [decode(item) for item in part]

    # Each batch is split into one slice per worker (a task per file costs more than decoding a small PNG);
    # the next batch decodes while the caller runs the model on the current one.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgevae-decode") as pool:
        pending: list[Any] | None = None
        for chunk in chunks(items()):
            step = max(1, -(-len(chunk) // workers))
            submitted = [pool.submit(decode_slice, chunk[i:i + step]) for i in range(0, len(chunk), step)]
            if pending is not None:
                yield _assemble([d for f in pending for d in f.result()], contract)
            pending = submitted
        if pending is not None:
            yield _assemble([d for f in pending for d in f.result()], contract)


def _decode(item: tuple[str, Any], contract: InputContract, strict_size: bool,
            strict_channels: bool) -> tuple[str, Any, str]:
    """(name, uint8 image | array row | InputError, what was converted) for one item."""
    name, payload = item
    if isinstance(payload, str):
        notes: list[str] = []
        try:
            image = contract.read_image(payload, strict_size=strict_size, strict_channels=strict_channels, notes=notes)
            return name, image, "; ".join(notes)
        except InputError as exc:
            return name, exc, ""
    return name, payload, ""


def _assemble(decoded: list[tuple[str, Any, str]], contract: InputContract) -> Batch:
    batch = Batch()
    rows: list[NDArray[Any]] = []
    for name, payload, note in decoded:
        if not isinstance(payload, InputError) and payload.dtype != np.uint8:
            try:
                payload = contract.prepare(payload[None])[0]
            except InputError as exc:  # name the file and row: "x.npy[12]: 1 image(s) contain NaN or Inf"
                payload = type(exc)(f"{name}: {exc}")
        if isinstance(payload, InputError):
            batch.order.append((True, len(batch.failures)))
            batch.failures.append((name, payload))
            continue
        batch.order.append((False, len(rows)))
        rows.append(payload)
        batch.names.append(name)
        batch.warnings.append(note)
    if rows:
        if all(row.dtype == np.uint8 for row in rows):
            batch.images = uint8_to_unit(np.stack(rows))
        else:
            out = np.empty((len(rows),) + contract.shape, dtype=np.float32)
            for i, row in enumerate(rows):
                out[i] = uint8_to_unit(row) if row.dtype == np.uint8 else row
            batch.images = out
    return batch
