"""The speed benchmark runs end to end at smoke size; timings are written, never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.export, pytest.mark.slow]


def test_speed_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    module = benchmark_script("speed")
    out_json, out_md = tmp_path / "s.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    report = json.loads(out_json.read_text())
    assert set(report["paths"]) == {"onnxruntime (raw)", "edgevae.runtime", "PyTorch eager"}
    for timings in report["paths"].values():
        assert set(timings) == {"kl", "elbo_k1", "recon", "generate"}
        assert all(t["batch256_per_s"] > 0 for t in timings.values())
    assert set(report["variants"]) == {"fp32", "int8", "fp16"}
    assert report["variants"]["int8"]["bytes"] < report["variants"]["fp32"]["bytes"]
    assert report["streaming"]["images"] == 2000 and len(report["streaming"]["rss_mb_at"]) == 3
    assert report["flops"]["encoder_flops_per_image"] > 0
    by_method = report["png_by_method"]["methods"]
    assert set(by_method) == {"kl", "elbo", "recon", "rel_recon", "smooth_recon", "iwae", "local", "too_likely", "defect",
                            "combined"}
    assert all(v[k] > 0 for v in by_method.values() for k in ("compute_bound_per_s", "in_process_per_s", "cli_per_s"))
    assert set(report["batch1_overhead"]) == set(by_method)
    assert "<!-- speed:start -->" in out_md.read_text()
