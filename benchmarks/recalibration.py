"""Recalibration on a user's small normal set keeps what the default flagged, and p-values never tie beyond it.

For each digit d and each training seed (`--seeds`, 0 by default): train on the 400 images of digit d in the
embedded training pool with the defaults of `edgevae train` at that seed, export with the defaults (the default
method, `combined`, calibrated on the automatic split of 100 images), and flag two kinds of anomaly: the 900 test images of the other digits, and synthetic
outliers (the demo's six kinds, 30 of each, drawn from other test digits). Then recalibrate copies of the bundle
with `edgevae.runtime.recalibrate` on the digit's 100 test images, in each mode of `edgevae calibrate`:

- `auto` (shipped): pooled with the stored calibration images when a KS test per method finds the new images'
  scores consistent with theirs, else replaced;
- `replace`: the new images alone (what `edgevae calibrate` did before `--mode`).

Measured per mode: the share of what the default flagged that is still flagged (per kind); the false-positive rate
on normal images the recalibration did not see (two folds: recalibrate on 50 of the test images, count flags on the
other 50); and, with a changed camera (every image darkened to 70 %), the same two folds on darkened images, where
`auto` must not pool (forced pooling, `pool`, is shown beside it). Among inputs scored beyond the largest
calibration score, how many share a p-value or a score.

Usage:
    python benchmarks/recalibration.py            # 10 digits (about 15 min here)
    python benchmarks/recalibration.py --seeds 0,1  # 10 digits, two training seeds each (twice the time)
    python benchmarks/recalibration.py --smoke    # one digit, tiny model

Writes benchmarks/results/recalibration.json and the recalibration section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
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
from edgevae.training import DataSpec, ModelConfig, TrainConfig, embedded_split, train
from edgevae.training.samples import synthetic_outliers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, save_report  # noqa: E402  (a sibling script module)

PER_KIND = 30
MODES = ("auto", "replace")
DARKER = 0.7  # the changed camera: every pixel at 70 %


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


def one_digit(digit: int, smoke: bool, work: Path, seed: int = 0) -> dict[str, Any]:
    """Train and export once at training seed ``seed``; recalibrate copies in each mode and compare the flags."""
    model_cfg = ModelConfig(latent_dim=4, widths=(8, 16), hidden=32).resolved() if smoke else ModelConfig().resolved()
    result = train(DataSpec(classes=(digit,)), work / f"run{digit}", model_cfg,
                   TrainConfig(seed=seed, **({"epochs": 3} if smoke else {})))
    x, y = embedded_split("test")
    normal = x[y == digit]
    kinds = anomalies(digit)
    bundle = work / f"bundle{digit}"
    export_bundle(result.best_checkpoint, bundle, ExportConfig(elbo_samples=4, iwae_samples=16) if smoke else None).close()
    with load(bundle, ["CPUExecutionProvider"]) as model:
        default = {kind: model.score(images).is_outlier for kind, images in kinds.items()}
        default_fpr_normal = float(model.score(normal).is_outlier.mean())
        darker = (normal * DARKER).astype(np.uint8)
        default_fpr_darker = float(model.score(darker).is_outlier.mean())
    row: dict[str, Any] = {"digit": digit, "seed": seed, "default_flagged": {k: float(v.mean()) for k, v in default.items()},
                           "default_fpr_normal": default_fpr_normal, "default_fpr_darker": default_fpr_darker}
    for mode in MODES:
        copy = _recalibrated(bundle, work / f"{digit}_{mode}", normal, mode)
        out: dict[str, Any] = {"decision": _decision(copy), "ks_min_p": _ks_min_p(copy)}
        with load(copy, ["CPUExecutionProvider"]) as model:
            flags = {kind: model.score(images).is_outlier for kind, images in kinds.items()}
            out["kept_100"] = {k: float((flags[k] & default[k]).sum() / max(1, default[k].sum())) for k in kinds}
            out["flagged_100"] = {k: float(v.mean()) for k, v in flags.items()}
            out["ties_100"] = beyond_range_ties(model, np.concatenate(list(kinds.values())))
        out["folds"] = _folds(bundle, work / f"{digit}_{mode}_folds", normal, mode)
        row[mode] = out
    row["darker"] = {mode: _folds(bundle, work / f"{digit}_{mode}_dark", darker, mode) for mode in ("auto", "replace", "pool")}
    return row


def _recalibrated(bundle: Path, copy: Path, images: np.ndarray, mode: str) -> Path:
    shutil.copytree(bundle, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        recalibrate(copy, images, mode=mode)
    return copy


def _decision(bundle: Path) -> str:
    return str(json.loads((bundle / "edgevae.json").read_text())["calibration"]["recalibration"]["decision"])


def _ks_min_p(bundle: Path) -> float | None:
    """The smallest KS p-value over the methods of a recalibration that tested consistency (None: it did not)."""
    record = json.loads((bundle / "edgevae.json").read_text())["calibration"]["recalibration"]
    return min(record["ks_p_values"].values()) if record.get("ks_p_values") else None


def _folds(bundle: Path, work: Path, images: np.ndarray, mode: str) -> dict[str, Any]:
    """Two folds: recalibrate on one half of ``images``, count the default's flags on the other half."""
    half = images.shape[0] // 2
    flagged, seen, decisions = 0, 0, []
    for k, (fit, held) in enumerate(((images[:half], images[half:]), (images[half:], images[:half]))):
        copy = _recalibrated(bundle, work / f"fold{k}", fit, mode)
        decisions.append(_decision(copy))
        with load(copy, ["CPUExecutionProvider"]) as model:
            flagged += int(model.score(held).is_outlier.sum())
            seen += int(held.shape[0])
    return {"flagged": flagged, "images": seen, "decisions": decisions}


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    kinds = list(rows[0]["default_flagged"])
    seeds = report.get("seeds", [0])
    over = "digits" if len(seeds) == 1 else f"digits and the {len(seeds)} training seeds"
    lines = [
        "## Recalibration on a small normal set (one-class digits, training defaults)",
        "",
        f"Measured by `python benchmarks/recalibration.py` on {report['machine']}, {report['date']}; total "
        f"{report['seconds'] / 60:.1f} min. Raw results: `benchmarks/results/recalibration.json`. Per digit "
        f"({', '.join(map(str, report['digits']))}) and training seed ({', '.join(map(str, seeds))}): the default export (`combined`, 1 % FPR on the automatic 100-image "
        "split), then `edgevae calibrate` on 100 held-out normal images (the digit's test images) in each mode: `auto` "
        "(pooled with the stored calibration images when a KS test per method finds them consistent, else replaced; "
        "the default) and `replace` (the new images alone). *Kept*: the share of what the default flagged that the "
        f"recalibrated bundle still flags (lowest over {over} / mean).",
        "",
        "| mode | anomaly kind | flagged by the default (mean) | kept after 100 images |",
        "|---|---|---|---|",
    ]
    for mode in MODES:
        for kind in kinds:
            default = np.mean([r["default_flagged"][kind] for r in rows])
            kept = [r[mode]["kept_100"][kind] for r in rows if r["default_flagged"][kind] > 0]
            text = f"{min(kept) * 100:.0f} % / {np.mean(kept) * 100:.1f} %" if kept else "nothing flagged"
            lines.append(f"| {mode} | {kind} | {default * 100:.1f} % | {text} |")
    if len(seeds) > 1:
        lines += ["", "*Kept* among the other digits, mean over the digits of each training seed: " + "; ".join(
            f"seed {seed}: " + ", ".join(
                f"{mode} {np.mean([r[mode]['kept_100']['other digits'] for r in rows if r.get('seed', 0) == seed and r['default_flagged']['other digits'] > 0]) * 100:.1f} %"
                for mode in MODES) for seed in seeds) + "."]
    lines += ["", "False-positive rates at the recalibrated 1 % on normal images the recalibration did not see (two "
              "folds per digit: recalibrate on 50 test images, flag the other 50; pooled over digits), and what `auto` "
              f"decided; then the same with a changed camera (every image at {DARKER:.0%} brightness: recalibration and "
              "held-out images alike):", "",
              "| images | mode | false-positive rate | decisions |", "|---|---|---|---|"]
    def rate(folds: list[dict[str, Any]]) -> str:
        f, n = sum(x["flagged"] for x in folds), sum(x["images"] for x in folds)
        return f"{100 * f / max(1, n):.1f} % ({f} of {n})"

    def decisions(folds: list[dict[str, Any]]) -> str:
        d = [v for x in folds for v in x["decisions"]]
        return ", ".join(f"{d.count(k)} {k}" for k in ("pooled", "replaced") if d.count(k))

    for mode in MODES:
        lines.append(f"| unchanged | {mode} | {rate([r[mode]['folds'] for r in rows])} | "
                     f"{decisions([r[mode]['folds'] for r in rows])} |")
    for mode in ("auto", "replace", "pool"):
        lines.append(f"| darker | {mode} | {rate([r['darker'][mode] for r in rows])} | "
                     f"{decisions([r['darker'][mode] for r in rows])} |")
    if all("default_fpr_normal" in r for r in rows):
        lines += ["", "Per digit: the default's own false-positive rate on the 100 normal images the recalibration uses "
                  "(its stored threshold was calibrated on another 100 normal images of the digit), against the share "
                  "of what it flagged among the other digits that `auto` keeps. A default that flags more than 1 % of "
                  "these normals has a threshold too low for them; a recalibration that lowers its false-positive rate "
                  "drops the anomalies nearest to the normal ones with it:", "",
                  "| digit | seed | default FPR on the recalibration normals | other digits flagged by the default "
                  "| kept (auto) | kept (replace) | auto decided (smallest KS p) |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            ks = r["auto"].get("ks_min_p")
            lines.append(f"| {r['digit']} | {r.get('seed', 0)} | {r['default_fpr_normal'] * 100:.0f} % | "
                         f"{r['default_flagged']['other digits'] * 100:.1f} % | "
                         f"{r['auto']['kept_100']['other digits'] * 100:.1f} % | "
                         f"{r['replace']['kept_100']['other digits'] * 100:.1f} % | {r['auto']['decision']}"
                         + (f" ({ks:.2g})" if ks is not None else "") + " |")
    dark = np.mean([r["default_fpr_darker"] for r in rows])
    lines += ["", f"Without recalibration the default flags {dark * 100:.1f} % of the darker normal images. `auto` decisions "
              "on the 100-image recalibration: " + ", ".join(
                  f"{sum(r['auto']['decision'] == d for r in rows)} {d}" for d in ("pooled", "replaced")) + ".", ""]
    for mode in MODES:
        ties = [r[mode]["ties_100"] for r in rows]
        lines.append(f"- {mode}: of {sum(t['beyond'] for t in ties)} distinct inputs scored beyond the largest calibration "
                     f"score, {sum(t['beyond'] - t['distinct_scores'] for t in ties)} share a score and "
                     f"{sum(t['beyond'] - t['distinct_p'] for t in ties)} a p-value with another "
                     f"({sum(t['p_zero'] for t in ties)} p-values underflow to 0; their scores stay distinct).")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__ or "", "recalibration")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated: every digit is trained, exported "
                                                     "and recalibrated once per seed (default: 0)")
    args = parser.parse_args(argv)
    digits = (3,) if args.smoke else tuple(range(10))
    seeds = tuple(int(v) for v in args.seeds.split(","))
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgevae-recalibration-") as tmp:
        for seed, digit in ((seed, digit) for seed in seeds for digit in digits):
            (Path(tmp) / f"seed{seed}").mkdir(exist_ok=True)
            rows.append(one_digit(digit, args.smoke, Path(tmp) / f"seed{seed}", seed))
            print(f"seed {seed}, digit {digit}: kept after 100 " + "; ".join(f"{mode} ({rows[-1][mode]['decision']}): "
                                                                 f"{rows[-1][mode]['kept_100']}" for mode in MODES),
                  flush=True)
    report: dict[str, Any] = {"digits": list(digits), "seeds": list(seeds), "rows": rows}
    save_report("recalibration", report, markdown, args, started)
    return report


if __name__ == "__main__":
    main()
