"""The ``edgevae`` command line: thin wrappers over the Python API.

Training and export are imported lazily, so ``edgevae score`` starts fast and works without torch.

Exit codes: 0 success; 1 error (bad bundle, failed export, ...); 2 usage error, or at least one input
could not be read (every other input is still scored and printed); 3 ``--fail-on-outlier`` was given and at
least one input was flagged as an outlier (2 wins when both apply).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Sequence

import click

from edgevae import __version__, options

if TYPE_CHECKING:
    from edgevae.runtime import Model

EXIT_ERROR, EXIT_INPUT, EXIT_OUTLIER = 1, 2, 3
# Seconds between progress lines of `score` when stderr is not a terminal (logs, CI, pipes).
PROGRESS_SECONDS = 10.0


class InputProblem(click.ClickException):
    """A user-input problem: exit status 2."""

    exit_code = EXIT_INPUT


def _need_training(command: str) -> None:
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException(
            f"edgevae {command} needs the training extra: pip install 'edgevae[train]'"
        ) from None


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the library's exceptions into one-line messages with the documented exit codes."""
    from edgevae.runtime.errors import EdgeVAEError, InputError

    try:
        yield
    except InputError as exc:
        raise InputProblem(str(exc)) from None
    except (EdgeVAEError, ValueError, OSError) as exc:  # ValueError: a config's own validation
        raise click.ClickException(str(exc)) from None


_TRUSTED_KEY_HELP = ("Load the bundle only if it is signed by this Ed25519 public key (repeatable; default: the keys "
                     "in $EDGEVAE_TRUSTED_KEYS, if set).")


@dataclass(frozen=True)
class _Runtime:
    """The options every runtime command shares: which bundle, and how to load it."""

    bundle: str
    providers: str
    threads: int | None
    strict: bool
    variant: str | None
    trusted_keys: tuple[str, ...]

    def load(self, threads: int | None = None, slice_workers: int | None = None) -> Model:
        from edgevae.runtime import load

        with _errors():
            return load(self.bundle, self.providers, threads=threads if threads is not None else self.threads,
                        strict=self.strict, variant=self.variant, slice_workers=slice_workers,
                        trusted_keys=self.trusted_keys or None)  # none given: $EDGEVAE_TRUSTED_KEYS applies

    def load_streaming(self, paths: Sequence[str], method: str | None, decode_threads: int) -> Model:
        """Load for a command that decodes input files while the graphs run (the runtime's thread plan).

        ``method`` "default" stands for the bundle's default score method, read from its manifest.
        """
        from edgevae.runtime import read_manifest, thread_plan

        with _errors():
            if method == "default":
                method = read_manifest(self.bundle).default_method
            plan = thread_plan(paths, method, threads=self.threads, decode_threads=decode_threads)
        return self.load(plan.threads, plan.slice_workers)


def _runtime_options(func: Callable[..., None]) -> Callable[..., None]:
    """Add the shared runtime options; the command receives them as one ``runtime`` argument."""

    @functools.wraps(func)
    def command(*args: Any, bundle: str, providers: str, threads: int | None, strict_providers: bool,
                variant: str | None, trusted_key: tuple[str, ...], **kwargs: Any) -> None:
        func(*args, runtime=_Runtime(bundle, providers, threads, strict_providers, variant, trusted_key), **kwargs)

    decorators = [
        click.option("-m", "--model", "bundle", required=True, type=click.Path(),
                     help="Bundle directory written by 'edgevae export'."),
        click.option("--providers", default="auto", show_default=True,
                     help="Execution providers: auto, or a comma-separated list (cpu, cuda, tensorrt, openvino, ...)."),
        click.option("--threads", type=click.IntRange(min=0), default=None,
                     help="onnxruntime intra-op threads per graph (default: one per core; when image files are "
                          "decoded, the cores the decode threads leave free)."),
        click.option("--strict-providers", is_flag=True, help="Fail if a requested execution provider is not active."),
        click.option("--variant", default=None,
                     help="Edge variant of the bundle's graphs: int8, fp16, ort, int8-ort, ... (default fp32)."),
        click.option("--trusted-key", multiple=True, type=click.Path(dir_okay=False), help=_TRUSTED_KEY_HELP),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Show the library's calibration warnings as ``warning: ...`` lines on stderr; others pass as they are."""
    from edgevae.runtime.errors import CalibrationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, CalibrationWarning):
                    click.echo(f"warning: {w.message}", err=True)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _given(**values: Any) -> dict[str, Any]:
    """The options the user gave (click passes None for the others): the config dataclasses apply the defaults."""
    return {k: v for k, v in values.items() if v is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="edgevae")
