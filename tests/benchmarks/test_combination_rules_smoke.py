"""The combination-rule experiment runs end to end at smoke size (one digit, a tiny model through the command line)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

pytestmark = [pytest.mark.export, pytest.mark.slow]


def test_combination_rules_smoke(tmp_path: Path, benchmark_script: Callable[[str], ModuleType]) -> None:
    pytest.importorskip("skimage")
    module = benchmark_script("combination_rules")
    out_json, out_md = tmp_path / "r.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--digits", "3", "--tasks", "", "--json", str(out_json), "--markdown", str(out_md)])
    row = json.loads(out_json.read_text())["tasks"]["digit_3"]["other_digits"]
    assert set(row) == set(module.RULES) and all(0.0 <= v <= 1.0 for v in row.values())
    assert "| digit_3 | other_digits |" in out_md.read_text()
