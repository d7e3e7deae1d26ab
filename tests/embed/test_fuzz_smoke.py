"""A short libFuzzer run of the C readers under the sanitizers (benchmarks/fuzz.py --smoke)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import need

pytestmark = [pytest.mark.embed, pytest.mark.slow]


def test_fuzz_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    need(bool(shutil.which("clang")) and bool(shutil.which("make")), "clang is not installed (apt-get install clang)")
    module = benchmark_script("fuzz")
    out_json, out_md = tmp_path / "f.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])  # exits 1 on a crash
    report = json.loads(out_json.read_text())
    assert [r["harness"] for r in report["harnesses"]] == ["fuzz_input", "fuzz_json", "fuzz_signature", "fuzz_manifest"]
    for r in report["harnesses"]:
        assert r["executed"] >= 20_000 and r["coverage_edges"] > 20 and not r["crashes"], r
    assert "| fuzz_input |" in out_md.read_text()
