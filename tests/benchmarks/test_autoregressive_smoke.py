"""The autoregressive-decoder design experiment runs end to end at smoke size, and its masks are causal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.training, pytest.mark.slow]


def test_masked_convolutions_see_only_earlier_pixels(benchmark_script) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    module = benchmark_script("autoregressive")
    from edgevae.training import ModelConfig

    model = module.HeadVAE(ModelConfig(latent_dim=4, widths=(8, 16), hidden=32),
                           module.Head(kernel=7, layers=2, channels=4)).eval()
    t = torch.zeros(1, 4)
    x = torch.rand(1, 1, 28, 28)
    base = model.logits(t, x)
    changed = x.clone()
    changed[0, 0, 14, 14] = 1.0 - changed[0, 0, 14, 14]  # perturb one pixel
    diff = (model.logits(t, changed) - base).abs()[0, 0] > 0
    flat = diff.flatten().nonzero().flatten().tolist()
    assert flat and min(flat) > 14 * 28 + 14  # only later pixels (in raster order) may change


def test_autoregressive_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    module = benchmark_script("autoregressive")
    out_json, out_md = tmp_path / "a.json", tmp_path / "benchmarks.md"
    module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    report = json.loads(out_json.read_text())
    assert len(report["heads"]) == 4
    for row in report["heads"].values():
        assert math.isfinite(row["test_neg_elbo"]) and row["test_neg_elbo"] > 0 and row["test_kl"] >= 0
        assert 0.0 <= row["one_class"]["3"]["elbo_auroc"] <= 1.0
    assert "| factorized (shipped) |" in out_md.read_text()
