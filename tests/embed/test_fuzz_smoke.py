"""A short libFuzzer run of the C readers under the sanitizers (benchmarks/fuzz.py --smoke)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, need

pytestmark = [pytest.mark.embed, pytest.mark.slow]


def test_fuzz_smoke(tmp_path: Path) -> None:
    need(bool(shutil.which("clang")) and bool(shutil.which("make")), "clang is not installed (apt-get install clang)")
    spec = importlib.util.spec_from_file_location("fuzz_benchmark", ROOT / "benchmarks" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out_json, out_md = tmp_path / "f.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])  # exits 1 on a crash
    report = json.loads(out_json.read_text())
    assert [r["harness"] for r in report["harnesses"]] == ["fuzz_input", "fuzz_json", "fuzz_signature"]
    for r in report["harnesses"]:
        assert r["executed"] >= 20_000 and r["coverage_edges"] > 20 and not r["crashes"], r
    assert "| fuzz_input |" in out_md.read_text()