def main() -> None:
    """edgevae: variational autoencoders for outlier detection and generation on the edge.

    Train on normal images, export a bundle (two ONNX graphs + manifest), then score, encode,
    reconstruct and generate anywhere with numpy + onnxruntime.
    """
    # Very large images are refused with edgevae's own per-file message (runtime.contract.MAX_IMAGE_PIXELS);
    # Pillow's warning about them would only repeat it as a Python warning. The command line owns its process,
    # so it may silence that one warning (the library leaves its host application's filters alone).
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", module=r"PIL\.")


# ------------------------------------------------------------------------------------------- train
@main.command()
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
@click.option("--seed", type=int, show_default=str(options.SEED))
@click.option("--plain", is_flag=True,
              help="Train the plain-autoencoder limit (s = 0: no sampling, no KL term), to compare with the VAE.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt.")
@click.option("--device", type=click.Choice(options.DEVICES), default=options.DEVICE, show_default=True,
              help="auto: a CUDA GPU when PyTorch sees one (one per process under torchrun), else the CPU.")
def train(source: str, classes: str | None, labels: str | None, run_dir: str, channels: str | None, size: str | None,
          resume: bool, device: str, **settings: Any) -> None:
    """Train a VAE on normal images; keeps the best checkpoint by validation ELBO.

    Started by torchrun (torchrun --nproc-per-node N -m edgevae train ...), it trains on N processes with
    DistributedDataParallel; --batch-size is then the global batch, split evenly over the processes.
    """
    _need_training("train")
    from edgevae.training.data import DataSpec
    from edgevae.training.loop import TrainConfig, train as run_training
    from edgevae.training.model import ModelConfig

    with _errors():
        class_list = _parse_ints(classes, "--classes") if classes else None
        if settings["widths"] is not None:
            settings["widths"] = _parse_ints(settings["widths"], "--widths")
        hw = _parse_size(size) if size else (None, None)
        spec = DataSpec(source=source, classes=class_list, labels=labels)
        model_cfg = ModelConfig(channels=int(channels) if channels else None, height=hw[0], width=hw[1],
                                variational=not settings.pop("plain"),
                                **_given(**{k: settings[k] for k in _MODEL_OPTIONS}))
        train_cfg = TrainConfig(**_given(**{field: settings[option] for option, field in _TRAIN_OPTIONS.items()}))
        with _TrainingProgress() as progress:
            result = run_training(spec, run_dir, model_cfg, train_cfg, resume=resume, progress=progress,
                                  device=device)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    click.echo(f"best validation negative ELBO {result.best_val_neg_elbo:.2f} nats/image at epoch "
               f"{result.best_epoch}; {result.seconds:.1f} s")
    click.echo(f"checkpoint: {result.best_checkpoint}   metrics: {result.run_dir / 'metrics.json'}")


# Options of `train` that are ModelConfig fields of the same name, and those that are TrainConfig fields.
_MODEL_OPTIONS = ("latent_dim", "widths", "hidden", "refine", "likelihood", "activation", "encoder_activation")
_TRAIN_OPTIONS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "val_fraction": "val_fraction",
                  "seed": "seed", "beta": "beta", "kl_warmup": "kl_warmup_epochs", "augment_shift": "augment_shift",
                  "augment_rotate": "augment_rotate"}


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
        elif event == "skipped":
            click.echo(f"skipped: {info['item']}", err=True)
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

    def _show(self, _item: Any) -> str:
        if not self.last:
            return ""
        return f"loss {self.last['loss']:.1f}  recon {self.last['recon']:.1f}  KL {self.last['kl']:.1f}"


# ------------------------------------------------------------------------------------------- export
@main.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("-o", "--out", "bundle_dir", required=True, type=click.Path(file_okay=False), help="Bundle folder to write.")
@click.option("--fpr", type=float, show_default=str(options.CALIBRATION_FPR),
              help="False-positive rate of stored thresholds.")
