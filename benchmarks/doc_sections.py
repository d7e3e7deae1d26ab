"""What the benchmark scripts share: their common options, and replacing one marked section of
docs/benchmarks.md while keeping the rest of the file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def benchmark_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: --smoke, --json (results file), --markdown (docs file)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / f"{name}.json"))
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    return parser


def save_report(name: str, report: dict[str, Any], markdown: Callable[[dict[str, Any]], str], args: argparse.Namespace,
                started: float) -> None:
    """Stamp ``report`` (date, machine, seconds since ``started``, smoke), write it as JSON to ``args.json`` and
    ``markdown(report)`` into its marked part of ``args.markdown``, and print that section."""
    report.update(date=time.strftime("%Y-%m-%d"), smoke=args.smoke, seconds=time.perf_counter() - started,
                  machine=f"{platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    section = markdown(report)
    write_section(name, section, Path(args.markdown))
    print(section)


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
