"""The scale benchmark runs end to end at smoke size (Ray, Spark, torchrun); timings are written, never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.scale, pytest.mark.slow]


def test_scale_benchmark_smoke(tmp_path: Path, benchmark_script, need_engine) -> None:  # type: ignore[no-untyped-def]
    need_engine("ray")
    need_engine("pyspark", java=True)
    module = benchmark_script("scale")
    out_json, out_md = tmp_path / "s.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    report = json.loads(out_json.read_text())
    assert report["images"] == 1000 and report["plain_loop"]["images_per_s"] > 0
    for engine in ("ray", "spark"):
        assert {"1", "2"} <= set(report[engine]["workers"])
        assert report[engine]["speedup_2_vs_1"] > 0
    assert set(report["ddp"]) == {"256"}  # the smoke run measures one global batch
    for per_batch in report["ddp"].values():
        runs = per_batch["runs"]
        assert len(runs) == 3
        # the same seed and global batch: every run follows the same validation curve (to rounding)
        curves = [r["val_neg_elbo"] for r in runs.values()]
        assert all(c == pytest.approx(curves[0], abs=1e-3) for c in curves)
    assert "<!-- scale:start -->" in out_md.read_text()