@click.option("--elbo-samples", type=click.IntRange(1, options.ELBO_SAMPLES_MAX), show_default=str(options.ELBO_SAMPLES),
              help="Monte-Carlo samples of the elbo score.")
@click.option("--iwae-samples", type=click.IntRange(1, options.IWAE_SAMPLES_MAX), show_default=str(options.IWAE_SAMPLES),
              help="Importance samples of the iwae score.")
@click.option("--method", "default_method", type=click.Choice(options.SCORE_METHODS),
              show_default=options.DEFAULT_METHOD, help="Default score method of the bundle.")
@click.option("--smooth-sigma", type=click.FloatRange(0, options.SMOOTH_SIGMA_MAX, min_open=True),
              show_default=str(options.SMOOTH_SIGMA),
              help="Gaussian width (pixels) of the smooth_recon score and the anomaly maps.")
@click.option("--combine", "combined_parts", show_default=",".join(options.COMBINED_PARTS),
              help="The methods the combined score joins through their p-values, comma-separated.")
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
    _need_training("export")
    from edgevae.export import ExportConfig, export_bundle

    with _errors():
        if settings["combined_parts"] is not None:
            settings["combined_parts"] = tuple(p.strip() for p in settings["combined_parts"].split(","))
        cfg = ExportConfig(**_given(**settings), variants=tuple(v for v in (quantize, precision) if v),
                           ort_format=ort_format)
        with _warnings_to_stderr():
            model = export_bundle(checkpoint, bundle_dir, cfg, force=force, sign_key=sign_key,
                                  progress=lambda msg: click.echo(msg, err=True))
    parity = model.manifest.raw["parity"]["max_abs_diff"]
    sizes = ", ".join(f"{name} {entry['bytes'] / 1e6:.2f} MB" for name, entry in model.manifest.files.items())
    click.echo(f"bundle: {bundle_dir}  (max parity diff {max(parity.values()):.2e}; {sizes})")
    model.close()


# ------------------------------------------------------------------------------------------- score
@main.command()
@click.argument("paths", nargs=-1, required=True)
@_runtime_options
@click.option("--method", type=click.Choice(options.SCORE_METHODS), default=None,
              help="Score method (default: the bundle's).")
@click.option("--fpr", type=float, default=None, help="Flag outliers at this false-positive rate (calibrated).")
@click.option("--threshold", type=float, default=None, help="Flag scores above this value (overrides --fpr).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default=None,
              help="Output format (default: from the -o extension, .csv or .jsonl; table otherwise).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write results here (default stdout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--strict", "--strict-size", "strict", is_flag=True,
              help="Refuse image files whose size or channel count differs from the model's (default: resize or "
                   "convert, with a warning per item for the channels).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Image-decoding threads; more help only for large images.")
@click.option("--maps", "maps_dir", type=click.Path(file_okay=False), default=None,
              help="Write one PNG per input into this folder: image | reconstruction | anomaly map.")
