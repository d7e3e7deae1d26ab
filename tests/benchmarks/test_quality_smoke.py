"""The quality benchmark runs end to end at smoke size (tiny models, two digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgevae.runtime.options import SCORE_METHODS

pytestmark = [pytest.mark.export, pytest.mark.slow]


def test_quality_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:  # type: ignore[no-untyped-def]
    module = benchmark_script("quality")
    out_json, out_md = tmp_path / "q.json", tmp_path / "benchmarks.md"
    out_md.write_text("# Benchmarks\n\nkept text\n")
    report = module.main(["--smoke", "--json", str(out_json), "--markdown", str(out_md)])
    saved = json.loads(out_json.read_text())
    assert saved["smoke"] is True and [r["digit"] for r in saved["one_class"]] == [0, 1]
    for row in report["one_class"]:
        assert set(row["methods"]) == set(SCORE_METHODS)
        assert set(row["baselines"]) == {"isolation_forest", "one_class_svm", "plain_ae_combined", "plain_ae_recon"}
        for metrics in list(row["methods"].values()) + list(row["baselines"].values()):
            assert 0.0 <= metrics["auroc"] <= 1.0 and 0.0 <= metrics["fpr_at_95tpr"] <= 1.0
        # a tiny model's int8 variant may rank unlike fp32: export's gate refuses it, and the row says so
        assert set(row.get("int8_auroc", row["methods"])) == set(row["methods"])
        assert ("int8_auroc" in row) != ("int8_refused" in row)
        assert "int8_auroc" in row or "ranks held-out images unlike fp32" in row["int8_refused"]
    measured = [r for r in report["one_class"] if "int8_auroc" in r]
    assert measured, "export refused the int8 variant of every smoke model"
    assert set(report["int8_auroc"]) == set(SCORE_METHODS)
    for m, v in report["int8_auroc"].items():  # the change is int8's AUROC minus fp32's, per measured digit
        changes = [r["int8_auroc"][m] - r["methods"][m]["auroc"] for r in measured]
        assert v["mean_change"] == pytest.approx(sum(changes) / len(changes)) and v["largest_change"] in changes
    assert set(report["int8_refused"]) == {str(r["digit"]) for r in report["one_class"] if "int8_refused" in r}
    assert "rendered_letters" in report["all_digits"]["ood"]
    text = out_md.read_text()
    assert "kept text" in text and "| **mean** |" in text and "| int8 mean AUROC |" in text
    # run again (one digit, the optional parts left out): the section is replaced, not added
    again = module.main(["--smoke", "--digits", "1", "--no-all-digits", "--no-baselines", "--json", str(out_json),
                         "--markdown", str(out_md)])
    assert [r["digit"] for r in again["one_class"]] == [1] and again["all_digits"] is None
    assert out_md.read_text().count("<!-- quality:start -->") == 1
