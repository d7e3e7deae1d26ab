"""The training-recipe benchmark runs end to end at smoke size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.training, pytest.mark.slow]


def test_recipes_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    module = benchmark_script("recipes")
    out_json, out_md = tmp_path / "r.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["tiny", "tiny, shift 1 px"]
    assert all(math.isfinite(r["test_neg_elbo"]) and r["test_neg_elbo"] > 0 for r in rows)
    assert "| tiny, shift 1 px |" in out_md.read_text()
