"""``edgevae calibrate``: re-measure a bundle's calibration on the user's normal images."""

from __future__ import annotations

from typing import Any, Sequence

import click

from .common import InputProblem, Inputs, errors, warnings_to_stderr


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("paths", nargs=-1, required=True)
@click.option("--fpr", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=None,
              help="False-positive rate of the new thresholds (default: the bundle's).")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False),
              help="Sign the recalibrated bundle with this Ed25519 private key (a signature is otherwise removed).")
@click.option("--mode", type=click.Choice(["auto", "pool", "replace"]), default="auto", show_default=True,
              help="auto: pool your images with the stored calibration images when their scores are consistent with "
                   "them (a KS test per method), else calibrate on yours alone; pool / replace: always do that.")
def calibrate(bundle: str, paths: Sequence[str], fpr: float | None, sign_key: str | None, mode: str) -> None:
    """Re-measure BUNDLE's calibration on your own held-out normal images (PATHS, as for score).

    Every method and every variant is calibrated again; the old calibration stays in the manifest's
    calibration_history; the bundle is rewritten atomically with new checksums. Images like the stored calibration
    images are pooled with them (a threshold at 1 % from 100 images alone is noisy); images that differ (a new
    camera, new lighting) replace them.
    """
    from edgevae.runtime import read_manifest
    from edgevae.runtime.recalibrate import recalibrate

    with errors():
        manifest = read_manifest(bundle)
    inputs = Inputs()
    if manifest.tiling is not None:  # whole images at their own size: the image-level calibration needs them
        images: Any = _whole_images(paths, manifest, inputs)
    else:
        _, images = inputs.collect(paths, manifest.contract, "calibrate on")
    with errors(), warnings_to_stderr():
        written = recalibrate(bundle, images, fpr, sign_key=sign_key, mode=mode)
    cal = written["calibration"]
    if "tiling" in written:
        whole = written["tiling"]["calibration"]
        click.echo(f"recalibrated tiled {bundle}: image scores on {whole['n']} whole images at FPR {whole['fpr']:g} "
                   f"(smallest it can promise: {whole['min_fpr']:.4g}), tile scores on {cal['n']} grid tiles; "
                   "previous calibration kept in calibration_history")
    else:
        record = cal.get("recalibration", {})
        click.echo(f"recalibrated {bundle} on {cal['n']} images at FPR {cal['fpr']:g} (smallest it can promise: "
                   f"{cal['min_fpr']:.4g}); {record.get('decision', 'replaced')}: {record.get('reason', '')}; "
                   "previous calibration kept in calibration_history")
    inputs.exit_if_failed()


def _whole_images(paths: Sequence[str], manifest: Any, inputs: Inputs) -> list[Any]:
    """A tiled bundle's calibration images: every readable image file at its own size."""
    out = [image for _, image, _ in inputs.whole_images(paths, manifest.contract, manifest.tiling) if image is not None]
    if not out:
        raise InputProblem("no input could be read; nothing to calibrate on")
    return out
