"""The HTML report, rendered in a real headless Chromium: its DOM, its figures and a screenshot."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from edgevae.cli import main

pytestmark = [pytest.mark.cli, pytest.mark.slow]
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-headless-shell")) if p), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium: apt-get install chromium")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


def test_report_renders_with_figures_images_and_evaluation(browser: Any, bundle: Path, sample_folder: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["report", "-m", str(bundle), "-o", str(out), "--top", "5",
                                  "--normal", str(sample_folder / "normal"), "--anomalous", str(sample_folder / "outliers")])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained, opens from disk
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(out.as_uri())
    counts = page.inner_text("#counts")
    assert "inputs scored\n16" in counts and "unreadable\n0" in counts
    rows = page.eval_on_selector_all("table.top tbody tr", "rs => rs.map(r => ({...r.dataset}))")
    scores = [float(row["score"]) for row in rows]
    assert len(rows) == 5 and scores == sorted(scores, reverse=True)  # the most anomalous, highest first
    images = page.eval_on_selector_all("img", "is => is.map(i => [i.complete, i.naturalWidth])")
    assert images and all(done and width > 0 for done, width in images)  # every inline PNG decodes
    assert page.locator("svg[aria-label='score distribution'] line").count() >= 2  # threshold and axis
    assert "AUROC" in page.inner_text("#evaluation") and "16 inputs" not in page.inner_text("#evaluation")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_score_report_option_reuses_the_scores(bundle: Path, sample_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["score", str(sample_folder), "-m", str(bundle), "--report", str(out)])
    assert r.exit_code == 0 and out.exists() and "most anomalous" in out.read_text().lower()
    r = CliRunner().invoke(main, ["report", "-m", str(bundle)])
    assert r.exit_code == 2 and "give inputs" in r.output


def test_far_out_inputs_keep_distinct_p_values_on_the_page(model) -> None:  # type: ignore[no-untyped-def]
    import re

    import numpy as np

    from edgevae.runtime.report import ReportData, render

    rng = np.random.default_rng(0)
    far = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)  # noise: far beyond every calibration score
    data = ReportData.score(model, "elbo", [f"noise{i}" for i in range(8)], model.prepare(far))
    page = render(data, top=8)
    shown = re.findall(r'<td class="num">[^<]*</td><td class="num">([^<]*)</td>', page)
    assert len(shown) == 8 and len(set(shown)) == 8 and "-0" not in shown, shown
