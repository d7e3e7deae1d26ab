"""``edgevae export``: a checkpoint to a verified, calibrated bundle (needs the training extra)."""

from __future__ import annotations

from typing import Any

import click

from edgevae.runtime import options

from .common import errors, given, method_choice, need_training, warnings_to_stderr


def parse_weights(value: str | None) -> dict[str, float] | None:
    """``--combine-weights``: None (not given), {} for ``equal``, else part -> weight."""
    if value is None:
        return None
    if value.strip() == "equal":
        return {}
    out: dict[str, float] = {}
    for item in value.split(","):
        name, sep, number = item.partition("=")
        try:
            weight = float(number)
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or not weight > 0 or weight == float("inf"):
            raise click.BadParameter(f"{item.strip()!r} is not part=weight with a positive weight; write for example "
                                     "'defect=4' (unnamed parts weigh 1) or 'equal'")
        out[name.strip()] = weight
    return out


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("-o", "--out", "bundle_dir", required=True, type=click.Path(file_okay=False), help="Bundle folder to write.")
@click.option("--fpr", type=float, show_default=str(options.CALIBRATION_FPR),
              help="False-positive rate of stored thresholds.")
@click.option("--elbo-samples", type=click.IntRange(1, options.ELBO_SAMPLES_MAX), show_default=str(options.ELBO_SAMPLES),
              help="Monte-Carlo samples of the elbo score.")
@click.option("--iwae-samples", type=click.IntRange(1, options.IWAE_SAMPLES_MAX), show_default=str(options.IWAE_SAMPLES),
              help="Importance samples of the iwae score.")
@click.option("--method", "default_method", type=method_choice(),
              show_default=options.DEFAULT_METHOD, help="Default score method of the bundle.")
@click.option("--smooth-sigma", type=click.FloatRange(0, options.SMOOTH_SIGMA_MAX, min_open=True),
              show_default=str(options.SMOOTH_SIGMA),
              help="Gaussian width (pixels) of the smooth_recon score and the anomaly maps.")
@click.option("--combine", "combined_parts", show_default=",".join(options.COMBINED_PARTS),
              help="The methods the combined score joins through their p-values, comma-separated.")
@click.option("--combine-weights", "combined_weights", callback=lambda ctx, param, value: parse_weights(value),
              show_default="equal; a tiled run with a defect head: defect=(parts - 1), half the budget",
              help="Weights of the combined score's parts, as part=weight pairs (unnamed parts weigh 1), or 'equal': "
                   "a part of weight w gets the share k*w/sum(w) of the false-alarm budget.")
@click.option("--defect-window", type=click.IntRange(1, 255),
              show_default=f"{options.DEFECT_WINDOW}; {options.TILED_DEFECT_WINDOW} for a tiled run",
              help="Side (pixels) of the square the defect score averages the defect head's logits over.")
@click.option("--defect-upsampling", type=click.Choice(options.DEFECT_UPSAMPLINGS),
              show_default=f"{options.DEFECT_UPSAMPLING}; {options.TILED_DEFECT_UPSAMPLING} for a stationary surface's tiled run",
              help="How the defect graph brings the head's half-resolution logits to the image's size: 'bilinear' "
                   "(a smooth map) or 'nearest' (2x2 blocks; the map keeps the head's own peaks, which bilinear "
                   "lowers on thin defects).")
@click.option("--tile-stride", type=click.IntRange(min=1), show_default="half a tile",
              help="A tiled run (train --tile): pixels between neighbouring tiles when scoring large images.")
@click.option("--camera", type=click.Choice(("auto", "fixed", "surface")), show_default="auto",
              help="A tiled run: 'fixed' (the same scene in every frame of one size: map statistics per position), "
                   "'surface' (textures, tissue, webs: position-free), or 'auto' (chosen from the training frames).")
@click.option("--align-radius", type=click.IntRange(0, 8), show_default="2",
              help="A fixed camera: match each frame to the scene within this many pixels in each direction before "
                   "reading its per-position statistics (a camera that vibrates or was remounted); 0 turns it off.")
@click.option("--no-defect-head", "defect_head", flag_value=False, default=None,
              help="Leave the run's defect head (defect.pt) out of the bundle.")
@click.option("--quantize", type=click.Choice(options.QUANTIZE_VARIANTS),
              help="Add a static QDQ variant, calibrated on training images.")
@click.option("--precision", type=click.Choice(options.PRECISION_VARIANTS), help="Add a lower-precision float variant.")
@click.option("--ort-format", is_flag=True, help="Also write every graph in the ORT format (mobile/minimal builds).")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False),
              help="Sign the bundle with this Ed25519 private key ('edgevae keygen').")
def export(checkpoint: str, bundle_dir: str, quantize: str | None, precision: str | None, ort_format: bool,
           force: bool, sign_key: str | None, **settings: Any) -> None:
    """Export CHECKPOINT (a .pt file or run folder) to a verified, calibrated bundle."""
    need_training("export")
    from edgevae.export import ExportConfig, export_bundle

    with errors():
        if settings["combined_parts"] is not None:
            settings["combined_parts"] = tuple(p.strip() for p in settings["combined_parts"].split(","))
        cfg = ExportConfig(**given(**settings), variants=tuple(v for v in (quantize, precision) if v),
                           ort_format=ort_format)
        with warnings_to_stderr():
            model = export_bundle(checkpoint, bundle_dir, cfg, force=force, sign_key=sign_key,
                                  progress=lambda msg: click.echo(msg, err=True))
    parity = model.manifest.raw["parity"]["max_abs_diff"]
    sizes = ", ".join(f"{name} {entry['bytes'] / 1e6:.2f} MB" for name, entry in model.manifest.files.items())
    click.echo(f"bundle: {bundle_dir}  (max parity diff {max(parity.values()):.2e}; {sizes})")
    model.close()
