"""The defect-head seed benchmark runs end to end at smoke size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.training, pytest.mark.slow]


def test_defect_seeds_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    module = benchmark_script("defect_seeds")
    out = tmp_path / "seeds.json"
    module.main(["--smoke", "--surfaces", "gravel", "--seeds", "0,1", "--labelled", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["labelled_per_kind"] == 1
    row = report["gravel"]
    assert set(row) == {"single 0", "single 1", "seconds 0", "seconds 1", "mean 0+1"}
    assert all(len(row[k]) == 3 and all(0.0 <= a <= 1.0 for a in row[k]) for k in ("single 0", "single 1", "mean 0+1"))
