"""What every command shares: error handling, the runtime options, the input loop, output files."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Sequence

import click

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from edgevae.runtime import Manifest, Model
    from edgevae.runtime.contract import InputContract
    from edgevae.runtime.inputs import Batch

EXIT_ERROR, EXIT_INPUT, EXIT_OUTLIER = 1, 2, 3
# Inputs per batch of the commands that read inputs (--batch-size).
BATCH_SIZE = 256


class InputProblem(click.ClickException):
    """A user-input problem: exit status 2."""

    exit_code = EXIT_INPUT


def need_training(command: str) -> None:
    """Refuse, with the install line, a command that needs the training extra where it is missing."""
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException(
            f"edgevae {command} needs the training extra: pip install 'edgevae[train]'"
        ) from None


@contextmanager
def errors() -> Iterator[None]:
    """Turn the library's exceptions into one-line messages with the documented exit codes."""
    from edgevae.runtime.errors import EdgeVAEError, InputError

    try:
        yield
    except InputError as exc:
        raise InputProblem(str(exc)) from None
    except (EdgeVAEError, ValueError, OSError) as exc:  # ValueError: a config's own validation
        raise click.ClickException(str(exc)) from None


TRUSTED_KEY_HELP = ("Load the bundle only if it is signed by this Ed25519 public key (repeatable; default: the keys "
                    "in $EDGEVAE_TRUSTED_KEYS, if set).")


@dataclass(frozen=True)
class Runtime:
    """The options every runtime command shares: which bundle, and how to load it."""

    bundle: str
    providers: str
    threads: int | None
    strict: bool
    variant: str | None
    trusted_keys: tuple[str, ...]

    def load(self, threads: int | None = None, slice_workers: int | None = None,
             manifest: Manifest | None = None) -> Model:
        from edgevae.runtime import load

        with errors():
            return load(self.bundle, self.providers, threads=threads if threads is not None else self.threads,
                        strict=self.strict, variant=self.variant, slice_workers=slice_workers,
                        trusted_keys=self.trusted_keys or None,  # none given: $EDGEVAE_TRUSTED_KEYS applies
                        manifest=manifest)

    def load_streaming(self, paths: Sequence[str], method: str | None, decode_threads: int) -> Model:
        """Load for a command that decodes input files while the graphs run (the runtime's thread plan).

        The manifest is read once: its default method (when ``method`` is None) decides the thread plan before
        the sessions are built, and the model loaded with that plan carries the same manifest on.
        """
        from edgevae.runtime import read_manifest, thread_plan

        manifest = None
        with errors():
            if method is None:
                manifest = read_manifest(self.bundle)
                method = manifest.default_method
            plan = thread_plan(paths, method, threads=self.threads, decode_threads=decode_threads)
        return self.load(plan.threads, plan.slice_workers, manifest)


def runtime_options(func: Callable[..., None]) -> Callable[..., None]:
    """Add the shared runtime options; the command receives them as one ``runtime`` argument."""

    @functools.wraps(func)
    def command(*args: Any, bundle: str, providers: str, threads: int | None, strict_providers: bool,
                variant: str | None, trusted_key: tuple[str, ...], **kwargs: Any) -> None:
        func(*args, runtime=Runtime(bundle, providers, threads, strict_providers, variant, trusted_key), **kwargs)

    decorators = [
        click.option("-m", "--model", "bundle", required=True, type=click.Path(),
                     help="Bundle directory written by 'edgevae export'."),
        click.option("--providers", default="auto", show_default=True,
                     help="Execution providers: auto, or a comma-separated list (cpu, cuda, tensorrt, openvino, ...)."),
        click.option("--threads", type=click.IntRange(min=0), default=None,
                     help="onnxruntime intra-op threads per graph (default: one per core; when image files are "
                          "decoded, the cores the decode threads leave free)."),
        click.option("--strict-providers", is_flag=True, help="Fail if a requested execution provider is not active."),
        click.option("--variant", default=None,
                     help="Edge variant of the bundle's graphs: int8, fp16, ort, int8-ort, ... (default fp32)."),
        click.option("--trusted-key", multiple=True, type=click.Path(dir_okay=False), help=TRUSTED_KEY_HELP),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def batch_size_option(func: Callable[..., None]) -> Callable[..., None]:
    """``--batch-size``, one default for every command."""
    return click.option("--batch-size", type=click.IntRange(min=1), default=BATCH_SIZE, show_default=True)(func)


def method_choice() -> "click.Choice[str]":
    """The score methods of the registry, for ``--method``."""
    from edgevae.runtime.methods import SCORE_METHODS

    return click.Choice(SCORE_METHODS)


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Show the library's calibration warnings as ``warning: ...`` lines on stderr; others pass as they are."""
    from edgevae.runtime.errors import CalibrationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, CalibrationWarning):
                    click.echo(f"warning: {w.message}", err=True)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def given(**values: Any) -> dict[str, Any]:
    """The options the user gave (click passes None for the others): the config dataclasses apply the defaults."""
    return {k: v for k, v in values.items() if v is not None}


