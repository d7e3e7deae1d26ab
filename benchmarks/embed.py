"""Embedded scorers: batch-1 latency and cold start of the C, Node.js and browser programs beside Python.

Trains the default architecture briefly (speed does not depend on how well it is trained), exports it, and
measures side by side in one run:

- batch-1 `kl` latency: the C scorer's score call (tensor, encoder run, copy out; median of R calls, one
  intra-op thread) against Python's raw onnxruntime call on the same encoder graph (one thread, same R);
- cold start for one image, wall clock of the whole process (median of 15 runs): the C binary, the Node.js program
  and `edgevae score` from the command line;
- the web page in headless Chromium: milliseconds per dropped 28x28 image after the bundle is loaded (first image
  and the median of the rest), smooth_recon and kl.

Usage:
    python benchmarks/embed.py           # about 2 min here; needs gcc, node, chromium and `make embed-setup`
    python benchmarks/embed.py --smoke   # a tiny model and few repetitions

Writes benchmarks/results/embed.json and the embed section of docs/benchmarks.md.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgevae.export import ExportConfig, export_bundle
from edgevae.training import DataSpec, ModelConfig, TrainConfig, embedded_split, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import ROOT, benchmark_parser, save_report  # noqa: E402  (a sibling script module)

EMBED = ROOT / "embed"


def wall(command: list[str], runs: int) -> float:
    """Median wall-clock seconds of running ``command`` to completion."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def python_raw_kl_us(encoder: Path, x: np.ndarray, reps: int) -> float:
    """Median microseconds of one raw onnxruntime call of the encoder on one image, one intra-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(encoder), options, providers=["CPUExecutionProvider"])
    feed = {"x": x}
    return median_us(lambda: session.run(None, feed), reps)


def median_us(call: Any, reps: int, warmup: int = 50) -> float:
    """Median microseconds of ``call()`` over ``reps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def c_kl_us(scorer: Path, bundle: Path, image: Path, reps: int, method: str = "kl") -> float:
    """Median microseconds of the C scorer's score call for one image (the ``--repeat`` timing)."""
    proc = subprocess.run([str(scorer), "-m", str(bundle), "--method", method, "--repeat", str(reps), str(image)],
                          check=True, capture_output=True, text=True)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("timing:"))
    return float(line.split("median ")[1].split(" us")[0])


# The methods the C program computes, timed side by side with the Python runtime at batch 1.
C_METHODS = ("kl", "recon", "rel_recon", "smooth_recon", "elbo", "local", "too_likely", "defect", "combined")


def python_method_us(bundle: Path, x: np.ndarray, method: str, reps: int) -> float:
    """Median microseconds of ``Model.raw_scores`` on one image: the runtime's whole path (validation, graphs,
    score maths), one intra-op thread and no slicing, as the C program runs."""
    from edgevae.runtime import load

    with load(bundle, ["CPUExecutionProvider"], threads=1, slice_workers=1) as model:
        return median_us(lambda: model.raw_scores(x, method), reps)


