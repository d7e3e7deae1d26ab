"""Recalibration on a user's small normal set keeps what the default flagged, and p-values never tie beyond it.

For each digit d: train on the 400 images of digit d in the embedded training pool with the defaults of
`edgevae train` (seed 0), export with the defaults (the default method, `combined`, calibrated on the automatic
split of 100 images), and flag two kinds of anomaly: the 900 test images of the other digits, and synthetic
outliers (the demo's six kinds, 30 of each, drawn from other test digits). Then recalibrate copies of the bundle
with `edgevae.runtime.recalibrate` on 100 held-out normal images (the digit's test images) and on 200 (those and
the validation split) and flag the same inputs again: the share of what the default flagged that is still flagged
(per kind), the false-positive rate on the 100 validation images the 100-image recalibration did not see, and, among
inputs scored beyond the largest calibration score, how many share a p-value or a score.

Usage:
    python benchmarks/recalibration.py            # 10 digits (about 10 min here)
    python benchmarks/recalibration.py --smoke    # one digit, tiny model

Writes benchmarks/results/recalibration.json and the recalibration section of docs/benchmarks.md.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgevae.export import ExportConfig, export_bundle
from edgevae.runtime import CalibrationWarning, load
from edgevae.runtime.recalibrate import recalibrate
from edgevae.training import DataSpec, ModelConfig, TrainConfig, embedded_split, load_checkpoint, run_holdout, train
from edgevae.training.samples import synthetic_outliers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, save_report  # noqa: E402  (a sibling script module)

PER_KIND = 30


def anomalies(digit: int) -> dict[str, np.ndarray]:
    """The anomaly kinds a digit's model is checked on: other digits, and each synthetic outlier kind."""
    x, y = embedded_split("test")
    others = x[y != digit]
    rng = np.random.default_rng(digit)
    synthetic: dict[str, list[np.ndarray]] = {}
    for _ in range(PER_KIND):
        for name, image in synthetic_outliers(others[rng.choice(others.shape[0], 3, replace=False)], rng).items():
            synthetic.setdefault(name, []).append(image)
    return {"other digits": others, **{name: np.stack(images) for name, images in synthetic.items()}}


def beyond_range_ties(model: Any, inputs: np.ndarray) -> dict[str, int]:
    """Among distinct inputs whose default score lies beyond the largest calibration score: how many, and how many
    share a p-value or a score with another of them (identical images, like the checkerboards, count once)."""
    result = model.score(np.unique(inputs, axis=0))
    beyond = result.scores > model.manifest.calibration[result.method].sorted_scores[-1]
    p, s = result.p_values[beyond], result.scores[beyond]
    return {"beyond": int(beyond.sum()), "distinct_p": int(np.unique(p).size), "distinct_scores": int(np.unique(s).size),
            "p_zero": int((p == 0).sum())}


def one_digit(digit: int, smoke: bool, work: Path) -> dict[str, Any]:
    """Train, export, recalibrate on 100 and 200 images, and compare the flags."""
    model_cfg = ModelConfig(latent_dim=4, widths=(8, 16), hidden=32).resolved() if smoke else ModelConfig().resolved()
    result = train(DataSpec(classes=(digit,)), work / f"run{digit}", model_cfg,
                   TrainConfig(seed=0, **({"epochs": 3} if smoke else {})))
    bundle = work / f"bundle{digit}"
    export_bundle(result.best_checkpoint, bundle, ExportConfig(elbo_samples=4, iwae_samples=16) if smoke else None).close()
    x, y = embedded_split("test")
    val = run_holdout(load_checkpoint(result.best_checkpoint)).calibration
    sets = {100: x[y == digit], 200: np.concatenate([x[y == digit], val.reshape(-1, 28, 28)])}
    kinds = anomalies(digit)
    with load(bundle, ["CPUExecutionProvider"]) as model:
        default = {kind: model.score(images).is_outlier for kind, images in kinds.items()}
    row: dict[str, Any] = {"digit": digit, "default_flagged": {k: float(v.mean()) for k, v in default.items()}}
    for n, normal in sets.items():
        copy = work / f"bundle{digit}_{n}"
        shutil.copytree(bundle, copy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            recalibrate(copy, normal)
        with load(copy, ["CPUExecutionProvider"]) as model:
            flags = {kind: model.score(images).is_outlier for kind, images in kinds.items()}
            row[f"kept_{n}"] = {k: float((flags[k] & default[k]).sum() / max(1, default[k].sum())) for k in kinds}
            row[f"flagged_{n}"] = {k: float(v.mean()) for k, v in flags.items()}
            if n == 100:
                row["fpr_unseen_100"] = float(model.score(val).is_outlier.mean())
                row["ties_100"] = beyond_range_ties(model, np.concatenate(list(kinds.values())))
    return row


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    kinds = list(rows[0]["default_flagged"])
    lines = [
        "## Recalibration on a small normal set (one-class digits, training defaults)",
        "",
        f"Measured by `python benchmarks/recalibration.py` on {report['machine']}, {report['date']}; total "
        f"{report['seconds'] / 60:.1f} min. Raw results: `benchmarks/results/recalibration.json`. Per digit: the default "
        "export (`combined`, 1 % FPR on the automatic 100-image split), then `edgevae calibrate` on 100 held-out normal "
        "images (the digit's test images) and on 200 (those and the validation split). *Kept*: the share of what the "
        "default flagged that the recalibrated bundle still flags (lowest over digits, then the mean).",
        "",
        "| anomaly kind | flagged by the default (mean) | kept after 100 images: lowest / mean | "
        "kept after 200 images: lowest / mean |",
        "|---|---|---|---|",
    ]
    for kind in kinds:
        default = np.mean([r["default_flagged"][kind] for r in rows])
        k100 = [r["kept_100"][kind] for r in rows if r["default_flagged"][kind] > 0]
        k200 = [r["kept_200"][kind] for r in rows if r["default_flagged"][kind] > 0]
        fmt = (lambda v: f"{min(v) * 100:.1f} % / {np.mean(v) * 100:.1f} %" if v else "nothing flagged")  # noqa: E731
        lines.append(f"| {kind} | {default * 100:.1f} % | {fmt(k100)} | {fmt(k200)} |")
    fpr = [r["fpr_unseen_100"] for r in rows]
    ties = [r["ties_100"] for r in rows]
    lines += ["", f"False-positive rate after the 100-image recalibration, on the 100 validation images it did not see: "
              f"{np.mean(fpr) * 100:.1f} % pooled (highest digit {max(fpr) * 100:.0f} %; one model's rate moves in steps "
              "of 1 %).",
              f"Inputs scored beyond the largest calibration score: {sum(t['beyond'] for t in ties)} over the digits; "
              f"of them, {sum(t['beyond'] - t['distinct_scores'] for t in ties)} share a score and "
              f"{sum(t['beyond'] - t['distinct_p'] for t in ties)} share a p-value with another "
              f"({sum(t['p_zero'] for t in ties)} p-values underflow to 0: their scores, -ln p, stay distinct).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = benchmark_parser(__doc__ or "", "recalibration").parse_args(argv)
    digits = (3,) if args.smoke else tuple(range(10))
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgevae-recalibration-") as tmp:
        for digit in digits:
            rows.append(one_digit(digit, args.smoke, Path(tmp)))
            print(f"digit {digit}: kept after 100 {rows[-1]['kept_100']}", flush=True)
    report: dict[str, Any] = {"digits": list(digits), "rows": rows}
    save_report("recalibration", report, markdown, args, started)
    return report


if __name__ == "__main__":
    main()