@dataclass
class Inputs:
    """The input loop every command shares: read PATHS in batches, report each input that cannot be read (on
    stderr, ``error: ...``), count them, and end with exit status 2 when any failed."""

    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def batches(self, paths: Sequence[str], contract: InputContract, *, echo: bool = True,
                **options: Any) -> Iterator[Batch]:
        """``iter_batches`` over ``paths``; each batch's failures are recorded (and, with ``echo``, printed)."""
        from edgevae.runtime.inputs import iter_batches

        for batch in iter_batches(list(paths), contract, **options):
            for name, err in batch.failures:
                self.failures.append((name, str(err)))
                if echo:
                    click.echo(f"error: {err}", err=True)
            yield batch

    def collect(self, paths: Sequence[str], contract: InputContract, what: str, limit: int | None = None,
                **options: Any) -> tuple[list[str], NDArray[Any]]:
        """Every readable input (at most ``limit``) as names and one array.

        Raises:
            InputProblem: no input could be read.
        """
        import numpy as np

        names: list[str] = []
        images: list[Any] = []
        for batch in self.batches(paths, contract, **options):
            if batch.images is not None:
                images.append(batch.images)
                names += batch.names
            if limit is not None and len(names) >= limit:
                break
        if not images:
            raise InputProblem(f"no input could be read; nothing to {what}")
        return names[:limit], np.concatenate(images)[:limit]

    def whole_images(self, paths: Sequence[str], contract: InputContract, tiling: Any, *,
                     echo: bool = True) -> Iterator[tuple[str, NDArray[Any] | None, str | None]]:
        """A tiled bundle's inputs, one at a time: (name, image at its own size shrunk by ``tiling.downscale``,
        None) or (name, None, error) for an input that cannot be read, is smaller than one tile or (a fixed
        camera) is not a frame of its size; each failure is
        recorded (and, with ``echo``, printed)."""
        from edgevae.runtime.errors import InputError
        from edgevae.runtime.inputs import expand_paths

        for item in expand_paths(list(paths)):
            name = os.fspath(item.path)
            try:
                if item.kind != "image":
                    raise InputError(f"{name}: {item.error or 'a tiled bundle reads image files'}")
                image = contract.read_native(name, tiling.downscale)
                if min(image.shape[1:]) < min(tiling.tile):
                    raise InputError(f"{name}: {image.shape[1]}x{image.shape[2]} (after downscale "
                                     f"{tiling.downscale}) is smaller than one {tiling.tile[0]}x{tiling.tile[1]} tile")
                try:  # a fixed camera scores frames of its size only
                    tiling.check_frame(image.shape[1], image.shape[2])
                except InputError as exc:
                    raise InputError(f"{name}: {exc}") from exc
            except InputError as exc:
                self.failures.append((name, str(exc)))
                if echo:
                    click.echo(f"error: {exc}", err=True)
                yield name, None, str(exc)
                continue
            yield name, image, None

    def exit_if_failed(self) -> None:
        if self.failures:
            sys.exit(EXIT_INPUT)


def writable(path: str | None, option: str) -> None:
    """A usage error, before any work is done, when ``path``'s folder does not exist or is not writable."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise click.BadParameter(f"cannot write {path}: the folder {folder} does not exist (create it first)",
                                 param_hint=option)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"cannot write {path}: the folder {folder} is not writable", param_hint=option)


def format_for(fmt: str | None, output: str | None, by_suffix: dict[str, str]) -> str:
    """``--format`` as given, else from the extension of ``-o``, else ``table``."""
    return fmt or by_suffix.get(os.path.splitext(output or "")[1].lower(), "table")


@contextmanager
def open_output(path: str | None) -> Iterator[IO[str]]:
    """stdout, or a file written to a temporary name and renamed into place when complete."""
    if path is None:
        yield sys.stdout
        return
    from edgevae.runtime.atomic import atomic_open

    with atomic_open(path, "w") as handle:
        yield handle


def save_numpy(path: str, array: Any = None, **arrays: Any) -> None:
    """Save one array as .npy, or named arrays as .npz, atomically."""
    import numpy as np

    from edgevae.runtime.atomic import atomic_open

    with atomic_open(path, "wb", suffix=os.path.splitext(path)[1]) as handle:
        if array is not None:
            np.save(handle, array)
        else:
            np.savez(handle, **arrays)
