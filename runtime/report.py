"""One self-contained HTML report of a scored set of images: what was flagged, why, and where the threshold sits.

Everything is inline (PNG images as data URIs, plots as SVG), so the file opens from disk with no network.
Drawn with numpy and Pillow only. Sections: summary counts and flag rate; the score distribution of the inputs over
the calibration distribution with the threshold; the most anomalous inputs as image | reconstruction | residual
(|x - reconstruction| as a heat map) with score, p-value and path; a few of the most normal for contrast; the
evaluation when labelled normal and anomalous inputs are given; the bundle's summary. For a tiled bundle the
inputs are whole images of their own sizes scored by tiles, and each panel is image | stitched anomaly map |
stitched defect map, shown at most ``PANEL_SIDE`` pixels long.
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
    images: Any  # (N, C, H, W) float32; for a tiled bundle a list of (C, H, W) images of their own sizes
    scores: NDArray[np.float32]
    p_values: NDArray[np.float64]
    flags: NDArray[np.bool_]
    threshold: float
    labels: list[str] = field(default_factory=list)  # "", "normal" or "anomalous" per input
    failures: list[tuple[str, str]] = field(default_factory=list)
    evaluation: Evaluation | None = None
    tiles: list[int] = field(default_factory=list)  # a tiled bundle's inputs: each image's number of tiles

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
    def score_tiled(cls, model: Model, method: str, names: list[str], images: Sequence[NDArray[Any]],
                    labels: Sequence[str] = (), failures: Sequence[tuple[str, str]] = ()) -> "ReportData":
        """:meth:`score` for a tiled bundle: ``images`` ((C, H, W) each, of any sizes) scored whole by tiles
        (``Model.score_tiled_many``); p-values and flags are the image-level ones, adjusted for each image's
        number of tiles, and so are the evaluation's confusion counts."""
        return cls.from_tiled(model, method, names, images, model.score_tiled_many(list(images), method), labels,
                              failures)

    @classmethod
    def from_tiled(cls, model: Model, method: str, names: list[str], images: Sequence[NDArray[Any]],
                   results: Sequence[Any], labels: Sequence[str] = (),
                   failures: Sequence[tuple[str, str]] = ()) -> "ReportData":
        """A report of images a tiled bundle already scored (``TiledScore`` each); nothing is scored again."""
        from dataclasses import replace

        from .evaluation import evaluate_scores

        scores = np.array([r.score for r in results], np.float32)
        flags = np.array([r.is_outlier for r in results], bool)
        threshold = _image_level(model).methods[method].threshold
        lab = np.array(list(labels))
        evaluation = None
        if lab.size and (lab == "normal").any() and (lab == "anomalous").any():
            evaluation = evaluate_scores(method, scores[lab == "normal"], scores[lab == "anomalous"], threshold)
            tp, fp = int(flags[lab == "anomalous"].sum()), int(flags[lab == "normal"].sum())
            evaluation = replace(evaluation, true_positives=tp, false_positives=fp,
                                 true_negatives=evaluation.n_normal - fp, false_negatives=evaluation.n_anomalous - tp)
        return cls(model=model, method=method, names=names, images=list(images), scores=scores,
                   p_values=np.array([r.p_value for r in results], np.float64), flags=flags, threshold=threshold,
                   labels=list(labels) if any(labels) else [], failures=list(failures), evaluation=evaluation,
                   tiles=[r.tiles for r in results])

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


def _image_level(model: Model) -> Any:
    """A tiled bundle's image-level calibration (``tiling.calibration``).

    Raises:
        ValueError: the bundle has none.
    """
    cal = model.tiling.calibration
    if cal is None:
        raise ValueError("this tiled bundle has no image-level calibration; calibrate it on whole images with "
                         "'edgevae calibrate'")
    return cal


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


# The longest side of a tiled input's panel in the report: larger images are shown shrunk (block means).
PANEL_SIDE = 320