@click.option("--fail-on-outlier", is_flag=True, help="Exit with status 3 when any input is flagged.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Also write an HTML report of the scored inputs (kept in memory: use it on a sample).")
def score(paths: Sequence[str], runtime: _Runtime, method: str | None, fpr: float | None, threshold: float | None,
          fmt: str | None, output: str | None, batch_size: int, strict: bool, workers: int, fail_on_outlier: bool,
          report_path: str | None, maps_dir: str | None) -> None:
    """Score images as outliers: PATHS are image files, folders, globs, .npy/.npz arrays or IDX files.

    Prints one row per input: score (higher = more anomalous), p-value against the bundle's
    calibration, and the outlier flag.
    """
    from edgevae.runtime.inputs import iter_batches

    _writable(output, "--output")
    _writable(report_path, "--report")
    if threshold is not None and not math.isfinite(threshold):
        raise click.BadParameter(f"must be a finite number, got {threshold}", param_hint="--threshold")
    fmt = fmt or _FORMAT_BY_SUFFIX.get(os.path.splitext(output or "")[1].lower(), "table")
    model = runtime.load_streaming(paths, method or "default", workers)
    method = method or model.manifest.default_method
    if fpr is not None and not 0.0 < fpr < 1.0:
        raise click.BadParameter(f"must be in (0, 1), got {fpr}", param_hint="--fpr")
    with _errors(), _warnings_to_stderr():
        thr = model.threshold(method, fpr) if threshold is None else threshold
    counts = {"scored": 0, "outliers": 0, "failed": 0}
    kept: list[tuple[list[str], Any, Any]] = []  # for --report: (names, images, ScoreResult) per batch
    failures: list[tuple[str, str]] = []
    live = sys.stderr.isatty()  # a running count on a terminal; when piped or logged, a line every PROGRESS_SECONDS
    last_line = time.monotonic()
    with _output(output) as out:
        writer = _ResultWriter(out, fmt, method, thr)
        for batch in iter_batches(paths, model.contract, batch_size=batch_size, workers=workers,
                                  strict_size=strict, strict_channels=strict):
            result = None
            if batch.images is not None:
                with _errors():
                    result = model.score(batch.images, method, threshold=thr)
                    if maps_dir is not None:
                        _write_maps(model, batch, result, maps_dir, counts["scored"] + counts["failed"])
            if report_path:
                failures += [(name, str(err)) for name, err in batch.failures]
                if result is not None:
                    kept.append((batch.names, batch.images, result))
            _write_batch(writer, batch, result, counts)
            progress = f"{counts['scored']} scored, {counts['outliers']} outlier(s), {counts['failed']} failed"
            if live:
                click.echo(f"\r{progress}", nl=False, err=True)
            elif time.monotonic() - last_line >= PROGRESS_SECONDS:
                click.echo(f"progress: {progress}", err=True)
                last_line = time.monotonic()
        if live:
            click.echo("", err=True)
    click.echo(f"{counts['scored']} scored with {method} (threshold {thr:.4g}): {counts['outliers']} outlier(s), "
               f"{counts['failed']} failed", err=True)
    if report_path and kept:
        _write_report(_kept_report(model, method, kept, failures), report_path, 12)
    if counts["failed"]:
        sys.exit(EXIT_INPUT)
    if fail_on_outlier and counts["outliers"]:
        sys.exit(EXIT_OUTLIER)


def _write_maps(model: Model, batch: Any, result: Any, folder: str, first: int) -> None:
    """One PNG per scored image of a batch: image | reconstruction | anomaly map; the name carries the input's
    position, its name, the flag and the score."""
    from edgevae.runtime.grid import map_panel, save_png

    maps, recon = model.map_and_reconstruction(batch.images)
    os.makedirs(folder, exist_ok=True)
    positions = {j: first + k for k, (failed, j) in enumerate(batch.order) if not failed}
    for i, name in enumerate(batch.names):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(name))[0])[:60]
        flag = "OUTLIER" if result.is_outlier[i] else "normal"
        position = positions[i]
        save_png(map_panel(batch.images[i], recon[i], maps[i]),
                 os.path.join(folder, f"{position:06d}_{stem}_{flag}_score{float(result.scores[i]):.4g}.png"))


def _writable(path: str | None, option: str) -> None:
    """A usage error, before any work is done, when ``path``'s folder does not exist or is not writable."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise click.BadParameter(f"cannot write {path}: the folder {folder} does not exist (create it first)",
                                 param_hint=option)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"cannot write {path}: the folder {folder} is not writable", param_hint=option)


# Output formats of `score` by the extension of -o, when --format is not given.
_FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    """stdout, or a file written to a temporary name and renamed into place when complete."""
    if path is None:
        yield sys.stdout
        return
    from edgevae.runtime.atomic import atomic_open

    with atomic_open(path, "w") as handle:
        yield handle


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


# ------------------------------------------------------------------------------------------- evaluate
@main.command()
@_runtime_options
@click.option("--normal", "normal_paths", multiple=True, required=True,
              help="Normal inputs: image files, folders, globs, arrays or IDX files (repeatable).")
@click.option("--anomalous", "anomalous_paths", multiple=True, required=True,
              help="Anomalous inputs, the same kinds (repeatable).")
@click.option("--method", "methods", multiple=True, type=click.Choice(options.SCORE_METHODS),
              help="Score method (repeatable; default: every method the bundle calibrates).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default=None,
              help="Output format (default: from the -o extension, .csv or .json; table otherwise).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write results here (default stdout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
def evaluate(runtime: _Runtime, normal_paths: Sequence[str], anomalous_paths: Sequence[str], methods: Sequence[str],
             fmt: str | None, output: str | None, batch_size: int) -> None:
    """Measure detection on labelled inputs: AUROC, average precision, FPR at 95 % TPR, and the confusion counts at
    the bundle's threshold, per method (anomalous = positive)."""
    from edgevae.runtime.evaluation import evaluate_scores

    _writable(output, "--output")
    fmt = fmt or {".csv": "csv", ".json": "json"}.get(os.path.splitext(output or "")[1].lower(), "table")
    model = runtime.load()
    chosen = list(methods) or list(model.methods)
    failed = 0
    scores: dict[str, dict[str, list[Any]]] = {m: {"normal": [], "anomalous": []} for m in chosen}
    for group, paths in (("normal", normal_paths), ("anomalous", anomalous_paths)):
        failed += _score_group(model, paths, chosen, batch_size, [scores[m][group] for m in chosen])
    import numpy as np

    with _errors():
        results = [evaluate_scores(m, np.concatenate(scores[m]["normal"] or [np.zeros(0)]),
                                   np.concatenate(scores[m]["anomalous"] or [np.zeros(0)]), model.threshold(m))
                   for m in chosen]
    with _output(output) as out:
        _write_evaluation(out, fmt, [r.to_dict() for r in results])
    if failed:
        sys.exit(EXIT_INPUT)


