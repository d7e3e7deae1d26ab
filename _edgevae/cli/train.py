"""``edgevae train``: train a VAE on normal images (needs the training extra)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from edgevae.runtime import options

from .common import errors, given, need_training


@click.command()
@click.option("--data", "source", default="embedded", show_default=True,
              help="'embedded' (5,000 MNIST digits in the package), an image folder, a .npy/.npz file or an IDX file.")
@click.option("--classes", default=None, help="Keep only these labels, comma-separated (one-class: --classes 3).")
@click.option("--labels", default=None, help="Labels for --classes: IDX/.npy file, or the key inside an .npz.")
@click.option("-o", "--out", "run_dir", default="runs/default", show_default=True, type=click.Path(file_okay=False),
              help="Run folder for best.pt, last.pt and metrics.json.")
@click.option("--epochs", type=click.IntRange(min=1), show_default=str(options.EPOCHS),
              help="Passes over the data; the default suits a few thousand images.")
@click.option("--batch-size", type=click.IntRange(min=1), show_default=str(options.BATCH_SIZE))
@click.option("--lr", type=float, show_default=str(options.LEARNING_RATE), help="Adam learning rate (cosine-decayed).")
@click.option("--latent-dim", type=click.IntRange(min=1), show_default="by the rule",
              help=f"Latent size (the rule: {options.LATENT_DIM} for 1x28x28, doubling per 4x more values).")
@click.option("--widths", show_default="by the rule",
              help=f"Channels of the stride-2 conv stages (the rule: stages down to <= {options.BOTTLENECK_MAX}x"
                   f"{options.BOTTLENECK_MAX}, {options.WIDTH_START} doubling up to {options.WIDTH_MAX}).")
@click.option("--hidden", type=click.IntRange(min=1), show_default="by the rule")
@click.option("--refine", type=click.IntRange(min=0), show_default=str(options.REFINE),
              help="Channels of a full-resolution 3x3 conv ending the decoder (0: none; about 2x decoder FLOPs).")
@click.option("--likelihood", type=click.Choice(options.LIKELIHOODS), show_default=options.LIKELIHOOD)
@click.option("--activation", type=click.Choice(options.ACTIVATIONS), show_default=options.ACTIVATION,
              help="Between the decoder's layers (the encoder has its own, --encoder-activation); relu folds into "
                   "int8 convolutions.")
@click.option("--encoder-activation", type=click.Choice(options.ACTIVATIONS), show_default=options.ENCODER_ACTIVATION,
              help="The encoder's own activation (relu: a faster int8 encoder; silu with --activation silu: the "
                   "all-SiLU model of earlier versions).")
@click.option("--channels", type=click.Choice([str(c) for c in options.CHANNELS]),
              help="Image channels (default: from the data).")
@click.option("--size", default=None, help="Image size HxW or N (default: from the data; image files are resized).")
@click.option("--tile", type=click.IntRange(min=8), default=None,
              help="Train on random TILE x TILE tiles cut from images at their own size (any size >= one tile, "
                   "mixed sizes allowed); the bundle then scores large images by tiles instead of shrinking them.")
@click.option("--downscale", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --tile: shrink every image by this whole factor first (and when scoring).")
@click.option("--tiles-per-epoch", type=click.IntRange(min=1), default=None, show_default="auto",
              help=f"With --tile: random tiles per epoch (auto: one per tile-sized area of the training images, "
                   f"{options.TILES_PER_EPOCH_MIN}-{options.TILES_PER_EPOCH_MAX}).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), show_default="auto",
              help=f"Share held out for validation and calibration; auto: {options.VAL_FRACTION:g}, raised to "
                   f"{options.CALIBRATION_IMAGES} images up to {options.VAL_FRACTION_MAX:g} (a 1 % threshold needs them).")
@click.option("--beta", type=float, show_default=str(options.BETA), help="KL weight after warm-up.")
@click.option("--kl-warmup", type=click.IntRange(min=0), show_default=str(options.KL_WARMUP_EPOCHS),
              help="KL warm-up epochs.")
@click.option("--augment-shift", type=click.IntRange(0, options.AUGMENT_SHIFT_MAX),
              show_default=str(options.AUGMENT_SHIFT),
              help="Random translation of training images by whole pixels, up to this many (0: off).")
@click.option("--augment-rotate", type=click.FloatRange(0, options.AUGMENT_ROTATE_MAX),
              show_default=str(options.AUGMENT_ROTATE), help="Random rotation of training images, in degrees.")
@click.option("--defect-head/--no-defect-head", default=None, show_default=str(options.DEFECT_HEAD).lower(),
              help="After the VAE, train the defect head on synthetic defects made from the training images "
                   "(never longer than the VAE took); export ships it as defect.onnx.")
@click.option("--defect-steps", type=click.IntRange(min=1), show_default=str(options.DEFECT_STEPS),
              help="The defect head's optimizer steps (fewer if the VAE's training time runs out first, unless "
                   "--no-defect-time-cap).")
@click.option("--defect-time-cap/--no-defect-time-cap", default=None, show_default="on",
              help="Stop the defect head when it has trained as long as the VAE did (twice as long at full "
                   "resolution, whose steps cost up to twice as much). --no-defect-time-cap trains "
                   "every --defect-steps step however long it takes, so that a run's head is the same on a busy "
                   "machine as on an idle one.")
@click.option("--defect-widths", default=None, show_default=",".join(map(str, options.DEFECT_WIDTHS)),
              help="The defect head's channels at 1/2, 1/4 and 1/8 of the input's resolution, comma-separated. A wider "
                   "head costs about the square of the ratio in compute wherever it scores (docs/scoring.md).")
@click.option("--defect-resolution", type=click.Choice(options.DEFECT_RESOLUTIONS), default=None,
              show_default="full with --tile, else half",
              help="Where the defect head makes its logits: half (upsampled to the image's size) or full (a "
                   "full-resolution stage at each end of the head: one logit per pixel, for thin defects, at about "
                   "2.3 times the head's time; docs/scoring.md).")
@click.option("--defect-heads", type=click.IntRange(1, options.DEFECT_MEMBERS_MAX),
              show_default=str(options.DEFECT_HEADS),
              help="Train this many defect heads from successive seeds and ship the mean of their logits as one "
                   "head: fewer seed-dependent false peaks on textures, at this many times the head's training and "
                   "scoring time (docs/scoring.md).")
@click.option("--labelled-defects", type=click.Path(exists=True, file_okay=False), default=None,
              help="A folder of your own defective images, each NAME.png with a NAME_mask.png beside it (white on the "
                   "defect): the defect head trains on them beside its synthetic defects. A few per kind help most "
                   "on rough textures (docs/scoring.md).")
@click.option("--seed", type=int, show_default=str(options.SEED))
@click.option("--plain", is_flag=True,
              help="Train the plain-autoencoder limit (s = 0: no sampling, no KL term), to compare with the VAE.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt.")
@click.option("--device", type=click.Choice(options.DEVICES), default=options.DEVICE, show_default=True,
              help="auto: a CUDA GPU when PyTorch sees one (one per process under torchrun), else the CPU.")
def train(source: str, classes: str | None, labels: str | None, run_dir: str, channels: str | None, size: str | None,
          resume: bool, device: str, tile: int | None, downscale: int, tiles_per_epoch: int | None,
          **settings: Any) -> None:
    """Train a VAE on normal images; keeps the best checkpoint by validation ELBO.

    Started by torchrun (torchrun --nproc-per-node N -m edgevae train ...), it trains on N processes with
    DistributedDataParallel; --batch-size is then the global batch, split evenly over the processes.
    """
    need_training("train")
    from edgevae.training.data import DataSpec
    from edgevae.training.loop import TrainConfig, train as run_training
    from edgevae.training.model import ModelConfig

    with errors():
        class_list = _parse_ints(classes, "--classes") if classes else None
        for option in ("widths", "defect_widths"):
            if settings[option] is not None:
                settings[option] = _parse_ints(settings[option], "--" + option.replace("_", "-"))
        if tile is not None and size:
            raise click.UsageError("--size resizes whole images; with --tile the model's input is one tile: drop --size")
        hw = _parse_size(size) if size else (None, None)
        if tile is None and (downscale != 1 or tiles_per_epoch is not None):
            raise click.UsageError("--downscale and --tiles-per-epoch apply to tiled training: add --tile N")
        spec = DataSpec(source=source, classes=class_list, labels=labels, tile=tile, downscale=downscale,
                        tiles_per_epoch=tiles_per_epoch)
        model_cfg = ModelConfig(channels=int(channels) if channels else None, height=hw[0], width=hw[1],
                                variational=not settings.pop("plain"),
                                **given(**{k: settings[k] for k in _MODEL_OPTIONS}))
        train_cfg = TrainConfig(**given(**{field: settings[option] for option, field in _TRAIN_OPTIONS.items()}))
        with _TrainingProgress() as progress:
            result = run_training(spec, run_dir, model_cfg, train_cfg, resume=resume, progress=progress,
                                  device=device)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    click.echo(f"best validation negative ELBO {result.best_val_neg_elbo:.2f} nats/image at epoch "
               f"{result.best_epoch}; {result.seconds:.1f} s")
    click.echo(f"checkpoint: {result.best_checkpoint}   metrics: {result.run_dir / 'metrics.json'}")
    if result.defect_head is not None:
        click.echo(f"defect head: {result.defect_head} ({result.defect_seconds:.1f} s)")


def _cap_words(info: dict[str, Any]) -> str:
    """What the defect head's time cap is, in words (``defect_head.TIME_CAP_FACTORS``)."""
    from edgevae.training.defect_head import TIME_CAP_FACTORS

    factor = TIME_CAP_FACTORS[info["resolution"]]
    return "the VAE's training time" if factor == 1.0 else f"{factor:g} times the VAE's training time"


