"""One self-contained HTML report of a scored set of images: what was flagged, why, and where the threshold sits.

Everything is inline (PNG images as data URIs, plots as SVG), so the file opens from disk with no network.
Drawn with numpy and Pillow only. Sections: summary counts and flag rate; the score distribution of the inputs over
the calibration distribution with the threshold; the most anomalous inputs as image | reconstruction | residual
(|x - reconstruction| as a heat map) with score, p-value and path; a few of the most normal for contrast; the
evaluation when labelled normal and anomalous inputs are given; the bundle's summary.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .evaluation import Evaluation
from .grid import to_uint8
from .model import Model

# Inputs shown in each gallery, and bins of the histogram.
TOP_N = 12
NORMAL_N = 4
BINS = 40


@dataclass
class ReportData:
    """What a report shows: the scored inputs (names, images, scores, p-values, flags, labels) and the bundle."""

    model: Model
    method: str
    names: list[str]
    images: NDArray[np.float32]
    scores: NDArray[np.float32]
    p_values: NDArray[np.float64]
    flags: NDArray[np.bool_]
    threshold: float
    labels: list[str] = field(default_factory=list)  # "", "normal" or "anomalous" per input
    failures: list[tuple[str, str]] = field(default_factory=list)
    evaluation: Evaluation | None = None

    @classmethod
    def score(cls, model: Model, method: str, names: list[str], images: NDArray[Any], labels: Sequence[str] = (),
              failures: Sequence[tuple[str, str]] = ()) -> "ReportData":
        """Score ``images`` with ``method`` into a report; with labels ("normal" / "anomalous" per input, "" for
        unlabelled) of both kinds the report includes the evaluation."""
        from .evaluation import evaluate_scores

        result = model.score(images, method)
        lab = np.array(list(labels))
        evaluation = None
        if lab.size and (lab == "normal").any() and (lab == "anomalous").any():
            evaluation = evaluate_scores(method, result.scores[lab == "normal"], result.scores[lab == "anomalous"],
                                         result.threshold)
        return cls(model=model, method=method, names=names, images=images.astype(np.float32, copy=False),
                   scores=result.scores, p_values=result.p_values, flags=result.is_outlier,
                   threshold=result.threshold, labels=list(labels) if any(labels) else [], failures=list(failures),
                   evaluation=evaluation)

    @classmethod
    def from_batches(cls, model: Model, method: str, batches: Sequence[tuple[list[str], Any, Any]],
                     failures: Sequence[tuple[str, str]] = ()) -> "ReportData":
        """A report of batches already scored: (names, images, ScoreResult) each; nothing is scored again."""
        return cls(model=model, method=method, names=[n for names, _, _ in batches for n in names],
                   images=np.concatenate([x for _, x, _ in batches]),
                   scores=np.concatenate([r.scores for _, _, r in batches]),
                   p_values=np.concatenate([r.p_values for _, _, r in batches]),
                   flags=np.concatenate([r.is_outlier for _, _, r in batches]), threshold=batches[0][2].threshold,
                   failures=list(failures))


def _png_uri(array: NDArray[np.uint8]) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _as_rgb(image: NDArray[Any]) -> NDArray[np.uint8]:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8."""
    u8 = to_uint8(image[None])[0]
    return np.repeat(u8[0][..., None], 3, axis=-1) if u8.shape[0] == 1 else np.moveaxis(u8, 0, -1)