def _score_group(model: Model, paths: Sequence[str], methods: list[str], batch_size: int, sinks: list[list[Any]]) -> int:
    """Score every readable input of ``paths`` with each method into its sink; returns how many inputs failed."""
    from edgevae.runtime.inputs import iter_batches

    failed = 0
    for batch in iter_batches(paths, model.contract, batch_size=batch_size):
        for _, err in batch.failures:
            failed += 1
            click.echo(f"error: {err}", err=True)
        if batch.images is not None:
            with _errors():
                for method, sink in zip(methods, sinks):
                    sink.append(model.raw_scores(batch.images, method))
    return failed


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


# ------------------------------------------------------------------------------------------- report
@main.command()
@click.argument("paths", nargs=-1)
@_runtime_options
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--method", type=click.Choice(options.SCORE_METHODS), default=None, help="Score method (default: the bundle's).")
@click.option("--normal", "normal_paths", multiple=True, help="Inputs known to be normal (repeatable): with --anomalous, "
              "the report includes the evaluation.")
@click.option("--anomalous", "anomalous_paths", multiple=True, help="Inputs known to be anomalous (repeatable).")
@click.option("--top", type=click.IntRange(1, 500), default=12, show_default=True, help="Most anomalous inputs shown.")
def report(paths: Sequence[str], runtime: _Runtime, output: str, method: str | None, normal_paths: Sequence[str],
           anomalous_paths: Sequence[str], top: int) -> None:
    """Write one self-contained HTML report (images inline, no network): score distribution over the calibration,
    threshold, flag rate, the most anomalous inputs beside their reconstructions and residuals, and the bundle.
    Every input is kept in memory: report on a sample of a large set."""
    if not (paths or normal_paths or anomalous_paths):
        raise click.UsageError("give inputs: PATH... and/or --normal / --anomalous")
    _writable(output, "--output")
    model = runtime.load()
    groups = [("", paths), ("normal", normal_paths), ("anomalous", anomalous_paths)]
    data = _report_data(model, method or model.manifest.default_method, groups)
    _write_report(data, output, top)
    if data.failures:
        sys.exit(EXIT_INPUT)


def _report_data(model: Model, method: str, groups: Sequence[tuple[str, Sequence[str]]]) -> Any:
    """Read and score every group of inputs (label, paths) into the report's data; failures are listed, not fatal."""
    import numpy as np

    from edgevae.runtime.evaluation import evaluate_scores
    from edgevae.runtime.inputs import iter_batches
    from edgevae.runtime.report import ReportData

    names: list[str] = []
    labels: list[str] = []
    images: list[Any] = []
    failures: list[tuple[str, str]] = []
    for label, paths in groups:
        for batch in iter_batches(list(paths), model.contract) if paths else []:
            failures += [(name, str(err)) for name, err in batch.failures]
            for name, err in batch.failures:
                click.echo(f"error: {err}", err=True)
            if batch.images is not None:
                images.append(batch.images)
                names += batch.names
                labels += [label] * len(batch.names)
    if not images:
        raise InputProblem("no input could be read; nothing to report")
    x = np.concatenate(images)
    with _errors():
        result = model.score(x, method)
    lab = np.array(labels)
    evaluation = None
    if (lab == "normal").any() and (lab == "anomalous").any():
        evaluation = evaluate_scores(method, result.scores[lab == "normal"], result.scores[lab == "anomalous"],
                                     result.threshold)
    return ReportData(model=model, method=method, names=names, images=x, scores=result.scores,
                      p_values=result.p_values, flags=result.is_outlier, threshold=result.threshold,
                      labels=labels if any(labels) else [], failures=failures, evaluation=evaluation)


def _write_batch(writer: "_ResultWriter", batch: Any, result: Any, counts: dict[str, int]) -> None:
    """One batch's rows in input order (failures where they came, reported on stderr too), and the counts."""
    for failed, i in batch.order:
        if failed:
            name, err = batch.failures[i]
            counts["failed"] += 1
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


def _kept_report(model: Model, method: str, kept: list[tuple[list[str], Any, Any]],
                 failures: list[tuple[str, str]]) -> Any:
    """The report's data from the batches `score` kept: no input is read or scored twice."""
    import numpy as np

    from edgevae.runtime.report import ReportData

    return ReportData(model=model, method=method, names=[n for names, _, _ in kept for n in names],
                      images=np.concatenate([x for _, x, _ in kept]),
                      scores=np.concatenate([r.scores for _, _, r in kept]),
                      p_values=np.concatenate([r.p_values for _, _, r in kept]),
                      flags=np.concatenate([r.is_outlier for _, _, r in kept]), threshold=kept[0][2].threshold,
                      failures=failures)


def _write_report(data: Any, output: str, top: int) -> None:
    from edgevae.runtime.atomic import write_atomic
    from edgevae.runtime.report import render

    write_atomic(output, render(data, top=top))
    click.echo(f"wrote {output}: {len(data.names)} input(s), {int(data.flags.sum())} flagged", err=True)


# ------------------------------------------------------------------------------------------- calibrate
@main.command()
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
    import numpy as np

    from edgevae.runtime import read_manifest
    from edgevae.runtime.inputs import iter_batches
    from edgevae.runtime.recalibrate import recalibrate

    with _errors():
        contract = read_manifest(bundle).contract
    images, failed = [], 0
    for batch in iter_batches(paths, contract):
        for _, err in batch.failures:
            failed += 1
            click.echo(f"error: {err}", err=True)
        if batch.images is not None:
            images.append(batch.images)
    if not images:
        raise InputProblem("no input could be read; nothing to calibrate on")
    with _errors(), _warnings_to_stderr():
        manifest = recalibrate(bundle, np.concatenate(images), fpr, sign_key=sign_key)
    cal = manifest["calibration"]
    click.echo(f"recalibrated {bundle} on {cal['n']} images at FPR {cal['fpr']:g} (smallest it can promise: "
               f"{cal['min_fpr']:.4g}); previous calibration kept in calibration_history")
    if failed:
        sys.exit(EXIT_INPUT)


# ------------------------------------------------------------------------------------------- encode
@main.command()
@click.argument("paths", nargs=-1, required=True)
@_runtime_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file: .npy (mu), .npz (items, mu, logvar, kl) or .jsonl.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--strict", "--strict-size", "strict_size", is_flag=True,
              help="Refuse image files whose size or channel count differs from the model's (default: convert).")
