"""The ``edgevae`` command line: thin wrappers over the Python API, one module per command (or small family).

Each command's module is imported only when that command runs (:class:`LazyGroup`), so ``edgevae score`` starts
fast and works without torch; training and export import their extras inside their commands. The shared options,
the input loop and the error handling are in ``common.py``.

Exit codes: 0 success; 1 error (bad bundle, failed export, ...); 2 usage error, or at least one input
could not be read (every other input is still scored and printed); 3 ``--fail-on-outlier`` was given and at
least one input was flagged as an outlier (2 wins when both apply).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any
import click

from edgevae import __version__

# Seconds between progress lines of `score` when stderr is not a terminal (logs, CI, pipes).
PROGRESS_SECONDS = 10.0

# command -> module (in this package) that defines it, in the order `edgevae --help` lists them
COMMANDS: dict[str, str] = {
    "train": "train", "export": "export", "score": "score", "evaluate": "evaluate", "report": "report",
    "calibrate": "calibrate", "encode": "latents", "generate": "latents", "reconstruct": "latents", "info": "info",
    "keygen": "keys", "sign": "keys", "samples": "samples",
}


class _Commands(dict[str, click.Command]):
    """Commands by name, each imported from its module on first lookup."""

    def __missing__(self, name: str) -> click.Command:
        if name not in COMMANDS:
            raise KeyError(name)
        command: click.Command = getattr(importlib.import_module(f".{COMMANDS[name]}", __name__), name)
        self[name] = command
        return command


class LazyGroup(click.Group):
    """A group whose commands are imported from their modules on first use (``group.commands[name]`` too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        try:
            return self.commands[cmd_name]
        except KeyError:
            return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="edgevae")
def main() -> None:
    """edgevae: variational autoencoders for outlier detection and generation on the edge.

    Train on normal images, export a bundle (two ONNX graphs + manifest), then score, encode,
    reconstruct and generate anywhere with numpy + onnxruntime.
    """
    # Very large images are refused with edgevae's own per-file message (runtime.contract.MAX_IMAGE_PIXELS);
    # Pillow's warning about them would only repeat it as a Python warning. The command line owns its process,
    # so it may silence that one warning (the library leaves its host application's filters alone).
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", module=r"PIL\.")


__all__ = ["COMMANDS", "LazyGroup", "PROGRESS_SECONDS", "main"]
