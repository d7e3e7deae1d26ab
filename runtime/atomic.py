"""Every file and folder edgevae writes goes through here: written under a temporary name beside the target,
synced, and renamed into place when complete, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files get the permissions an ordinary open() would give them (0666 less the umask), not mkstemp's 0600.
_FILE_MODE = 0o666 & ~_process_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success it is synced and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=suffix, dir=folder)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", *, suffix: str = ".tmp") -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``"w"`` text, ``"wb"`` bytes) that becomes ``path`` on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, suffix=suffix) as tmp, open(tmp, mode, newline="" if mode == "w" else None) as handle:
        yield handle


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write_synced(tmp, data)


def write_synced(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) and sync it to disk, in place (for files inside an :func:`atomic_folder`)."""
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def atomic_folder(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it is renamed to ``path``.

    On an exception the temporary folder is removed and ``path`` is left as it was. With ``replace``, an
    existing ``path`` is swapped out for the new folder and then removed.

    Raises:
        FileExistsError: ``path`` exists (or appeared meanwhile) and ``replace`` is not set.
    """
    target = Path(path)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists; choose another folder or replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        _move_into_place(tmp, target, replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, target: Path, replace: bool) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    if not replace:
        raise FileExistsError(f"{target} appeared while it was being written; replace it or choose another folder")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