def page_ms(bundle: Path, images: list[Path], method: str) -> dict[str, float]:
    """Per-image milliseconds the page reports for ``images`` (scored in one drop) after the bundle loaded."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "scripts"))
    from serve_web import serve

    server = serve(bundle, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chromium = next(p for p in ("/usr/bin/chromium", "/usr/bin/chromium-headless-shell") if os.path.exists(p))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/?demo&method={method}")
            page.wait_for_selector("body[data-bundle=loaded]", timeout=60_000)
            page.set_input_files("#images", [str(i) for i in images])
            page.wait_for_selector(f"body[data-scored='{len(images)}']", timeout=60_000)
            ms = [float(v) for v in page.eval_on_selector_all("#results tbody tr", "rs => rs.map(r => r.dataset.ms)")]
            browser.close()
    finally:
        server.shutdown()
    return {"first_ms": ms[0], "median_ms": statistics.median(ms[1:])}


def build_c() -> Path:
    subprocess.run(["make", "-C", str(EMBED / "c"), f"PYTHON={sys.executable}"], check=True, capture_output=True)
    return EMBED / "c" / "build" / "edgevae-score"


def measure(work: Path, smoke: bool) -> dict[str, Any]:
    cfg = ModelConfig(latent_dim=4, widths=(8, 16), hidden=32).resolved() if smoke else ModelConfig().resolved()
    train(DataSpec(classes=(0, 1)), work / "run", cfg, TrainConfig(epochs=1 if smoke else 3))
    bundle = work / "bundle"
    export_bundle(work / "run", bundle, ExportConfig(elbo_samples=4, iwae_samples=8)).close()
    digits = embedded_split("test")[0][:20]
    from PIL import Image

    images = []
    for i, d in enumerate(digits):
        Image.fromarray(d).save(work / f"d{i}.png")
        Image.fromarray(d).save(work / f"d{i}.pgm")
        images.append(work / f"d{i}.png")
    reps, runs = (200, 3) if smoke else (3000, 15)
    x = (digits[:1, None].astype(np.float32) / np.float32(255))
    scorer = build_c()
    report: dict[str, Any] = {
        "python_raw_kl_us": python_raw_kl_us(bundle / "encoder.onnx", x, reps),
        "c_kl_us": c_kl_us(scorer, bundle, work / "d0.pgm", reps),
        "cold_start_s": {
            "c": wall([str(scorer), "-m", str(bundle), str(work / "d0.pgm")], runs),
            "node": wall(["node", str(EMBED / "node" / "score.mjs"), "-m", str(bundle), str(images[0])], runs),
            "python_cli": wall([sys.executable, "-m", "edgevae.cli", "score", str(images[0]), "-m", str(bundle)], runs),
        },
        "page": {m: page_ms(bundle, images, m) for m in ("smooth_recon", "kl")},
        "per_method_us": {m: {"c": c_kl_us(scorer, bundle, work / "d0.pgm", reps // 3, m),
                              "python": python_method_us(bundle, x, m, reps // 3)} for m in C_METHODS},
        "reps": reps, "runs": runs, "model": cfg.to_dict(),
    }
    return report


def markdown(report: dict[str, Any]) -> str:
    cold, page = report["cold_start_s"], report["page"]
    ratio = report["c_kl_us"] / report["python_raw_kl_us"]
    return "\n".join([
        "## Embedded scorers: C, Node.js and the browser",
        "",
        f"Measured by `python benchmarks/embed.py` on {report['machine']}, {report['date']}. Raw results: "
        "`benchmarks/results/embed.json`. The default architecture (briefly trained: speed does not depend on it), "
        "28x28 digits, one intra-op thread everywhere.",
        "",
        "| what | figure | goal |",
        "|---|---|---|",
        f"| batch-1 `kl`, C score call (median of {report['reps']}) | {report['c_kl_us']:.1f} µs | ≤ Python's raw call |",
        f"| batch-1 `kl`, Python raw `session.run` on the same encoder | {report['python_raw_kl_us']:.1f} µs "
        f"| (C / Python = {ratio:.2f}) |",
        f"| cold start, one image: C binary (median of {report['runs']}) | {cold['c'] * 1e3:.0f} ms | ≤ 50 ms |",
        f"| cold start, one image: Node.js program | {cold['node'] * 1e3:.0f} ms | |",
        f"| cold start, one image: `edgevae score` (Python CLI) | {cold['python_cli'] * 1e3:.0f} ms | |",
        f"| web page, `smooth_recon`, per dropped image: first / median of the rest | {page['smooth_recon']['first_ms']:.1f} / "
        f"{page['smooth_recon']['median_ms']:.1f} ms | ≤ 20 ms |",
        f"| web page, `kl`, per dropped image: first / median of the rest | {page['kl']['first_ms']:.1f} / "
        f"{page['kl']['median_ms']:.1f} ms | ≤ 20 ms |",
        "",
        "The C call includes creating the input tensor and copying the three outputs; Python's raw call returns "
        "numpy arrays of them. The page's time is the score call (graphs and score maths) after the image is "
        "decoded; its first image also pays onnxruntime-web's first-run set-up.",
        "",
        f"Every method at batch 1, median of {report['reps'] // 3} calls each, one thread: the C score call against "
        "the Python runtime's `Model.raw_scores` on the same image (goal: C no slower).",
        "",
        "| method | C (µs) | Python (µs) | C / Python |",
        "|---|---|---|---|",
        *[f"| {m} | {t['c']:.0f} | {t['python']:.0f} | {t['c'] / t['python']:.2f} |"
          for m, t in report.get("per_method_us", {}).items()],
        "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = benchmark_parser(__doc__ or "", "embed").parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgevae-embed-bench-") as tmp:
        report = measure(Path(tmp), args.smoke)
    save_report("embed", report, markdown, args, started)
    return report


if __name__ == "__main__":
    main()
