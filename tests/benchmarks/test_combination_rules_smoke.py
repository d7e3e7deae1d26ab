"""The combination-rule experiment runs end to end at smoke size (one digit, a tiny model through the command line)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.export, pytest.mark.slow]


def test_combination_rules_smoke(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "combination_rules.py"
    spec = importlib.util.spec_from_file_location("combination_rules_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out_json, out_md = tmp_path / "r.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--digits", "3", "--tasks", "", "--json", str(out_json), "--markdown", str(out_md)])
    row = json.loads(out_json.read_text())["tasks"]["digit_3"]["other_digits"]
    assert set(row) == set(module.RULES) and all(0.0 <= v <= 1.0 for v in row.values())
    assert "| digit_3 | other_digits |" in out_md.read_text()