def encode(paths: Sequence[str], runtime: _Runtime, output: str, batch_size: int, strict_size: bool) -> None:
    """Encode images to latent codes (posterior means and log-variances)."""
    import numpy as np

    from edgevae.runtime.inputs import iter_batches

    suffix = os.path.splitext(output)[1].lower()
    if suffix not in (".npy", ".npz", ".jsonl"):
        raise click.BadParameter("must end in .npy, .npz or .jsonl", param_hint="--output")
    _writable(output, "--output")
    model = runtime.load_streaming(paths, None, 1)
    names: list[str] = []
    mus, logvars, kls = [], [], []
    failed = 0
    for batch in iter_batches(paths, model.contract, batch_size=batch_size, strict_size=strict_size,
                              strict_channels=strict_size):
        for _, err in batch.failures:
            failed += 1
            click.echo(f"error: {err}", err=True)
        if batch.images is not None:
            with _errors():
                mu, logvar, kl = model.encode(batch.images)
            names += batch.names
            mus.append(mu)
            logvars.append(logvar)
            kls.append(kl)
    if not names:
        raise InputProblem("no input could be read; nothing to encode")
    mu_all, lv_all, kl_all = np.concatenate(mus), np.concatenate(logvars), np.concatenate(kls)
    if suffix == ".jsonl":
        with _output(output) as out:
            for i, name in enumerate(names):
                out.write(json.dumps({"item": name, "mu": mu_all[i].tolist(), "logvar": lv_all[i].tolist(),
                                      "kl": float(kl_all[i])}) + "\n")
    else:
        if suffix == ".npy":
            _save_numpy(output, mu_all)
        else:
            _save_numpy(output, items=np.array(names), mu=mu_all, logvar=lv_all, kl=kl_all)
    click.echo(f"encoded {len(names)} item(s) to {output} (latent size {model.latent_dim}); {failed} failed", err=True)
    if failed:
        sys.exit(EXIT_INPUT)


