"""``edgevae evaluate``: detection figures on labelled inputs, per method."""

from __future__ import annotations

import csv
import json
from typing import IO, Any, Sequence

import click

from .common import Inputs, Runtime, batch_size_option, errors, format_for, method_choice, open_output, runtime_options, writable


@click.command()
@runtime_options
@click.option("--normal", "normal_paths", multiple=True, required=True,
              help="Normal inputs: image files, folders, globs, arrays or IDX files (repeatable).")
@click.option("--anomalous", "anomalous_paths", multiple=True, required=True,
              help="Anomalous inputs, the same kinds (repeatable).")
@click.option("--method", "methods", multiple=True, type=method_choice(),
              help="Score method (repeatable; default: every method the bundle calibrates).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default=None,
              help="Output format (default: from the -o extension, .csv or .json; table otherwise).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write results here (default stdout).")
@batch_size_option
def evaluate(runtime: Runtime, normal_paths: Sequence[str], anomalous_paths: Sequence[str], methods: Sequence[str],
             fmt: str | None, output: str | None, batch_size: int) -> None:
    """Measure detection on labelled inputs: AUROC, average precision, FPR at 95 % TPR, and the confusion counts at
    the bundle's threshold, per method (anomalous = positive). A tiled bundle scores each image whole by tiles, at
    its image-level threshold for the calibrated size."""
    import numpy as np

    from edgevae.runtime.evaluation import evaluate_scores
    from edgevae.runtime.tiles import tiled_image_scores

    writable(output, "--output")
    model = runtime.load()
    chosen = list(methods) or list(model.methods)
    inputs = Inputs()
    scores: dict[str, dict[str, list[Any]]] = {m: {"normal": [], "anomalous": []} for m in chosen}
    tiling = model.manifest.tiling
    image_level = tiling.calibration if tiling is not None else None
    if tiling is not None:
        chosen = [m for m in chosen if image_level is not None and m in image_level.methods]
    for group, paths in (("normal", normal_paths), ("anomalous", anomalous_paths)):
        if tiling is not None:  # each image whole, by tiles: the image-level scores
            for _, image, _ in inputs.whole_images(paths, model.contract, tiling):
                if image is not None:
                    with errors():
                        for method, value in tiled_image_scores(model, image, chosen).items():
                            scores[method][group].append(np.array([value]))
            continue
        for batch in inputs.batches(paths, model.contract, batch_size=batch_size):
            if batch.images is not None:
                with errors():
                    for method in chosen:
                        scores[method][group].append(model.raw_scores(batch.images, method))
    with errors():
        results = [evaluate_scores(m, np.concatenate(scores[m]["normal"] or [np.zeros(0)]),
                                   np.concatenate(scores[m]["anomalous"] or [np.zeros(0)]),
                                   model.threshold(m) if image_level is None else image_level.methods[m].threshold)
                   for m in chosen]
    with open_output(output) as out:
        _write_evaluation(out, format_for(fmt, output, _FORMAT_BY_SUFFIX), [r.to_dict() for r in results])
    inputs.exit_if_failed()


# Output formats of `evaluate` by the extension of -o, when --format is not given.
_FORMAT_BY_SUFFIX = {".csv": "csv", ".json": "json"}


def _write_evaluation(out: IO[str], fmt: str, rows: list[dict[str, Any]]) -> None:
    if fmt == "json":
        out.write(json.dumps(rows, indent=2) + "\n")
        return
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return
    out.write(f"{'method':<13} {'AUROC':>6} {'AP':>6} {'FPR@95TPR':>9} {'threshold':>10} {'TP':>5} {'FP':>5} {'TN':>5} "
              f"{'FN':>5}  (normal {rows[0]['n_normal']}, anomalous {rows[0]['n_anomalous']})\n")
    for r in rows:
        out.write(f"{r['method']:<13} {r['auroc']:6.3f} {r['average_precision']:6.3f} {r['fpr_at_95_tpr']:9.3f} "
                  f"{r['threshold']:10.4g} {r['true_positives']:5d} {r['false_positives']:5d} {r['true_negatives']:5d} "
                  f"{r['false_negatives']:5d}\n")
