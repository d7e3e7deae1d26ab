"""``edgevae score``: score inputs against a bundle's calibration, with rows as they come."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Sequence

import click

from .common import (
    EXIT_OUTLIER,
    Inputs,
    Runtime,
    batch_size_option,
    errors,
    format_for,
    method_choice,
    open_output,
    runtime_options,
    warnings_to_stderr,
    writable,
)

if TYPE_CHECKING:
    from edgevae.runtime import Model


@click.command()
@click.argument("paths", nargs=-1, required=True)
@runtime_options
@click.option("--method", type=method_choice(), default=None,
              help="Score method (default: the bundle's).")
@click.option("--fpr", type=float, default=None, help="Flag outliers at this false-positive rate (calibrated).")
@click.option("--threshold", type=float, default=None, help="Flag scores above this value (overrides --fpr).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default=None,
              help="Output format (default: from the -o extension, .csv or .jsonl; table otherwise).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write results here (default stdout).")
@batch_size_option
@click.option("--strict", "--strict-size", "strict", is_flag=True,
              help="Refuse image files whose size or channel count differs from the model's (default: resize or "
                   "convert, with a warning per item for the channels).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Image-decoding threads; more help only for large images.")
@click.option("--maps", "maps_dir", type=click.Path(file_okay=False), default=None,
              help="Write one PNG per input into this folder: image | reconstruction | anomaly map | defect map (with a "
                   "defect head).")
@click.option("--fail-on-outlier", is_flag=True, help="Exit with status 3 when any input is flagged.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Also write an HTML report of the scored inputs (kept in memory: use it on a sample).")
def score(paths: Sequence[str], runtime: Runtime, method: str | None, fpr: float | None, threshold: float | None,
          fmt: str | None, output: str | None, batch_size: int, strict: bool, workers: int, fail_on_outlier: bool,
          report_path: str | None, maps_dir: str | None) -> None:
    """Score images as outliers: PATHS are image files, folders, globs, .npy/.npz arrays or IDX files.

    Prints one row per input: score (higher = more anomalous), p-value against the bundle's
    calibration, and the outlier flag.
    """
    writable(output, "--output")
    writable(report_path, "--report")
    if threshold is not None and not math.isfinite(threshold):
        raise click.BadParameter(f"must be a finite number, got {threshold}", param_hint="--threshold")
    if fpr is not None and not 0.0 < fpr < 1.0:
        raise click.BadParameter(f"must be in (0, 1), got {fpr}", param_hint="--fpr")
    model = runtime.load_streaming(paths, method, workers)
    method = method or model.manifest.default_method  # resolved once, here; everything below is given it
    if model.manifest.tiling is not None:
        _score_tiled(model, paths, method, fpr, threshold, fmt, output, maps_dir, fail_on_outlier, report_path)
        return
    with errors(), warnings_to_stderr():
        thr = model.threshold(method, fpr) if threshold is None else threshold
    inputs = Inputs()
    counts = {"scored": 0, "outliers": 0}
    kept: list[tuple[list[str], Any, Any]] = []  # for --report: (names, images, ScoreResult) per batch
    with open_output(output) as out:
        writer = _ResultWriter(out, format_for(fmt, output, _FORMAT_BY_SUFFIX), method, thr)
        batches = inputs.batches(paths, model.contract, echo=False, batch_size=batch_size, workers=workers,
                                 strict_size=strict, strict_channels=strict)
        with _Progress(inputs, counts) as progress:
            for batch in batches:
                result = None
                if batch.images is not None:
                    with errors():
                        result = model.score(batch.images, method, threshold=thr)
                        if maps_dir is not None:
                            _write_maps(model, batch, result, maps_dir,
                                       counts["scored"] + inputs.failed - len(batch.failures))
                    if report_path:
                        kept.append((batch.names, batch.images, result))
                _write_batch(writer, batch, result, counts)
                progress.update()
    click.echo(f"{counts['scored']} scored with {method} (threshold {thr:.4g}): {counts['outliers']} outlier(s), "
               f"{inputs.failed} failed", err=True)
    if report_path and kept:
        _write_report(model, method, kept, inputs.failures, report_path)
    inputs.exit_if_failed()
    if fail_on_outlier and counts["outliers"]:
        sys.exit(EXIT_OUTLIER)


def _score_tiled(model: Model, paths: Sequence[str], method: str, fpr: float | None, threshold: float | None,
                 fmt: str | None, output: str | None, maps_dir: str | None, fail_on_outlier: bool,
                 report_path: str | None = None) -> None:
    """``score`` with a tiled bundle: every image at its own size (shrunk by the bundle's downscale), by tiles,
    one image at a time; a row per image as it is done, a failed image a row of its own."""
    from edgevae.runtime.tiles import TILE_BATCH

    tiling = model.tiling
    cal = tiling.calibration
    if cal is None or method not in cal.methods:
        raise click.UsageError(f"method {method} has no image-level calibration in this bundle")
    stored = cal.methods[method].threshold
    inputs = Inputs()
    counts = {"scored": 0, "outliers": 0}
    click.echo(f"tiled bundle: {tiling.tile[0]}x{tiling.tile[1]} tiles every {tiling.stride} px"
               + (f", images shrunk {tiling.downscale}x" if tiling.downscale > 1 else "") + f"; {tiling.note}", err=True)
    with open_output(output) as out:
        writer = _ResultWriter(out, format_for(fmt, output, _FORMAT_BY_SUFFIX), method, stored)
        pending: list[tuple[int, str, Any]] = []  # images waiting to share batches of tiles, in input order
        kept: list[tuple[str, Any, Any]] = []  # for --report: (name, image, TiledScore)

        def flush() -> None:
            total = sum(len(tiling.grid(im.shape[1], im.shape[2])) for _, _, im in pending)
            done = [0]

            def step(n: int) -> None:  # within a large image: how many of its tiles are scored
                done[0] += n
                if done[0] < total:
                    progress.update(f"; tiles {done[0]:,}/{total:,} of the next "
                                    + ("image" if len(pending) == 1 else f"{len(pending)} images"))

            with errors():
                results = model.score_tiled_many([im for _, _, im in pending], method, fpr=fpr, threshold=threshold,
                                                 progress=step)
            for (k, name, image), result in zip(pending, results):
                writer.row(name, result.score, result.p_value, result.is_outlier)
                counts["scored"] += 1
                counts["outliers"] += int(result.is_outlier)
                if maps_dir is not None:
                    _write_tiled_maps(model, image, name, k, result, maps_dir)
                if report_path:
                    kept.append((name, image, result))
            pending.clear()
            progress.update()

        with _Progress(inputs, counts) as progress:
            tiles = 0
            for k, (name, image, error) in enumerate(inputs.whole_images(paths, model.contract, tiling)):
                if image is None:
                    flush()
                    tiles = 0
                    writer.error(name, str(error))
                    continue
                pending.append((k, name, image))
                tiles += len(tiling.grid(image.shape[1], image.shape[2]))
                if tiles >= TILE_BATCH:
                    flush()
                    tiles = 0
            flush()
    click.echo(f"{counts['scored']} scored with {method} by tiles (threshold {stored:.4g} at the calibrated size, "
               f"adjusted per image for its number of tiles): {counts['outliers']} outlier(s), {inputs.failed} failed",
               err=True)
    if report_path and kept:
        from edgevae.runtime.report import ReportData, write_report

        data = ReportData.from_tiled(model, method, [n for n, _, _ in kept], [im for _, im, _ in kept],
                                     [r for _, _, r in kept], failures=inputs.failures)
        write_report(data, report_path)
        click.echo(f"wrote {report_path}: {len(data.names)} input(s), {int(data.flags.sum())} flagged", err=True)
    inputs.exit_if_failed()
    if fail_on_outlier and counts["outliers"]:
        sys.exit(EXIT_OUTLIER)


def _write_tiled_maps(model: Model, image: Any, name: str, position: int, result: Any, folder: str) -> None:
    """The full-resolution panel of one image scored by tiles: image | anomaly map (| defect map)."""
    import numpy as np

    from edgevae.runtime.grid import map_panel, save_png

    maps = model.tiled_maps(image)
    os.makedirs(folder, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(name))[0])[:60]
    flag = "OUTLIER" if result.is_outlier else "normal"
    panel = map_panel(np.asarray(image, np.float32) / 255.0, None, maps["anomaly"], scale=1,
                      defect_map=maps.get("defect"))
    save_png(panel, os.path.join(folder, f"{position:06d}_{stem}_{flag}_score{result.score:.4g}.png"))


class _Progress:
    """A running count on a terminal; when stderr is piped or logged, a line every ``PROGRESS_SECONDS``."""

    def __init__(self, inputs: Inputs, counts: dict[str, int]) -> None:
        self.inputs, self.counts = inputs, counts
        self.live = sys.stderr.isatty()
        self.last_line = time.monotonic()

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            click.echo("", err=True)

    def update(self, extra: str = "") -> None:
        from edgevae import cli

        progress = (f"{self.counts['scored']} scored, {self.counts['outliers']} outlier(s), "
                    f"{self.inputs.failed} failed{extra}")
        if self.live:
            click.echo(f"\r{progress}", nl=False, err=True)
        elif time.monotonic() - self.last_line >= cli.PROGRESS_SECONDS:
            click.echo(f"progress: {progress}", err=True)
            self.last_line = time.monotonic()


def _write_maps(model: Model, batch: Any, result: Any, folder: str, first: int) -> None:
    """One PNG per scored image of a batch: image | reconstruction | anomaly map (| defect map, when the bundle has
    a defect head); the name carries the input's position, its name, the flag and the score."""
    from edgevae.runtime.grid import map_panel, save_png

    maps, recon = model.map_and_reconstruction(batch.images)
    defects = model.defect_map(batch.images) if model.has_defect_head else None
    os.makedirs(folder, exist_ok=True)
    positions = {j: first + k for k, (failed, j) in enumerate(batch.order) if not failed}
    for i, name in enumerate(batch.names):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(name))[0])[:60]
        flag = "OUTLIER" if result.is_outlier[i] else "normal"
        position = positions[i]
        save_png(map_panel(batch.images[i], recon[i], maps[i], defect_map=None if defects is None else defects[i]),
                 os.path.join(folder, f"{position:06d}_{stem}_{flag}_score{float(result.scores[i]):.4g}.png"))


