"""Strict mypy over the package as it is imported: edgevae, edgevae.runtime, edgevae.export and the CLI.

The repository maps one import package onto several folders (``_edgevae/`` is ``edgevae``, ``runtime/`` is
``edgevae.runtime``, ...), which mypy cannot follow through an editable install. This script mirrors that
mapping as a tree of symbolic links under ``.venv/typecheck/`` and runs ``mypy`` on it with the settings in
pyproject.toml; errors name the linked files, whose paths mirror the repository's. Usage:
``python scripts/typecheck.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def link_tree(target: Path) -> Path:
    """Lay out the import package as links: target/edgevae/{*.py, runtime/, training/, export/}."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        package_dir = tomllib.load(handle)["tool"]["setuptools"]["package-dir"]
    if target.exists():
        shutil.rmtree(target)
    for package, folder in sorted(package_dir.items()):
        dest = target.joinpath(*package.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).iterdir():
            if source.suffix in (".py", ".typed") and source.is_file():
                os.symlink(source, dest / source.name)
    return target


def main() -> int:
    tree = link_tree(ROOT / ".venv" / "typecheck")
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(ROOT / ".venv" / "mypy-cache"), "-p", "edgevae.runtime", "-p", "edgevae.export",
               "-p", "edgevae.cli", "-m", "edgevae.estimator", "-m", "edgevae"]
    return subprocess.call(command, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
