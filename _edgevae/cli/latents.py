"""``edgevae encode``, ``generate`` and ``reconstruct``: the latent space and the decoder."""

from __future__ import annotations

import json
import os
from typing import Sequence

import click

from .common import InputProblem, Inputs, Runtime, batch_size_option, errors, open_output, runtime_options, save_numpy, writable


@click.command()
@click.argument("paths", nargs=-1, required=True)
@runtime_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file: .npy (mu), .npz (items, mu, logvar, kl) or .jsonl.")
@batch_size_option
@click.option("--strict", "--strict-size", "strict_size", is_flag=True,
              help="Refuse image files whose size or channel count differs from the model's (default: convert).")
def encode(paths: Sequence[str], runtime: Runtime, output: str, batch_size: int, strict_size: bool) -> None:
    """Encode images to latent codes (posterior means and log-variances)."""
    import numpy as np

    suffix = os.path.splitext(output)[1].lower()
    if suffix not in (".npy", ".npz", ".jsonl"):
        raise click.BadParameter("must end in .npy, .npz or .jsonl", param_hint="--output")
    writable(output, "--output")
    model = runtime.load_streaming(paths, "kl", 1)  # the encoder alone, as kl runs it
    inputs = Inputs()
    names: list[str] = []
    mus, logvars, kls = [], [], []
    for batch in inputs.batches(paths, model.contract, batch_size=batch_size, strict_size=strict_size,
                                strict_channels=strict_size):
        if batch.images is not None:
            with errors():
                mu, logvar, kl = model.encode(batch.images)
            names += batch.names
            mus.append(mu)
            logvars.append(logvar)
            kls.append(kl)
    if not names:
        raise InputProblem("no input could be read; nothing to encode")
    mu_all, lv_all, kl_all = np.concatenate(mus), np.concatenate(logvars), np.concatenate(kls)
    if suffix == ".jsonl":
        with open_output(output) as out:
            for i, name in enumerate(names):
                out.write(json.dumps({"item": name, "mu": mu_all[i].tolist(), "logvar": lv_all[i].tolist(),
                                      "kl": float(kl_all[i])}) + "\n")
    else:
        if suffix == ".npy":
            save_numpy(output, mu_all)
        else:
            save_numpy(output, items=np.array(names), mu=mu_all, logvar=lv_all, kl=kl_all)
    click.echo(f"encoded {len(names)} item(s) to {output} (latent size {model.latent_dim}); {inputs.failed} failed",
               err=True)
    inputs.exit_if_failed()


@click.command()
@runtime_options
@click.option("-n", "--count", type=click.IntRange(min=1, max=10000), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", default="generated.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--columns", type=click.IntRange(min=1), default=None, help="Grid columns (default: square).")
@click.option("--npy", "npy_path", type=click.Path(dir_okay=False), default=None,
              help="Also save the images as float32 .npy (N, C, H, W).")
def generate(runtime: Runtime, count: int, seed: int, output: str, columns: int | None, npy_path: str | None) -> None:
    """Generate new images: decode t ~ N(0, I) and save them as a PNG grid."""
    from edgevae.runtime.grid import save_grid

    writable(output, "--output")
    writable(npy_path, "--npy")
    model = runtime.load()
    images = model.generate(count, seed=seed)
    with errors():
        save_grid(images, output, columns)
        if npy_path:
            save_numpy(npy_path, images)
    click.echo(f"wrote {count} generated image(s) to {output} (seed {seed})")


@click.command()
@click.argument("paths", nargs=-1, required=True)
@runtime_options
@click.option("-o", "--output", default="reconstructions.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=64, show_default=True, help="At most this many inputs.")
def reconstruct(paths: Sequence[str], runtime: Runtime, output: str, limit: int) -> None:
    """Save inputs beside their reconstructions as a PNG (pairs of columns: input, reconstruction)."""
    import numpy as np

    from edgevae.runtime.grid import save_grid

    writable(output, "--output")
    model = runtime.load()
    inputs = Inputs()
    _, x = inputs.collect(paths, model.contract, "reconstruct", limit=limit, batch_size=limit)
    recon = model.reconstruct(x)
    pairs = np.stack([x, recon], axis=1).reshape((-1,) + x.shape[1:])  # input, reconstruction, ...
    with errors():
        save_grid(pairs, output, columns=min(16, 2 * len(x)))
    click.echo(f"wrote {len(x)} input/reconstruction pair(s) to {output}")
    inputs.exit_if_failed()
