"""embed/web: the page on onnxruntime-web (WASM), driven in a real headless Chromium (Debian's package)."""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from .conftest import EMBED, METHODS, ROOT, compare, compare_tiled, need

pytestmark = [pytest.mark.embed, pytest.mark.slow]
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-headless-shell")) if p), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(CHROMIUM is not None, "no chromium: apt-get install chromium")
    need((EMBED / "web" / "node_modules" / "onnxruntime-web").is_dir(), "embed/web has no node_modules: make embed-setup")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


def served(bundle: Path) -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    from serve_web import serve

    server = serve(bundle, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def open_page(browser: Any, server: Any, method: str) -> Any:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{server.server_address[1]}/?demo&method={method}")
    page.wait_for_selector("body[data-bundle=loaded], #status.error", timeout=60_000)
    page.errors = errors
    return page


def page_rows(page: Any, inputs: dict[str, Any], method: str, timeout: int = 60_000) -> list[dict[str, Any]]:
    """Drop ``inputs`` on the page, wait until every one is scored, and read its rows as the programs' rows."""
    page.set_input_files("#images", list(inputs))
    page.wait_for_selector(f"body[data-scored='{len(inputs)}']", timeout=timeout)
    rows = page.eval_on_selector_all("#results tbody tr", "rs => rs.map(r => ({...r.dataset}))")
    by_name = {Path(k).name: k for k in inputs}
    return [{"item": by_name[r["item"]], "method": method, "score": float(r["score"]),
             "p_value": float(r["pValue"]), "outlier": r["outlier"] == "true"} for r in rows]


@pytest.mark.parametrize("method", METHODS)
def test_page_scores_agree_with_the_runtime(browser: Any, bundle: Path, model, embed_inputs, method: str,  # type: ignore[no-untyped-def]
                                            tmp_path: Path) -> None:
    inputs = {k: v for k, v in embed_inputs.items() if not k.endswith(".f32")}  # the page decodes images only
    server = served(bundle)
    try:
        page = open_page(browser, server, method)
        compare(model, page_rows(page, inputs, method), inputs, method)
        page.click("#generate")
        page.wait_for_selector("body[data-generated='16']", timeout=60_000)
        if method == "smooth_recon":
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert page.errors == []
    finally:
        server.shutdown()


def test_page_scores_large_images_by_tiles_and_shows_the_stitched_map(browser: Any, tiled_bundle: Path, tiled_model,  # type: ignore[no-untyped-def]
                                                                    tiled_inputs) -> None:
    import numpy as np

    server = served(tiled_bundle)
    try:
        page = open_page(browser, server, "combined")
        assert "scored by tiles" in page.inner_text("#status"), page.inner_text("#status")
        compare_tiled(tiled_model, page_rows(page, tiled_inputs, "combined", 120_000), tiled_inputs, "combined")
        # the defect map is stitched at the image's own size, and its pixels are the runtime's stitched map's
        sizes = page.eval_on_selector_all("#results tbody tr td:nth-child(3) canvas", "cs => cs.map(c => [c.height, c.width])")
        assert sizes == [list(a.shape[:2]) for a in tiled_inputs.values()]
        name, image = next((k, v) for k, v in tiled_inputs.items() if v.shape == (84, 98))
        red = page.eval_on_selector(f"#results tbody tr[data-item='{Path(name).name}'] td:nth-child(3) canvas",
                                    "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
                                    ".filter((_, i) => i % 4 == 0)")
        expected = np.round(255 * np.clip(3 * tiled_model.tiled_maps(image)["defect"], 0, 1)).ravel()
        assert np.abs(np.asarray(red) - expected).max() <= 1
        assert page.errors == []
    finally:
        server.shutdown()


def test_page_refuses_a_tampered_graph(browser: Any, tampered: Path) -> None:
    server = served(tampered)
    try:
        page = open_page(browser, server, "kl")
        assert "bundle refused" in page.inner_text("#status") and "does not match the manifest" in page.inner_text("#status")
    finally:
        server.shutdown()


def test_page_scores_an_rgb_bundle_like_the_runtime(browser: Any, rgb_bundle: Path, rgb_inputs) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime import load

    inputs = {k: v for k, v in rgb_inputs.items() if not k.endswith(".f32")}
    server = served(rgb_bundle)
    try:
        page = open_page(browser, server, "smooth_recon")
        parsed = page_rows(page, inputs, "smooth_recon")
        with load(rgb_bundle, ["CPUExecutionProvider"]) as model:
            compare(model, parsed, inputs, "smooth_recon")
    finally:
        server.shutdown()


def test_page_verifies_signed_bundles(browser: Any, signed_bundles: dict[str, Path]) -> None:
    from .conftest import REFUSALS

    cases = {"signed": ("signed", "owner", "signature verified"), "unsigned": ("unsigned", "owner", REFUSALS["unsigned"]),
             "stranger": ("signed", "stranger", REFUSALS["stranger"]), "altered": ("altered", "owner", REFUSALS["altered"])}
    for case, (folder, key, expected) in cases.items():
        server = served(signed_bundles[folder])
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.set_input_files("#trusted-key", str(signed_bundles[key]))
            page.wait_for_selector("body[data-keys='1']", timeout=30_000)
            page.click("#load-demo")
            page.wait_for_selector("body[data-bundle=loaded], #status.error", timeout=60_000)
            assert expected in page.inner_text("#status"), (case, page.inner_text("#status"))
            page.close()
        finally:
            server.shutdown()


def test_page_decodes_every_png_kind_as_pillow_does(browser: Any, bundle: Path, tmp_path: Path, test_digits) -> None:  # type: ignore[no-untyped-def]
    """Alpha (transparent and partial), palettes with a transparent entry, 16-bit, 1-bit, interlaced: the page's
    scores agree with `edgevae score` on each (the browser's own decoder premultiplied alpha)."""
    import json

    from click.testing import CliRunner

    from edgevae.cli import main

    from .conftest import png_variants

    files = [str(f) for f in png_variants(tmp_path, test_digits[0][0])]
    server = served(bundle)
    try:
        page = open_page(browser, server, "smooth_recon")
        page.set_input_files("#images", files)
        page.wait_for_selector(f"body[data-scored='{len(files)}']", timeout=60_000)
        got = {r["item"]: float(r["score"]) for r in page.eval_on_selector_all("#results tbody tr", "rs => rs.map(r => ({...r.dataset}))")}
        assert page.errors == []
    finally:
        server.shutdown()
    result = CliRunner().invoke(main, ["score", *files, "-m", str(bundle), "--method", "smooth_recon", "--format", "jsonl"])
    want = {Path(r["item"]).name: r["score"] for r in map(json.loads, result.stdout.splitlines())}
    assert set(got) == set(want)
    bad = {k: (got[k], want[k]) for k in want if abs(got[k] - want[k]) > 1e-4 * max(1.0, abs(want[k]))}
    assert not bad, bad


def test_page_agrees_with_python_on_every_mutated_file(browser: Any, bundle: Path) -> None:
    """zzuf's mutations and cuts of PNG and Netpbm files: an error row where Python reports one, the same score
    where it scores (tests/data/mutated_inputs)."""
    from .conftest import check_mutated_corpus

    def score(files: list[str]) -> dict[str, dict]:
        server = served(bundle)
        try:
            page = open_page(browser, server, "smooth_recon")
            page.set_input_files("#images", files)
            page.wait_for_selector(f"body[data-scored='{len(files)}']", timeout=120_000)
            rows = page.eval_on_selector_all("#results tbody tr", "rs => rs.map(r => ({...r.dataset}))")
            assert page.errors == []
        finally:
            server.shutdown()
        return {r["item"]: {"error": r["error"]} if "error" in r else {"score": float(r["score"])} for r in rows}

    check_mutated_corpus(score, bundle, "web")