# Options of `train` that are ModelConfig fields of the same name, and those that are TrainConfig fields.
_MODEL_OPTIONS = ("latent_dim", "widths", "hidden", "refine", "likelihood", "activation", "encoder_activation")
_TRAIN_OPTIONS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "val_fraction": "val_fraction",
                  "seed": "seed", "beta": "beta", "kl_warmup": "kl_warmup_epochs", "augment_shift": "augment_shift",
                  "augment_rotate": "augment_rotate", "defect_head": "defect_head", "defect_steps": "defect_steps",
                  "defect_time_cap": "defect_time_cap", "defect_widths": "defect_widths",
                  "defect_resolution": "defect_resolution", "defect_heads": "defect_heads",
                  "labelled_defects": "labelled_defects"}


def _parse_ints(text: str, option: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers; a usage error naming the option otherwise."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"must be whole numbers separated by commas, got {text!r}", param_hint=option) from None


def _parse_size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW`` (whole numbers >= 8) as (H, W); a usage error otherwise."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts) and all(int(p) >= 8 for p in parts):
        return (int(parts[0]), int(parts[-1]))
    raise click.BadParameter(f"must be N or HxW with whole numbers >= 8 (e.g. 28 or 64x48), got {text!r}",
                             param_hint="--size")


class _TrainingProgress:
    """Per-epoch progress bar (loss, reconstruction, KL) on a terminal; one line per epoch otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.last: dict[str, float] = {}
        self.tty = sys.stderr.isatty()

    def __enter__(self) -> "_TrainingProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def __call__(self, event: str, info: Any) -> None:
        if event == "epoch_start" and self.tty:
            self.bar = click.progressbar(length=info["steps"], label=f"epoch {info['epoch']}/{info['epochs']}",
                                         file=sys.stderr, item_show_func=self._show)
            self.bar.__enter__()
        elif event == "batch" and self.bar is not None:
            self.last = info
            self.bar.update(1)
        elif event == "epoch_end":
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None
            mark = " *" if info["best"] else ""
            click.echo(f"epoch {info['epoch']:3d}  train loss {info['train_loss']:8.2f}  val -ELBO "
                       f"{info['val_neg_elbo']:8.2f} (recon {info['val_recon']:7.2f}, KL {info['val_kl']:6.2f})"
                       f"  {info['seconds']:6.1f}s{mark}", err=True)
        elif event == "defect_start":
            members = int(info.get("members", 1))
            heads = f"{members} defect heads (their logits averaged)" if members > 1 else "defect head"
            each = " each" if members > 1 else ""
            click.echo(f"{heads}: {info['steps'] // members} steps{each} on synthetic defects made from {info['images']} "
                       f"training {info['unit']} at {info['resolution']} resolution"
                       + (f", at most {info['budget']:.0f} s{each} ({_cap_words(info)})" if info['budget'] else ""),
                       err=True)
        elif event == "defect_step":
            click.echo(f"defect head step {info['step']:5d}/{info['steps']}  loss {info['loss']:.4f}  "
                       f"{info['seconds']:6.1f}s", err=True)
        elif event == "defect_done":
            early = " (stopped at its time cap)" if info["stopped_early"] else ""
            click.echo(f"defect head: {info['steps']} steps in {info['seconds']:.1f} s{early}", err=True)
        elif event == "skipped":
            click.echo(f"skipped: {info['item']}", err=True)
        elif event == "labelled":
            click.echo(f"labelled defects: {info['images']} image{'s' if info['images'] != 1 else ''} ({info['pixels']} "
                       f"defect pixels); the defect head "
                       f"trains on them beside its synthetic defects", err=True)
        elif event == "model":
            cfg = info["config"]
            if info["source"]:
                click.echo(f"input: {info['source']}", err=True)
            rule = f" (by the architecture rule: {', '.join(info['from_rule'])})" if info["from_rule"] else ""
            click.echo(f"model: {cfg['channels']}x{cfg['height']}x{cfg['width']}, stages "
                       f"{','.join(map(str, cfg['widths']))}, latent {cfg['latent_dim']}, hidden {cfg['hidden']}"
                       f"{'' if cfg['variational'] else ', plain autoencoder'}{rule}", err=True)
        elif event == "split":
            where = f" on {info['processes']} processes" if info.get("processes", 1) > 1 else ""
            click.echo(f"training on {info['n_train']} images{where} ({info.get('device', 'cpu')}); {info['n_val']} "
                       f"held out for validation and calibration ({info['val_fraction']:.3g})", err=True)
            tiles = info.get("tiles")
            if tiles:
                shrunk = f", shrunk {tiles['downscale']}x" if tiles["downscale"] > 1 else ""
                click.echo(f"tiles: {tiles['per_epoch']} random {tiles['tile']}x{tiles['tile']} tiles per epoch from "
                           f"images of {tiles['sizes']}{shrunk}; {tiles['val_tiles']} held-out tiles validate, the "
                           f"held-out images calibrate whole", err=True)

    def _show(self, _item: Any) -> str:
        if not self.last:
            return ""
        return f"loss {self.last['loss']:.1f}  recon {self.last['recon']:.1f}  KL {self.last['kl']:.1f}"
