"""``edgevae info``: a bundle's manifest, signature, graphs and providers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgevae.runtime.methods import METHODS

from .common import TRUSTED_KEY_HELP, Runtime, errors


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--providers", default="auto", show_default=True)
@click.option("--trusted-key", multiple=True, type=click.Path(dir_okay=False), help=TRUSTED_KEY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the full manifest as JSON.")
def info(bundle: str, providers: str, trusted_key: tuple[str, ...], as_json: bool) -> None:
    """Show a bundle's manifest, signature, graph inputs/outputs and execution providers."""
    from edgevae.runtime.sessions import available_providers
    from edgevae.runtime.signing import describe_signature

    model = Runtime(bundle, providers, None, False, None, trusted_key).load()
    m = model.manifest
    if as_json:
        click.echo(json.dumps(dict(m.raw), indent=2))
        return
    raw = m.raw
    c = m.contract
    tr = raw.get("training", {})
    click.echo(f"bundle        {bundle}  (schema {raw['schema_version']}, edgevae {raw['producer']['edgevae']}, "
               f"opset {raw['opset']})")
    click.echo(f"input         {c.channels}x{c.height}x{c.width} float32 in [0, 1]; files: {c.to_dict()['file_conversion']}, "
               f"{c.resize} resize")
    sp = m.scoring
    click.echo(f"latent        {sp.latent_dim}   likelihood {sp.likelihood}   prior N(0, I)")
    click.echo(f"training      {tr.get('data', {}).get('source')} classes={tr.get('data', {}).get('classes')}  "
               f"n_train={tr.get('n_train')}  epochs={tr.get('epochs')}  val -ELBO={tr.get('val_neg_elbo', 0):.2f}")
    click.echo(f"scoring       default {sp.default_method}; elbo K={sp.elbo_samples}, iwae K={sp.iwae_samples}, "
               f"smooth_recon sigma={sp.smooth_sigma:g} px; seed={sp.seed}")
    if m.map is not None:
        click.echo(f"maps          {m.map.file}: residual smoothed {m.map.sigma:g} px, standardised per pixel; "
                   f"local = mean of the top {m.map.top_k} of {c.height * c.width} pixels; combined = "
                   f"{' + '.join(sp.combined_parts)} (elbo part K={sp.part_elbo_samples}; "
                   + (f"shares of the false-alarm budget "
                      + ", ".join(f"{p} {w / sum(sp.combined_weights):.3g}"
                                  for p, w in zip(sp.combined_parts, sp.combined_weights))
                      if sp.combined_weights else "equal shares") + ")")
    if m.defect is not None:
        d = m.defect.raw
        trained = d.get("training") or {}
        members = int(d.get("members") or 1)
        layout = ("one logit per pixel" if d.get("resolution") == "full"
                  else f"{d.get('upsampling', 'bilinear')} from half resolution")
        click.echo(f"defect head   {m.defect.file}: {d.get('parameters', '?')} weights, "
                   + (f"the mean of {members} heads from successive seeds, each " if members > 1 else "")
                   + f"trained {trained.get('steps', '?')} steps on synthetic defects"
                   + (f" and {d['labelled_defects']} labelled defective image"
                      f"{'s' if d['labelled_defects'] != 1 else ''}" if d.get("labelled_defects") else "")
                   + f"; map = sigmoid of its logits (any image size, {layout}); defect = largest mean logit "
                   f"over {sp.defect_window}x{sp.defect_window} px")
    else:
        click.echo("defect head   none (bundle made without one: no defect map or defect score)")
    if m.tiling is not None:
        t = m.tiling
        shrink = f", images shrunk {t.downscale}x first" if t.downscale > 1 else ""
        head = " (the residual and the defect head's logits)" if t.defect_map is not None else ""
        aligned = (f", each frame aligned to the scene within {t.alignment['radius']} px" if t.alignment is not None
                   else "")
        camera = (f"per position of {t.frame[0]}x{t.frame[1]} frames{head} (a fixed camera{aligned}; other sizes are "
                  "refused)" if t.positional and t.frame is not None else "position-free (a stationary surface)")
        click.echo(f"tiles         {t.tile[0]}x{t.tile[1]} tiles every {t.stride} px{shrink}; image score = {t.aggregate} "
                   f"of the tile scores; statistics {camera}; "
                   f"{t.note}")
    else:
        click.echo(f"tiles         none: every image is resized to {c.height}x{c.width} (train --tile to score large images by tiles)")
    methods = ", ".join(f"{name} ({METHODS[name].kind})" for name in model.computable_methods)
    click.echo(f"methods       {methods}")
    if m.min_fpr is not None:
        click.echo(f"calibration   {m.calibration_n} held-out images: the smallest false-positive rate they can "
                   f"promise is 1/(n+1) = {m.min_fpr:.4g} (stored thresholds at {m.calibration_fpr:g})")
    for method, cal in m.calibration.items():
        tail = (f", tail shape {cal.tail.shape:+.2f} over the top {cal.tail.fraction:.0%}" if cal.tail is not None
                else ", empirical quantile")
        click.echo(f"  {method:<12} threshold {cal.threshold:10.4f} at FPR {m.calibration_fpr:g} "
                   f"(n={len(cal.scores)}{tail})")
    for name, gi in model.graph_info().items():
        click.echo(f"{name + '.onnx':<13} {m.files[name + '.onnx']['bytes'] / 1e6:.2f} MB")  # the fp32 file's size
        for arg, shape, typ in gi.inputs:
            click.echo(f"  in   {arg:<8} {shape} {typ}")
        for arg, shape, typ in gi.outputs:
            click.echo(f"  out  {arg:<8} {shape} {typ}")
    click.echo(f"parity        max |onnxruntime - torch| {max(raw['parity']['max_abs_diff'].values()):.2e}")
    with errors():
        click.echo(f"signature     {describe_signature(Path(bundle), m.raw)}")
    for name, variant in m.variants.items():
        size = sum(m.files[f]["bytes"] for f in variant.graph_files) / 1e6
        corr = min(variant.raw.get("rank_correlation", {}).values(), default=float("nan"))
        click.echo(f"variant       {name:<9} {', '.join(variant.graph_files)}  {size:.2f} MB  "
                   f"min rank correlation with fp32 {corr:.4f}")
    click.echo(f"providers     available: {', '.join(available_providers())}")
    click.echo(f"              active:    {', '.join(model.providers['encoder'])}")
