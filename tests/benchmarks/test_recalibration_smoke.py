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
    row = json.loads(out_json.read_text())["rows"][0]
    for mode in ("auto", "replace"):
        assert set(row[mode]["kept_100"]) == set(row["default_flagged"]) and "other digits" in row[mode]["kept_100"]
        assert row[mode]["decision"] in ("pooled", "replaced")
        assert row[mode]["folds"]["images"] == 2 * (row[mode]["folds"]["images"] // 2) > 0
        assert row[mode]["ties_100"]["distinct_scores"] <= row[mode]["ties_100"]["beyond"]
    assert row["replace"]["decision"] == "replaced" and row["replace"]["ks_min_p"] is None  # replace tests nothing
    assert row["seed"] == 0 and 0.0 <= row["auto"]["ks_min_p"] <= 1.0  # auto tested the stored images' scores
    assert set(row["darker"]) == {"auto", "replace", "pool"} and row["darker"]["pool"]["decisions"] == ["pooled"] * 2
    assert "| other digits |" in out_md.read_text() and "| darker | auto |" in out_md.read_text()
