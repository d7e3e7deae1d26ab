"""``edgevae calibrate``: re-measure a bundle's calibration on the user's normal images."""

from __future__ import annotations

from typing import Sequence

import click

from .common import Inputs, errors, warnings_to_stderr


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("paths", nargs=-1, required=True)
@click.option("--fpr", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=None,
              help="False-positive rate of the new thresholds (default: the bundle's).")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False),
              help="Sign the recalibrated bundle with this Ed25519 private key (a signature is otherwise removed).")
def calibrate(bundle: str, paths: Sequence[str], fpr: float | None, sign_key: str | None) -> None:
    """Re-measure BUNDLE's calibration on your own held-out normal images (PATHS, as for score).

    Every method and every variant is calibrated again; the old calibration stays in the manifest's
    calibration_history; the bundle is rewritten atomically with new checksums.
    """
    from edgevae.runtime import read_manifest
    from edgevae.runtime.recalibrate import recalibrate

    with errors():
        contract = read_manifest(bundle).contract
    inputs = Inputs()
    _, images = inputs.collect(paths, contract, "calibrate on")
    with errors(), warnings_to_stderr():
        manifest = recalibrate(bundle, images, fpr, sign_key=sign_key)
    cal = manifest["calibration"]
    click.echo(f"recalibrated {bundle} on {cal['n']} images at FPR {cal['fpr']:g} (smallest it can promise: "
               f"{cal['min_fpr']:.4g}); previous calibration kept in calibration_history")
    inputs.exit_if_failed()
