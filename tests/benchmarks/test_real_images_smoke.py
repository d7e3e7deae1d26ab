"""The real-image benchmark runs end to end at smoke size (tiny models through the command line)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.export, pytest.mark.slow]


def test_real_images_benchmark_smoke(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "real_images.py"
    spec = importlib.util.spec_from_file_location("real_images_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    out_json, out_md = tmp_path / "r.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    saved = json.loads(out_json.read_text())
    inspection = saved["tasks"]["inspection"]
    assert set(inspection["auroc"]) >= {"foreign_object", "scratch", "dead_line", "over_exposed", "other_scene"}
    for row in inspection["auroc"].values():
        assert {"combined", "local", "knn_pixels", "one_class_svm", "plain_combined"} <= set(row)
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert 0.0 <= inspection["pixel_auroc"]["scratch"] <= 1.0
    assert inspection["cost"]["bundle_mb"] > 0 and inspection["cost"]["export_peak_mb"] > 0
    assert saved["faces"] and saved["large"]["size"] == 64
    assert "## Real images" in out_md.read_text()
    # the texture tasks (trained on only in full runs): normal patches and every defect kind, masks where local
    grass = module.texture("grass", 32, 8, 6)
    assert grass.train.shape == (8, 32, 32, 1) and grass.normal.shape == (6, 32, 32, 1)
    assert {"spot", "scratch", "discoloured", "other_texture"} <= set(grass.anomalies)
    assert all(a.shape[1:] == (32, 32, 1) and a.dtype == np.uint8 for a in grass.anomalies.values())
    assert set(grass.local_kinds) <= set(grass.masks) and grass.masks["scratch"].any()
