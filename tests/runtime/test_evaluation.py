"""Detection metrics in numpy against scikit-learn, and `edgevae evaluate` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgevae.cli import main
from edgevae.runtime.evaluation import average_precision, evaluate_scores, fpr_at_tpr

pytestmark = pytest.mark.runtime


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 8)), min_size=2, max_size=80))
def test_metrics_match_scikit_learn_with_ties(pairs: list[tuple[bool, int]]) -> None:
    from sklearn.metrics import average_precision_score, roc_curve

    y = np.array([p[0] for p in pairs], dtype=int)
    s = np.array([p[1] for p in pairs], dtype=float)
    if y.min() == y.max():
        return
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert fpr_at_tpr(y, s, 0.95) == pytest.approx(fpr[np.searchsorted(tpr, 0.95 - 1e-12, side="left")], abs=1e-12)


def test_confusion_counts_at_the_threshold() -> None:
    e = evaluate_scores("kl", np.array([0.1, 0.2, 0.9]), np.array([0.5, 1.0]), threshold=0.4)
    assert (e.true_positives, e.false_positives, e.true_negatives, e.false_negatives) == (2, 1, 2, 0)
    assert e.auroc == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="normal and anomalous"):
        evaluate_scores("kl", np.array([]), np.array([1.0]), 0.5)


def test_evaluate_command(bundle: Path, sample_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["evaluate", "-m", str(bundle), "--normal", str(sample_folder / "normal"),
            "--anomalous", str(sample_folder / "outliers")]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "AUROC" in r.output and "smooth_recon" in r.output and "(normal 10, anomalous 6)" in r.output
    r = runner.invoke(main, [*args, "--method", "kl", "--method", "elbo", "-o", str(tmp_path / "e.json")])
    rows = json.loads((tmp_path / "e.json").read_text())
    assert r.exit_code == 0 and [row["method"] for row in rows] == ["kl", "elbo"]
    for row in rows:
        assert row["true_positives"] + row["false_negatives"] == 6 and row["false_positives"] + row["true_negatives"] == 10
        assert 0.0 <= row["auroc"] <= 1.0
    r = runner.invoke(main, [*args, "-o", str(tmp_path / "e.csv")])
    assert r.exit_code == 0 and (tmp_path / "e.csv").read_text().startswith("method,n_normal,n_anomalous,auroc")
