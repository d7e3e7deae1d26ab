"""The calibration benchmark runs end to end at smoke size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.training, pytest.mark.export, pytest.mark.slow]


def test_calibration_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    module = benchmark_script("calibration")
    out_json, out_md = tmp_path / "c.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    report = json.loads(out_json.read_text())
    n_cal = {name: rows[0]["n_calibration"] for name, rows in report["rows"].items()}
    assert sorted(n_cal.values()) == [40, 100]  # the previous tenth, and the automatic split of 400 images
    for rows in report["rows"].values():
        assert rows[0]["min_fpr"] == pytest.approx(1 / (rows[0]["n_calibration"] + 1))
        assert all(0.0 <= v <= 1.0 for v in rows[0]["fpr_at_threshold"].values())
    assert "| auto (100 images) | smooth_recon |" in out_md.read_text()
