"""The recalibration benchmark runs end to end at smoke size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.training, pytest.mark.export, pytest.mark.slow]


def test_recalibration_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    module = benchmark_script("recalibration")
    out_json, out_md = tmp_path / "r.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    rows = json.loads(out_json.read_text())["rows"][0]
    assert len(rows) == 3  # the digit and two tail rules
    for rule, row in ((k, v) for k, v in rows.items() if k != "digit"):
        assert set(row["kept_100"]) == set(row["default_flagged"]) and "other digits" in row["kept_100"], rule
        assert all(0.0 <= v <= 1.0 for v in row["kept_200"].values())
        assert row["ties_100"]["distinct_scores"] <= row["ties_100"]["beyond"]
    assert "| other digits |" in out_md.read_text()
