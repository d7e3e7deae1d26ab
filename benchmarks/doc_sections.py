"""Replace one marked section of docs/benchmarks.md, keeping the rest of the file (shared by the benchmarks)."""

from __future__ import annotations

from pathlib import Path


def write_section(name: str, section: str, path: Path) -> None:
    """Put ``section`` between ``<!-- name:start -->`` and ``<!-- name:end -->``, appending the markers if absent."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = f"{start}\n{section}{end}\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