def _save_numpy(output: str, array: Any = None, **arrays: Any) -> None:
    """Save one array as .npy, or named arrays as .npz, atomically."""
    import numpy as np

    from edgevae.runtime.atomic import atomic_open

    with atomic_open(output, "wb", suffix=os.path.splitext(output)[1]) as handle:
        if array is not None:
            np.save(handle, array)
        else:
            np.savez(handle, **arrays)


# ------------------------------------------------------------------------------------------- generate
@main.command()
@_runtime_options
@click.option("-n", "--count", type=click.IntRange(min=1, max=10000), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", default="generated.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--columns", type=click.IntRange(min=1), default=None, help="Grid columns (default: square).")
@click.option("--npy", "npy_path", type=click.Path(dir_okay=False), default=None,
              help="Also save the images as float32 .npy (N, C, H, W).")
def generate(runtime: _Runtime, count: int, seed: int, output: str, columns: int | None, npy_path: str | None) -> None:
    """Generate new images: decode t ~ N(0, I) and save them as a PNG grid."""
    from edgevae.runtime.grid import save_grid

    _writable(output, "--output")
    _writable(npy_path, "--npy")
    model = runtime.load()
    images = model.generate(count, seed=seed)
    with _errors():
        save_grid(images, output, columns)
        if npy_path:
            _save_numpy(npy_path, images)
    click.echo(f"wrote {count} generated image(s) to {output} (seed {seed})")


# ------------------------------------------------------------------------------------------- reconstruct
@main.command()
@click.argument("paths", nargs=-1, required=True)
@_runtime_options
@click.option("-o", "--output", default="reconstructions.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=64, show_default=True, help="At most this many inputs.")
def reconstruct(paths: Sequence[str], runtime: _Runtime, output: str, limit: int) -> None:
    """Save inputs beside their reconstructions as a PNG (pairs of columns: input, reconstruction)."""
    import numpy as np

    from edgevae.runtime.grid import save_grid
    from edgevae.runtime.inputs import iter_batches

    _writable(output, "--output")
    model = runtime.load()
    images, failed = [], 0
    for batch in iter_batches(paths, model.contract, batch_size=limit):
        for _, err in batch.failures:
            failed += 1
            click.echo(f"error: {err}", err=True)
        if batch.images is not None:
            images.append(batch.images)
        if sum(len(i) for i in images) >= limit:
            break
    if not images:
        raise InputProblem("no input could be read; nothing to reconstruct")
    x = np.concatenate(images)[:limit]
    recon = model.reconstruct(x)
    pairs = np.stack([x, recon], axis=1).reshape((-1,) + x.shape[1:])  # input, reconstruction, ...
    with _errors():
        save_grid(pairs, output, columns=min(16, 2 * len(x)))
    click.echo(f"wrote {len(x)} input/reconstruction pair(s) to {output}")
    if failed:
        sys.exit(EXIT_INPUT)


# ------------------------------------------------------------------------------------------- info
@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--providers", default="auto", show_default=True)
@click.option("--trusted-key", multiple=True, type=click.Path(dir_okay=False), help=_TRUSTED_KEY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the full manifest as JSON.")
def info(bundle: str, providers: str, trusted_key: tuple[str, ...], as_json: bool) -> None:
    """Show a bundle's manifest, signature, graph inputs/outputs and execution providers."""
    from edgevae.runtime.sessions import available_providers
    from edgevae.runtime.signing import describe_signature

    model = _Runtime(bundle, providers, None, False, None, trusted_key).load()
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
    map_entry = m.raw.get("scoring", {}).get("map")
    if map_entry:
        click.echo(f"maps          {map_entry['file']}: residual smoothed {map_entry['sigma']:g} px, standardised per pixel; "
                   f"local = mean of the top {map_entry['top_k']} of {c.height * c.width} pixels; combined = "
                   f"{' + '.join(sp.combined_parts)} (elbo part K={sp.part_elbo_samples})")
    if m.min_fpr is not None:
        click.echo(f"calibration   {m.calibration_n} held-out images: the smallest false-positive rate they can "
                   f"promise is 1/(n+1) = {m.min_fpr:.4g} (stored thresholds at {m.calibration_fpr:g})")
    for method, cal in m.calibration.items():
        tail = (f", tail shape {cal.tail.shape:+.2f} over the top {cal.tail.fraction:.0%}" if cal.tail is not None
                else ", empirical quantile")
        click.echo(f"  {method:<12} threshold {cal.threshold:10.4f} at FPR {m.calibration_fpr:g} "
                   f"(n={len(cal.scores)}{tail})")
    for name, gi in model.graph_info().items():
        click.echo(f"{name + '.onnx':<13} {m.files[name + '.onnx']['bytes'] / 1e6:.2f} MB")
        for arg, shape, typ in gi.inputs:
            click.echo(f"  in   {arg:<8} {shape} {typ}")
        for arg, shape, typ in gi.outputs:
            click.echo(f"  out  {arg:<8} {shape} {typ}")
    click.echo(f"parity        max |onnxruntime - torch| {max(raw['parity']['max_abs_diff'].values()):.2e}")
    with _errors():
        click.echo(f"signature     {describe_signature(Path(bundle), m.raw)}")
    for name, spec in m.variants.items():
        size = sum(m.files[spec[g]]["bytes"] for g in ("encoder", "decoder")) / 1e6
        corr = min(spec.get("rank_correlation", {}).values(), default=float("nan"))
        click.echo(f"variant       {name:<9} {spec['encoder']}, {spec['decoder']}  {size:.2f} MB  "
                   f"min rank correlation with fp32 {corr:.4f}")
    click.echo(f"providers     available: {', '.join(available_providers())}")
    click.echo(f"              active:    {', '.join(model.providers['encoder'])}")


# ------------------------------------------------------------------------------------------- keygen, sign
@main.command()
@click.option("-o", "--out", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (mode 0600); the public key goes to the same name + '.pub'.")
def keygen(key_path: str) -> None:
    """Create an Ed25519 key pair for signing bundles (export --sign, sign) and trusting them (--trusted-key)."""
    from edgevae.runtime.signing import generate_key

    with _errors():
        private, public, fp = generate_key(key_path)
    click.echo(f"private key {private} (keep it secret; mode 0600)\npublic key  {public} (give it to devices: "
               f"--trusted-key {public})\nfingerprint {fp}")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Ed25519 private key file ('edgevae keygen').")
def sign(bundle: str, key_path: str) -> None:
    """Sign BUNDLE (after checking every file against its manifest): writes BUNDLE/edgevae.sig."""
    from edgevae.runtime.signing import sign_bundle

    with _errors():
        signature = sign_bundle(bundle, key_path)
    click.echo(f"signed {bundle} with {signature.fingerprint}")


# ------------------------------------------------------------------------------------------- samples
@main.command()
@click.option("-o", "--out", "folder", default="samples", show_default=True, type=click.Path(file_okay=False))
@click.option("--per-class", type=click.IntRange(1, 100), default=1, show_default=True)
def samples(folder: str, per_class: int) -> None:
    """Write demo PNGs: held-out test digits (normal/) and synthetic outliers (outliers/)."""
    from edgevae.training.samples import write_samples

    with _errors():
        normal, outliers = write_samples(folder, per_class=per_class)
    click.echo(f"wrote {len(normal)} digits to {folder}/normal and {len(outliers)} outliers to {folder}/outliers")


if __name__ == "__main__":  # pragma: no cover
    main()