def _heat(residual: NDArray[Any]) -> NDArray[np.uint8]:
    """(H, W) residual in [0, 1] -> (H, W, 3) uint8, black through red to yellow."""
    r = np.clip(residual, 0.0, 1.0)
    rgb = np.stack([np.clip(3 * r, 0, 1), np.clip(3 * r - 1, 0, 1), np.clip(3 * r - 2, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def _scale(array: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def _triptych(image: NDArray[np.float32], reconstruction: NDArray[np.float32],
              defect: NDArray[np.float32] | None = None) -> str:
    """image | reconstruction | residual heat map (| defect map), side by side, as one PNG data URI."""
    h = image.shape[1]
    factor = max(1, 96 // h)
    residual = np.abs(image - reconstruction).mean(axis=0)
    gap = np.full((h, 2, 3), 255, np.uint8)
    pieces = [_as_rgb(image), gap, _as_rgb(reconstruction), gap, _heat(residual)]
    if defect is not None:
        pieces += [gap, _heat(defect)]
    row = np.concatenate(pieces, axis=1)
    return _png_uri(_scale(row, factor))


def histogram_svg(calibration: NDArray[np.floating[Any]], scores: NDArray[np.floating[Any]], threshold: float,
                  width: int = 720, height: int = 220) -> str:
    """The inputs' histogram (blue bars) under the calibration's (grey outline), each normalised to its own
    count, and the threshold as a red line, as inline SVG."""
    both = np.concatenate([calibration, scores, [threshold]]).astype(np.float64)
    lo, hi = float(np.min(both)), float(np.max(both))
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, BINS + 1)
    pad, plot_w, plot_h = 40, width - 60, height - 50
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             'aria-label="score distribution">']
    def heights(values: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        counts = np.histogram(values, bins=edges)[0] / max(1, len(values))
        return plot_h * counts / max(float(counts.max()), 1e-9)

    bin_w = plot_w / BINS
    for i, bar in enumerate(heights(scores)):  # the inputs as filled bars
        parts.append(f'<rect x="{pad + bin_w * i:.1f}" y="{10 + plot_h - bar:.1f}" width="{bin_w:.1f}" '
                     f'height="{bar:.1f}" fill="#2f6fde" fill-opacity="0.55"/>')
    steps = " ".join(f"{pad + bin_w * i:.1f},{10 + plot_h - bar:.1f} {pad + bin_w * (i + 1):.1f},{10 + plot_h - bar:.1f}"
                     for i, bar in enumerate(heights(calibration)))  # the calibration as an outline on top
    parts.append(f'<polyline points="{steps}" fill="none" stroke="#4a5563" stroke-width="1.5"/>')
    tx = pad + plot_w * (threshold - lo) / (hi - lo)
    parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="5" y2="{10 + plot_h}" stroke="#b3261e" stroke-width="2"/>')
    parts.append(f'<text x="{tx + 4:.1f}" y="20" fill="#b3261e" font-size="12">threshold {_number(threshold, ".4g")}</text>')
    parts.append(f'<line x1="{pad}" x2="{pad + plot_w}" y1="{10 + plot_h}" y2="{10 + plot_h}" stroke="#333"/>')
    for value in np.linspace(lo, hi, 5):
        x = pad + plot_w * (value - lo) / (hi - lo)
        parts.append(f'<text x="{x:.1f}" y="{height - 20}" font-size="11" text-anchor="middle">{_number(value, ".3g")}</text>')
    parts.append(f'<text x="{pad}" y="{height - 4}" font-size="11" fill="#4a5563">— calibration (held-out normal)</text>'
                 f'<text x="{pad + 220}" y="{height - 4}" font-size="11" fill="#2f6fde">■ inputs</text>')
    return "".join(parts) + "</svg>"


def _gallery(data: ReportData, indices: Sequence[int], reconstructions: NDArray[np.float32], css: str,
             defects: NDArray[np.float32] | None = None) -> str:
    what = "image, reconstruction, residual" + (", defect map" if defects is not None else "")
    rows = []
    for rank, i in enumerate(indices, 1):
        label = data.labels[i] if data.labels else ""
        rows.append(
            f'<tr class="{css}{" flagged" if data.flags[i] else ""}" data-item="{html.escape(data.names[i])}" '
            f'data-score="{float(data.scores[i])!r}" data-outlier="{str(bool(data.flags[i])).lower()}">'
            f'<td>{rank}</td><td><img alt="{what}" src="{_triptych(data.images[i], reconstructions[i], None if defects is None else defects[i])}"></td>'
            f'<td class="num">{_number(data.scores[i], ".5g")}</td><td class="num">{_p_text(data, i)}</td>'
            f'<td>{"OUTLIER" if data.flags[i] else "–"}</td><td>{html.escape(label)}</td>'
            f'<td class="path">{html.escape(data.names[i])}</td></tr>')
    head = (f"<tr><th>#</th><th>{what.replace(', ', ' | ')}</th><th>score</th><th>p-value</th><th>flag</th>"
            "<th>label</th><th>path</th></tr>")
    return f'<table class="{css}"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _evaluation_table(e: Evaluation) -> str:
    cells = [("AUROC", f"{e.auroc:.4f}"), ("average precision", f"{e.average_precision:.4f}"),
             ("FPR at 95 % TPR", f"{e.fpr_at_95_tpr:.4f}"), ("true positives", e.true_positives),
             ("false positives", e.false_positives), ("true negatives", e.true_negatives),
             ("false negatives", e.false_negatives)]
    rows = "".join(f"<tr><th>{k}</th><td class='num'>{v}</td></tr>" for k, v in cells)
    return (f"<h2>Evaluation ({e.n_normal} normal, {e.n_anomalous} anomalous; anomalous = positive)</h2>"
            f"<table id='evaluation'>{rows}</table>")


def _classes(classes: Any) -> str:
    """The training classes as the report says them: "all classes" where the run kept every image."""
    return "all classes" if classes is None else f"class{'es' if len(classes) != 1 else ''} {', '.join(map(str, classes))}"


def _number(value: float, spec: str) -> str:
    """A number formatted with ``spec``, without a negative zero."""
    return format(float(value) + 0.0, spec)


def _p_text(data: ReportData, i: int) -> str:
    """An input's p-value with three significant digits; below what a float holds (far beyond the calibration),
    read from its logarithm, so that distinct far-out inputs keep distinct p-values on the page."""
    p = float(data.p_values[i])
    if p > 1e-300:
        return _number(p, ".3g")
    log10 = float(data.model.manifest.calibration[data.method].log_p_values(data.scores[i:i + 1])[0]) / math.log(10)
    exponent = math.floor(log10)
    return f"{10 ** (log10 - exponent):.2f}e{exponent}"


def _bundle_summary(model: Model) -> str:
    m, raw = model.manifest, model.manifest.raw
    c = m.contract
    training = raw.get("training", {})
    items = [("input", f"{c.channels}x{c.height}x{c.width}"), ("latent size", m.scoring.latent_dim),
             ("likelihood", m.scoring.likelihood), ("default method", m.scoring.default_method),
             ("calibration", f"{m.calibration_n} held-out images at FPR {m.calibration_fpr:g}"
                             + (f" (smallest it can promise: {m.min_fpr:.3g})" if m.min_fpr else "")),
             ("trained on", f"{training.get('data', {}).get('source')}, {_classes(training.get('data', {}).get('classes'))}, "
                            f"{training.get('n_train')} images, {training.get('epochs')} epochs"),
             ("producer", f"edgevae {raw.get('producer', {}).get('edgevae')}, created {raw.get('created')}")]
    return "<table id='bundle'>" + "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items) + "</table>"


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:1100px;color:#1d2430;background:#f7f8fa}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
.counts{display:flex;gap:1rem;flex-wrap:wrap}.counts div{background:#fff;border:1px solid #e3e6ea;border-radius:6px;
padding:.5rem .9rem}.counts b{display:block;font-size:1.3rem}table{border-collapse:collapse;background:#fff}
th,td{padding:.3rem .6rem;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:middle}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.flagged td{background:#fdecea}
td.path{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}img{image-rendering:pixelated}
.note{color:#5a6372}
"""


def render(data: ReportData, top: int = TOP_N, normal: int = NORMAL_N) -> str:
    """The report as one HTML string."""
    order = [int(i) for i in np.argsort(-data.scores, kind="stable")]
    most, least = order[:top], order[::-1][:min(normal, max(0, len(order) - top))]
    shown = np.array(most + least, dtype=int)
    recon = np.empty_like(data.images)
    defects = np.zeros(data.images.shape[:1] + data.images.shape[2:], np.float32) if data.model.has_defect_head else None
    if shown.size:
        recon[shown] = data.model.reconstruct(data.images[shown])
        if defects is not None:
            defects[shown] = data.model.defect_map(data.images[shown])
    cal = data.model.manifest.calibration[data.method].sorted_scores
    n, flagged = len(data.names), int(data.flags.sum())
    counts = [("inputs scored", n), ("flagged as outliers", flagged),
              ("flag rate", f"{flagged / max(1, n):.1%}"), ("unreadable", len(data.failures)),
              ("threshold", f"{data.threshold:.4g}")]
    body = [f"<h1>edgevae report — {html.escape(data.method)}</h1>",
            f"<p class='note'>Bundle {html.escape(str(data.model.path))}. Higher scores are more anomalous; p-values "
            "are against the bundle's held-out normal images; the threshold flags its calibrated share of normal "
            "images.</p>",
            "<div class='counts' id='counts'>" + "".join(f"<div>{k}<b>{v}</b></div>" for k, v in counts) + "</div>",
            "<h2>Score distribution</h2>", histogram_svg(cal, data.scores, data.threshold)]
    if data.evaluation is not None:
        body.append(_evaluation_table(data.evaluation))
    body += [f"<h2>Most anomalous {len(most)}</h2>", _gallery(data, most, recon, "top", defects)]
    if len(least):
        body += [f"<h2>Most normal {len(least)}, for contrast</h2>", _gallery(data, least, recon, "normal", defects)]
    if data.failures:
        body += ["<h2>Unreadable inputs</h2><ul id='failures'>"
                 + "".join(f"<li>{html.escape(name)}: {html.escape(err)}</li>" for name, err in data.failures) + "</ul>"]
    body += ["<h2>Bundle</h2>", _bundle_summary(data.model)]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>edgevae report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(data: ReportData, path: str, top: int = TOP_N) -> None:
    """Render the report and write it atomically."""
    from .atomic import write_atomic

    write_atomic(path, render(data, top=top))
