"""``edgevae samples``: demo PNGs of digits and synthetic outliers."""

from __future__ import annotations

import click

from .common import errors


@click.command()
@click.option("-o", "--out", "folder", default="samples", show_default=True, type=click.Path(file_okay=False))
@click.option("--per-class", type=click.IntRange(1, 100), default=1, show_default=True)
def samples(folder: str, per_class: int) -> None:
    """Write demo PNGs: held-out test digits (normal/) and synthetic outliers (outliers/)."""
    from edgevae.training.samples import write_samples

    with errors():
        normal, outliers = write_samples(folder, per_class=per_class)
    click.echo(f"wrote {len(normal)} digits to {folder}/normal and {len(outliers)} outliers to {folder}/outliers")
