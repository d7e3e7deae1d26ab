"""The embedded-scorer benchmark runs end to end at smoke size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import EMBED, need

pytestmark = [pytest.mark.embed, pytest.mark.slow]


def test_embed_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    need(all(shutil.which(t) for t in ("gcc", "make", "node")), "gcc, make or node is not installed")
    need((EMBED / "web" / "node_modules" / "onnxruntime-web").is_dir(), "embed/web has no node_modules: make embed-setup")
    need(bool(shutil.which("chromium") or shutil.which("chromium-headless-shell")), "no chromium: apt-get install chromium")
    module = benchmark_script("embed")
    out_json, out_md = tmp_path / "e.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    report = json.loads(out_json.read_text())
    assert report["c_kl_us"] > 0 and report["python_raw_kl_us"] > 0 and report["cold_start_s"]["c"] > 0
    assert 0 < report["page"]["kl"]["median_ms"] < 10_000
    assert "| cold start, one image: C binary" in out_md.read_text()