# Output formats of `score` by the extension of -o, when --format is not given.
_FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


class _ResultWriter:
    def __init__(self, out: IO[str], fmt: str, method: str, threshold: float) -> None:
        self.out, self.fmt, self.method = out, fmt, method
        if fmt == "csv":
            self.csv = csv.writer(out)
            self.csv.writerow(["item", "method", "score", "p_value", "outlier", "error", "warning"])
        elif fmt == "table":
            out.write(f"{'score(' + method + ')':>14}  {'p_value':>8}  {'outlier':<7}  item\n")

    def row(self, name: str, s: float, p: float, flag: bool, warning: str = "") -> None:
        if self.fmt == "csv":
            self.csv.writerow([name, self.method, f"{s:.6g}", f"{p:.6g}", int(flag), "", warning])
        elif self.fmt == "jsonl":
            extra = {"warning": warning} if warning else {}
            self.out.write(json.dumps({"item": name, "method": self.method, "score": s, "p_value": p,
                                       "outlier": flag, **extra}) + "\n")
        else:
            # p-values above the calibration's tail can be far below 1e-4: show them with 3 significant digits
            self.out.write(f"{s:14.4f}  {p:8.3g}  {'OUTLIER' if flag else '-':<7}  {name}\n")

    def error(self, name: str, message: str) -> None:
        if self.fmt == "csv":
            self.csv.writerow([name, self.method, "", "", "", message, ""])
        elif self.fmt == "jsonl":
            self.out.write(json.dumps({"item": name, "method": self.method, "error": message}) + "\n")


def _write_batch(writer: _ResultWriter, batch: Any, result: Any, counts: dict[str, int]) -> None:
    """One batch's rows in input order (failures where they came, reported on stderr too), and the counts."""
    for failed, i in batch.order:
        if failed:
            name, err = batch.failures[i]
            click.echo(f"error: {err}", err=True)
            writer.error(name, str(err))
        elif result is not None:
            warning = batch.warnings[i] if batch.warnings else ""
            if warning:
                click.echo(f"warning: {batch.names[i]}: {warning}", err=True)
            writer.row(batch.names[i], float(result.scores[i]), float(result.p_values[i]), bool(result.is_outlier[i]),
                       warning)
    if result is not None:
        counts["scored"] += len(batch.names)
        counts["outliers"] += int(result.is_outlier.sum())


def _write_report(model: Model, method: str, kept: list[tuple[list[str], Any, Any]], failures: list[tuple[str, str]],
                  path: str) -> None:
    """The HTML report of the batches `score` kept: no input is read or scored twice."""
    from edgevae.runtime.report import ReportData, write_report

    data = ReportData.from_batches(model, method, kept, failures)
    write_report(data, path)
    click.echo(f"wrote {path}: {len(data.names)} input(s), {int(data.flags.sum())} flagged", err=True)