def _shrink(array: NDArray[Any], factor: int) -> NDArray[np.float32]:
    """(..., H, W) -> block means over factor x factor blocks (the far rows and columns that do not fill a block
    are dropped)."""
    if factor == 1:
        return np.asarray(array, np.float32)
    h, w = array.shape[-2] // factor * factor, array.shape[-1] // factor * factor
    a = np.asarray(array, np.float32)[..., :h, :w]
    out: NDArray[np.float32] = a.reshape(*a.shape[:-2], h // factor, factor, w // factor, factor).mean(axis=(-3, -1))
    return out


def _tiled_panel(model: Model, image: NDArray[Any]) -> str:
    """A tiled input's panel: image | anomaly map | defect map (with a head), stitched at full resolution by
    ``Model.tiled_maps`` and shown at most ``PANEL_SIDE`` pixels long, as one PNG data URI."""
    from .grid import map_panel

    maps = model.tiled_maps(image)
    unit = np.asarray(image, np.float32) / (255.0 if np.asarray(image).dtype == np.uint8 else 1.0)
    factor = max(1, -(-max(unit.shape[1:]) // PANEL_SIDE))
    defect = maps.get("defect")
    panel = map_panel(_shrink(unit, factor), None, _shrink(maps["anomaly"], factor),
                      defect_map=None if defect is None else _shrink(defect, factor))
    return _png_uri(panel)


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


def _panels(data: ReportData, shown: Sequence[int]) -> tuple[str, dict[int, str]]:
    """What the galleries show, and each shown input's panel as a PNG data URI."""
    defect = data.model.has_defect_head
    if data.tiles:
        return ("image, anomaly map, defect map" if defect else "image, anomaly map",
                {i: _tiled_panel(data.model, data.images[i]) for i in shown})
    index = np.array(list(shown), dtype=int)
    recon = data.model.reconstruct(data.images[index]) if index.size else data.images[:0]
    defects = data.model.defect_map(data.images[index]) if defect and index.size else None
    return ("image, reconstruction, residual" + (", defect map" if defect else ""),
            {int(i): _triptych(data.images[i], recon[k], None if defects is None else defects[k])
             for k, i in enumerate(index)})


def _gallery(data: ReportData, indices: Sequence[int], panels: dict[int, str], what: str, css: str) -> str:
    rows = []
    for rank, i in enumerate(indices, 1):
        label = data.labels[i] if data.labels else ""
        rows.append(
            f'<tr class="{css}{" flagged" if data.flags[i] else ""}" data-item="{html.escape(data.names[i])}" '
            f'data-score="{float(data.scores[i])!r}" data-outlier="{str(bool(data.flags[i])).lower()}">'
            f'<td>{rank}</td><td><img alt="{what}" src="{panels[i]}"></td>'
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
    if data.tiles:  # 1 - (1 - p0)^(n / n0) is p0 n / n0 this far out
        from .tiles import calibrated_tiles

        cal = _image_level(data.model)
        n = data.tiles[i]
        log_p = (float(cal.methods[data.method].log_p_values(data.scores[i:i + 1])[0])
                 + math.log(n / (calibrated_tiles(cal) or n)))
    else:
        log_p = float(data.model.manifest.calibration[data.method].log_p_values(data.scores[i:i + 1])[0])
    log10 = log_p / math.log(10)
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
    if m.tiling is not None:
        t = m.tiling
        items.insert(1, ("tiles", f"{t.tile[0]}x{t.tile[1]} every {t.stride} px"
                                  + (f", images shrunk {t.downscale}x" if t.downscale > 1 else "") + f"; {t.note}"))
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
    what, panels = _panels(data, most + least)
    tiling = data.model.tiling if data.tiles else None
    cal = (_image_level(data.model).methods[data.method] if tiling is not None
           else data.model.manifest.calibration[data.method]).sorted_scores
    n, flagged = len(data.names), int(data.flags.sum())
    counts = [("inputs scored", n), ("flagged as outliers", flagged),
              ("flag rate", f"{flagged / max(1, n):.1%}"), ("unreadable", len(data.failures)),
              ("threshold" + (" at the calibrated size" if tiling is not None else ""), f"{data.threshold:.4g}")]
    note = ("p-values are against the bundle's held-out normal images; the threshold flags its calibrated share of "
            "normal images." if tiling is None else
            "each image was scored whole by tiles (its score is the largest tile score); p-values are against whole "
            "held-out normal images, and each image's p-value and flag are adjusted for its number of tiles "
            f"({tiling.note}).")
    body = [f"<h1>edgevae report — {html.escape(data.method)}</h1>",
            f"<p class='note'>Bundle {html.escape(str(data.model.path))}. Higher scores are more anomalous; "
            f"{html.escape(note)}</p>",
            "<div class='counts' id='counts'>" + "".join(f"<div>{k}<b>{v}</b></div>" for k, v in counts) + "</div>",
            "<h2>Score distribution</h2>", histogram_svg(cal, data.scores, data.threshold)]
    if data.evaluation is not None:
        body.append(_evaluation_table(data.evaluation))
    body += [f"<h2>Most anomalous {len(most)}</h2>", _gallery(data, most, panels, what, "top")]
    if len(least):
        body += [f"<h2>Most normal {len(least)}, for contrast</h2>", _gallery(data, least, panels, what, "normal")]
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
