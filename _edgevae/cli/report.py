"""``edgevae report``: one self-contained HTML report of scored inputs."""

from __future__ import annotations

from typing import Any, Sequence

import click

from .common import InputProblem, Inputs, Runtime, errors, method_choice, runtime_options, writable


@click.command()
@click.argument("paths", nargs=-1)
@runtime_options
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--method", type=method_choice(), default=None, help="Score method (default: the bundle's).")
@click.option("--normal", "normal_paths", multiple=True, help="Inputs known to be normal (repeatable): with --anomalous, "
              "the report includes the evaluation.")
@click.option("--anomalous", "anomalous_paths", multiple=True, help="Inputs known to be anomalous (repeatable).")
@click.option("--top", type=click.IntRange(1, 500), default=12, show_default=True, help="Most anomalous inputs shown.")
def report(paths: Sequence[str], runtime: Runtime, output: str, method: str | None, normal_paths: Sequence[str],
           anomalous_paths: Sequence[str], top: int) -> None:
    """Write one self-contained HTML report (images inline, no network): score distribution over the calibration,
    threshold, flag rate, the most anomalous inputs beside their reconstructions and residuals, and the bundle.
    A tiled bundle scores each image whole by tiles and shows its stitched maps. Every input is kept in memory:
    report on a sample of a large set."""
    import numpy as np

    from edgevae.runtime.report import ReportData, write_report

    if not (paths or normal_paths or anomalous_paths):
        raise click.UsageError("give inputs: PATH... and/or --normal / --anomalous")
    writable(output, "--output")
    model = runtime.load()
    tiling = model.manifest.tiling
    inputs = Inputs()
    names: list[str] = []
    labels: list[str] = []
    images: list[Any] = []
    for label, group in (("", paths), ("normal", normal_paths), ("anomalous", anomalous_paths)):
        if tiling is not None:  # whole images of their own sizes, scored by tiles
            for name, image, _ in inputs.whole_images(group, model.contract, tiling) if group else []:
                if image is not None:
                    images.append(image)
                    names.append(name)
                    labels.append(label)
            continue
        for batch in inputs.batches(group, model.contract) if group else []:
            if batch.images is not None:
                images.append(batch.images)
                names += batch.names
                labels += [label] * len(batch.names)
    if not images:
        raise InputProblem("no input could be read; nothing to report")
    chosen = method or model.manifest.default_method
    with errors():
        data = (ReportData.score(model, chosen, names, np.concatenate(images), labels, inputs.failures)
                if tiling is None else ReportData.score_tiled(model, chosen, names, images, labels, inputs.failures))
        write_report(data, output, top)
    click.echo(f"wrote {output}: {len(data.names)} input(s), {int(data.flags.sum())} flagged", err=True)
    inputs.exit_if_failed()
