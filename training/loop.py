"""The ELBO training loop, checkpoints (state_dict + JSON config, ``weights_only`` loadable) and resume."""

from __future__ import annotations

import gc
import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from edgevae import __version__
from edgevae.runtime import options
from edgevae.runtime.atomic import atomic_path, write_atomic
from edgevae.runtime.contract import InputContract, uint8_to_unit
from edgevae.runtime.errors import CheckpointError, InputError

from .data import IN_MEMORY, DataSpec, auto_val_fraction, load_images, source_shape, split_indices
from .holdout import Holdout, fingerprint, reference_frames, reference_indices
from .model import RULE_FIELDS, SHAPE_FIELDS, VAE, ModelConfig
from . import distributed
from .objectives import ELBOTerms, elbo_terms

# Random tiles the defect head of a tiled run trains on (a draw of its own, kept as uint8 when the images are).
# A head that sees few distinct tiles learns their quirks as normal texture: on grass views (image AUROC of the
# largest tile score, spot / scratch / discoloured, 3,000 steps) 2,048 tiles gave 0.74 / 0.55 / 0.65, 8,192 gave
# 0.84 / 0.67 / 0.81 and 16,384 0.82 / 0.67 / 0.76 (docs/scoring.md).
SURFACE_HEAD_TILES = 8192
CHECKPOINT_FORMAT = "edgevae-checkpoint"
CHECKPOINT_VERSION = 1
BEST = "best.pt"
LAST = "last.pt"
METRICS = "metrics.json"

Progress = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults and allowed ranges come from ``edgevae.runtime.options``.

    Args:
        epochs: passes over the training split. The defaults (epochs of batch 64 with 1-pixel shifts) are the
            recipe measured best on the embedded digits (benchmarks/recipes.py, docs/benchmarks.md); on a much
            larger data set, fewer epochs reach the same number of optimizer steps.
        batch_size: minibatch size.
        lr: Adam learning rate, cosine-decayed to 10 % over the run.
        val_fraction: share of the images held out for validation (best checkpoint) and calibration. None
            (the default): :func:`~edgevae.training.data.auto_val_fraction`, which holds out enough images for a
            1 % threshold on small data sets; the run's checkpoints store the share it resolved to.
        seed: seeds the split, the initial weights, the shuffling and the reparameterisation noise.
        beta: weight of the KL term once warm-up is over (1.0 is the true ELBO).
        kl_warmup_epochs: epochs over which the KL weight rises linearly from 0 to ``beta``.
        augment_shift: random translation of each training image by a whole number of pixels, up to this many
            in each direction (0: off). Whole-pixel shifts move pixel values without interpolating them, so the
            training images stay as sharp as the data; interpolated shifts blurred them and cost held-out ELBO
            (docs/benchmarks.md).
        augment_rotate: random rotation of each training image by up to this many degrees, bilinear (0: off).
        defect_head: after the VAE, train the defect head on synthetic defects made from the training images
            (:mod:`edgevae.training.defect_head`; its time is capped: ``defect_time_cap``).
        defect_steps: the defect head's optimizer steps (fewer when its time cap comes first).
        defect_time_cap: cap the head's training at the VAE's own wall time, twice that for a full-resolution head
            (``defect_head.TIME_CAP_FACTORS``; False: exactly ``defect_steps`` steps, whatever the machine's
            load: reproducible runs, the test suite's fixtures).
        defect_widths: the defect head's channels at half, a quarter and an eighth of the input's resolution
            (:class:`~edgevae.training.defect_head.DefectHead`). Wider heads cost about the square of the width
            ratio in compute, on every device that scores with them (docs/scoring.md measures 24/48/96).
        defect_resolution: where the defect head makes its logits, one of ``options.DEFECT_RESOLUTIONS``:
            ``"half"`` (upsampled to the input's size) or ``"full"`` (a full-resolution stage at each end of the
            head; :class:`~edgevae.training.defect_head.DefectHead`). None (the default): ``"full"`` for a tiled
            run, whose defects are a few pixels wide at native resolution (on the tiles benchmark's gravel it
            raised every kind, docs/scoring.md), ``"half"`` otherwise (the cheaper head: an untiled bundle scores
            every image with it).
        defect_heads: how many defect heads to train, from seeds ``seed``, ``seed + 1``, ...; more than one ships
            as one head whose logits are their mean (:class:`~edgevae.training.defect_head.HeadEnsemble`), at
            that many times the head's training time (each under the time cap of its own) and scoring time.
        labelled_defects: a folder of the user's own defective images, each with a ``NAME_mask`` image beside it
            (:mod:`edgevae.training.labelled`): the defect head trains on them beside the synthetic defects. None:
            synthetic defects alone. Read and checked before the VAE trains.
    """

    epochs: int = options.EPOCHS
    batch_size: int = options.BATCH_SIZE
    lr: float = options.LEARNING_RATE
    val_fraction: float | None = None
    seed: int = options.SEED
    beta: float = options.BETA
    kl_warmup_epochs: int = options.KL_WARMUP_EPOCHS
    augment_shift: int = options.AUGMENT_SHIFT
    augment_rotate: float = options.AUGMENT_ROTATE
    defect_head: bool = options.DEFECT_HEAD
    defect_steps: int = options.DEFECT_STEPS
    defect_time_cap: bool = True
    defect_widths: tuple[int, int, int] = options.DEFECT_WIDTHS
    defect_resolution: str | None = None
    defect_heads: int = options.DEFECT_HEADS
    labelled_defects: str | None = None

    def __post_init__(self) -> None:
        if self.labelled_defects is not None:
            object.__setattr__(self, "labelled_defects", os.fspath(self.labelled_defects))
            if not self.defect_head:
                raise ValueError("labelled defects train the defect head, which this run leaves out: drop "
                                 "--no-defect-head (defect_head=False) or --labelled-defects")
        if not 1 <= self.defect_heads <= options.DEFECT_MEMBERS_MAX:
            raise ValueError(f"defect_heads must be in 1..{options.DEFECT_MEMBERS_MAX}, got {self.defect_heads}")
        if self.defect_steps < 1:
            raise ValueError(f"defect_steps must be >= 1, got {self.defect_steps}")
        widths = tuple(self.defect_widths)
        if len(widths) != 3 or not all(isinstance(w, int) and 1 <= w <= options.DEFECT_WIDTH_MAX for w in widths):
            raise ValueError(f"defect_widths must be three whole numbers of channels in 1..{options.DEFECT_WIDTH_MAX}, "
                             f"got {list(widths)}")
        object.__setattr__(self, "defect_widths", widths)
        if self.defect_resolution is not None and self.defect_resolution not in options.DEFECT_RESOLUTIONS:
            raise ValueError(f"defect_resolution must be one of {', '.join(options.DEFECT_RESOLUTIONS)}, "
                             f"got {self.defect_resolution!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1) or None (auto), got {self.val_fraction}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.kl_warmup_epochs < 0:
            raise ValueError(f"kl_warmup_epochs must be >= 0, got {self.kl_warmup_epochs}")
        if not (float(self.augment_shift).is_integer() and 0 <= self.augment_shift <= options.AUGMENT_SHIFT_MAX):
            raise ValueError(f"augment_shift must be a whole number of pixels in 0..{options.AUGMENT_SHIFT_MAX}, "
                             f"got {self.augment_shift} (shifts are exact, without interpolation)")
        object.__setattr__(self, "augment_shift", int(self.augment_shift))
        if not 0 <= self.augment_rotate <= options.AUGMENT_ROTATE_MAX:
            raise ValueError(f"augment_rotate must be in [0, {options.AUGMENT_ROTATE_MAX:g}] degrees, "
                             f"got {self.augment_rotate}")

    def split_fraction(self, n: int) -> float:
        """The share of ``n`` images this config holds out: ``val_fraction``, or the automatic rule when None."""
        return self.val_fraction if self.val_fraction is not None else auto_val_fraction(n)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Read a stored config; ``cosine`` (always on, once a setting) is accepted and ignored."""
        return cls(**{k: tuple(v) if k == "defect_widths" else v for k, v in data.items() if k != "cosine"})


@dataclass
class TrainResult:
    """What a run produced: paths and the best validation figures (nats per image)."""

    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_val_neg_elbo: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    defect_head: Path | None = None  # defect.pt, when the run trained one
    defect_seconds: float = 0.0


def cosine_lr_factor(step: int, total_steps: int) -> float:
    """Learning-rate multiplier of the cosine schedule: from 1 at step 0 down to 0.1 at ``total_steps``."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffling, augmentation and reparameterisation noise (resume-safe)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)




@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, its configs and the training state."""

    model: VAE
    model_config: ModelConfig
    train_config: TrainConfig
    data: DataSpec
    epoch: int
    best_val_neg_elbo: float
    history: list[dict[str, float]]
    raw: dict[str, Any]
    path: Path | None = None  # the checkpoint file it was loaded from


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint with ``torch.load(weights_only=True)``: nothing in it is unpickled as code.

    Raises:
        CheckpointError: no such file, not an edgevae checkpoint, or an unsupported version.
    """
    p = Path(path)
    if p.is_dir():
        p = p / BEST
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint; train one with 'edgevae train'")
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:  # corrupt, foreign or unsafe files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p}: not a readable checkpoint ({first_line}); pass the run folder or the best.pt / "
                              "last.pt that 'edgevae train' wrote") from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not an edgevae checkpoint")
    if raw.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint version {raw.get('version')!r} is not supported "
                              f"(expected {CHECKPOINT_VERSION})")
    cfg = ModelConfig.from_dict(json.loads(raw["model_config"]))
    model = VAE(cfg)
    model.load_state_dict(raw["state_dict"])
    model.eval()
    return Checkpoint(
        model=model,
        model_config=cfg,
        train_config=TrainConfig.from_dict(json.loads(raw["train_config"])),
        data=DataSpec.from_dict(json.loads(raw["data"])),
        epoch=int(raw["epoch"]),
        best_val_neg_elbo=float(raw["best_val_neg_elbo"]),
        history=json.loads(raw["history"]),
        raw=raw,
        path=p,
    )


def run_holdout(ck: Checkpoint) -> Holdout:
    """A run's held-out images: the ones the run kept (``holdout.npz``), else — for runs from before it kept them —
    its splits re-created from the source, whose fingerprint must match the one the checkpoint recorded.

    Raises:
        CheckpointError: the run kept no images and its source cannot be read or has changed since training.
    """
    if ck.path is not None:
        try:
            kept = Holdout.read(ck.path.parent)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
        if kept is not None:
            return kept
    where = ck.path.parent if ck.path is not None else "this run"
    try:
        images, _, _ = load_images(ck.data, ck.model_config.contract)
    except InputError as exc:
        raise CheckpointError(f"{where} keeps no held-out images (it predates holdout.npz), and its training source "
                              f"cannot be read: {exc}. Restore the data, pass calibration and reference images to "
                              "export, or train again") from exc
    recorded = ck.raw.get("source_fingerprint")
    if recorded is not None and recorded != fingerprint(images):
        raise CheckpointError(f"the training source {ck.data.source} changed since {where} was trained (its "
                              "fingerprint differs); export needs the same held-out images: restore the data or train "
                              "again")
    return _holdout(images, ck.train_config)


def _holdout(images: np.ndarray, train_config: TrainConfig) -> Holdout:
    train_idx, val_idx = split_indices(images.shape[0], train_config.split_fraction(images.shape[0]), train_config.seed)
    return Holdout(images[val_idx], images[reference_indices(train_idx, train_config.seed)], fingerprint(images))


@dataclass(frozen=True)
class Augmentation:
    """One batch's random augmentation: a rotation angle (radians) and whole-pixel shifts per image (None: off).

    Drawn for a whole global batch; a process of a distributed run keeps its rows (``rows``), so every process
    sees the draws a single process would.
    """

    angle: torch.Tensor | None
    dx: torch.Tensor | None
    dy: torch.Tensor | None
    shift: int

    @classmethod
    def draw(cls, n: int, shift: int, rotate: float, gen: torch.Generator) -> "Augmentation":
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotate) if rotate else None
        dx = torch.randint(-shift, shift + 1, (n,), generator=gen) if shift else None
        dy = torch.randint(-shift, shift + 1, (n,), generator=gen) if shift else None
        return cls(angle, dx, dy, shift)

    def rows(self, positions: torch.Tensor) -> "Augmentation":
        pick = (lambda v: None if v is None else v[positions])  # noqa: E731
        return Augmentation(pick(self.angle), pick(self.dx), pick(self.dy), self.shift)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate (bilinear) then translate (exact) each image of ``x`` (N, C, H, W), zero fill."""
        n, c, h, w = x.shape  # (N, C, H, W)
        if self.angle is not None:
            cos, sin, zero = torch.cos(self.angle), torch.sin(self.angle), torch.zeros(n)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
            grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
            x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.dx is not None and self.dy is not None:
            s = self.shift
            padded = torch.nn.functional.pad(x, (s, s, s, s))  # (N, C, H + 2s, W + 2s)
            rows = torch.arange(h)[None, :] + s - self.dy[:, None]  # (N, H): source row of each output row
            cols = torch.arange(w)[None, :] + s - self.dx[:, None]  # (N, W)
            picked = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
            x = picked.permute(0, 3, 1, 2).contiguous()
        return x


def _to_float(images: np.ndarray) -> torch.Tensor:
    if images.dtype == np.uint8:
        return torch.from_numpy(uint8_to_unit(images))
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def evaluate(model: VAE, x: torch.Tensor, seed: int, batch_size: int = 500,
             ranks: distributed.Ranks | None = None) -> dict[str, float]:
    """Negative ELBO, reconstruction and KL in nats per image, one fixed noise draw per image.

    With ``ranks`` of a distributed run each process evaluates every W-th image (with the noise one process
    would draw for it) and the sums are all-reduced: every process returns the figures of all of ``x``.
    """
    ranks = ranks or distributed.Ranks(device=next(model.parameters()).device)
    gen = torch.Generator().manual_seed(seed)
    totals = {"neg_elbo": 0.0, "recon": 0.0, "kl": 0.0}
    model.eval()
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            eps = torch.randn((xb.shape[0], model.config.latent_dim), generator=gen)  # (B, D): as one process draws
            mine = torch.arange(ranks.rank, xb.shape[0], ranks.world)
            terms = elbo_terms(model, xb[mine].to(ranks.device), None, eps=eps[mine])
            nll, kl = terms.nll.double(), terms.kl.double()  # float64 sums: the same figure however it is split
            totals["recon"] += float(nll.sum())
            totals["kl"] += float(kl.sum())
            totals["neg_elbo"] += float((nll + kl).sum())
    totals = distributed.all_reduce_sums(totals, ranks)
    return {k: v / x.shape[0] for k, v in totals.items()}


class _ELBOStep(torch.nn.Module):
    """One training step's forward pass as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> ELBOTerms:
        return elbo_terms(self.model, x, None, eps=eps)


@dataclass
class _Run:
    """Everything a run carries from epoch to epoch: the data, the model and optimizer, and the record so far."""

    out: Path
    data: DataSpec
    model_config: ModelConfig
    train_config: TrainConfig
    x_train: torch.Tensor
    x_val: torch.Tensor
    model: VAE
    step: torch.nn.Module  # the forward pass of a training step; wrapped in DistributedDataParallel when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ranks: distributed.Ranks
    start_epoch: int = 0
    best: float = math.inf
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    source_fingerprint: str = ""
    tiles: Any = None  # a tiled run's TileSource (edgevae.training.tiles): new random tiles every epoch

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.x_train.shape[0] / self.train_config.batch_size)


def train(
    data: DataSpec,
    run_dir: str | os.PathLike[str],
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    device: str = options.DEVICE,
    images: np.ndarray | None = None,
) -> TrainResult:
    """Train a VAE by maximising the ELBO; keep the best checkpoint by validation negative ELBO; then (unless
    ``train_config.defect_head`` is off) train the defect head for at most as long as the VAE took.

    Writes ``best.pt`` (best validation), ``last.pt`` (end of the latest epoch, for ``resume``),
    ``metrics.json`` and ``defect.pt`` (the defect head) into ``run_dir``, each atomically.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), the process joins the process group and
    trains its share of each global batch with DistributedDataParallel (:mod:`edgevae.training.distributed`);
    only rank 0 writes files and reports progress, and the checkpoints are the same as a single process's.

    Args:
        data: the training source.
        run_dir: output folder (created); shared by all processes of a distributed run.
        model_config: architecture; by default inferred from the data (channels, size) with default widths.
        train_config: optimisation settings; ``batch_size`` is the global batch.
        resume: continue from ``run_dir/last.pt`` (its configs win over the arguments).
        progress: called with ("model" | "split" | "epoch_start" | "batch" | "epoch_end" | "skipped" |
            "defect_start" | "defect_step" | "defect_done" | "done", info); only on rank 0. ``defect_start``
            carries ``unit``: ``"tiles"`` when its ``images`` count a tiled run's tiles, else ``"images"``.
        device: ``auto`` (CUDA when available, else the CPU), ``cpu`` or ``cuda``.
        images: train on this array (uint8 or [0, 1] floats, any layout the contract accepts) instead of reading
            ``data``; ``data`` then only records the run's options (``DataSpec(source=IN_MEMORY)``). The run keeps
            its held-out images (``holdout.npz``), so it exports without the array.

    Raises:
        InputError: the data cannot be loaded.
        CheckpointError: nothing to resume, or an unreadable ``last.pt``.
        DistributedError: the process group cannot be formed, or another process was lost.
        ValueError: bad configuration, or training diverged.
    """
    started = time.perf_counter()
    ranks = distributed.setup(device)
    emit = (progress or (lambda event, info: None)) if ranks.is_main else (lambda event, info: None)
    try:
        run = _restore(Path(run_dir), data, model_config, train_config, resume, emit, ranks, images)
        labelled = _labelled(run, emit) if ranks.is_main and run.train_config.defect_head else None
        for epoch in range(run.start_epoch, run.train_config.epochs):
            _run_epoch(run, epoch, emit, started)
        out, best_epoch, best, history = run.out, run.best_epoch, run.best, run.history
        head_images = _head_images(run) if ranks.is_main and run.train_config.defect_head else None
        head_config = _head_config(run) if head_images is not None else None
        head_unit = "tiles" if run.tiles is not None else "images"  # what the head's start event counts
        time_cap = run.train_config.defect_time_cap
        if ranks.distributed:
            # DistributedDataParallel's reducer holds the process group's work objects: it goes first, while the
            # group is alive (a gloo group destroyed under it aborted a process at exit, once in several runs)
            del run
            gc.collect()
    finally:
        distributed.teardown(ranks)
    vae_seconds = time.perf_counter() - started
    head_path, head_seconds = None, 0.0
    if head_images is not None and head_config is not None:  # rank 0 alone, after the process group is gone
        from .defect_head import TIME_CAP_FACTORS, save_head, train_head

        if time_cap:
            head_config = replace(head_config, time_budget=vae_seconds * TIME_CAP_FACTORS[head_config.resolution])
        def head_emit(event: str, info: Mapping[str, Any]) -> None:
            emit(event, {**info, "unit": head_unit} if event == "defect_start" else info)

        head = train_head(head_images, head_config, progress=head_emit, labelled=labelled)
        head_path, head_seconds = save_head(head, out), head.seconds
    seconds = time.perf_counter() - started
    emit("done", {"best_epoch": best_epoch, "best_val_neg_elbo": best, "seconds": seconds,
                  "vae_seconds": vae_seconds, "defect_seconds": head_seconds})
    return TrainResult(run_dir=out, best_checkpoint=out / BEST, best_epoch=best_epoch, best_val_neg_elbo=best,
                       history=history, seconds=seconds, defect_head=head_path, defect_seconds=head_seconds)


def _head_images(run: "_Run") -> torch.Tensor:
    """What the defect head trains on: the training images, or for a tiled run ``SURFACE_HEAD_TILES`` random
    tiles (kept as uint8 when the images are)."""
    if run.tiles is None:
        return run.x_train
    tiles = run.tiles.draw(max(SURFACE_HEAD_TILES, run.x_train.shape[0]), _tile_rng(run.train_config.seed, -1))
    return torch.from_numpy(tiles) if tiles.dtype == np.uint8 else _to_float(tiles)


def _tile_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of a tiled run's tiles in an epoch (epoch -1: the defect head's tiles)."""
    return np.random.default_rng([seed, epoch + 1])


def _training_set(data: DataSpec, model_config: ModelConfig, train_config: TrainConfig, given: Any, emit: Progress,
                  ranks: distributed.Ranks) -> tuple[TrainConfig, np.ndarray, np.ndarray, Holdout, Any]:
    """The split and what the run trains and validates on: (config with its split resolved, training images or
    the first epoch's tiles, validation images or tiles, what the run keeps for export, the TileSource or None)."""
    if data.tile is not None:
        return _tiled_set(data, model_config, train_config, given, emit, ranks)
    images = _images(data, model_config, given, emit)
    # resolved once and stored, so that export re-creates the same split
    train_config = replace(train_config, val_fraction=train_config.split_fraction(images.shape[0]))
    train_idx, val_idx = split_indices(images.shape[0], train_config.val_fraction, train_config.seed)
    emit("split", {"n_train": len(train_idx), "n_val": len(val_idx), "val_fraction": train_config.val_fraction,
                   "processes": ranks.world, "device": str(ranks.device)})
    return train_config, images[train_idx], images[val_idx], _holdout(images, train_config), None


def _tiled_set(data: DataSpec, model_config: ModelConfig, train_config: TrainConfig, given: Any, emit: Progress,
               ranks: distributed.Ranks) -> tuple[TrainConfig, np.ndarray, np.ndarray, Holdout, Any]:
    """``_training_set`` of a tiled run: the images split whole, tiles cut from each side of the split."""
    from edgevae.runtime.tiles import VALIDATION_TILES, grid_tiles

    from .tiles import TileSource, fingerprint_images, load_native, size_summary, tiles_per_epoch

    tile = int(data.tile or 0)
    images, skipped = load_native(data, int(model_config.channels or 1), given)
    for item in skipped:
        emit("skipped", {"item": item})
    train_config = replace(train_config, val_fraction=train_config.split_fraction(len(images)))
    train_idx, val_idx = split_indices(len(images), train_config.val_fraction, train_config.seed)
    train_images, held_out = [images[i] for i in train_idx], [images[i] for i in val_idx]
    source = TileSource(train_images, tile)
    per_epoch = tiles_per_epoch(train_images, tile, data.tiles_per_epoch)
    x_val = grid_tiles(held_out, tile, VALIDATION_TILES, train_config.seed)
    reference = source.draw(options.REFERENCE_IMAGES, np.random.default_rng([train_config.seed, 0, 1]))
    holdout = Holdout(x_val, reference, fingerprint_images(images), tuple(held_out),
                      reference_frames(train_images, train_config.seed))
    emit("split", {"n_train": len(train_idx), "n_val": len(val_idx), "val_fraction": train_config.val_fraction,
                   "processes": ranks.world, "device": str(ranks.device),
                   "tiles": {"tile": tile, "per_epoch": per_epoch, "val_tiles": int(x_val.shape[0]),
                             "sizes": size_summary(images), "downscale": data.downscale}})
    return train_config, source.draw(per_epoch, _tile_rng(train_config.seed, 0)), x_val, holdout, source


def _head_config(run: "_Run") -> Any:
    """The defect head's settings for this run: its channels, steps and seed; a tiled (position-free) run's head
    trains on surface defects (``SURFACE_DEFECTS``) with hard negatives (``SURFACE_HARD_NEGATIVES``)."""
    from .defect_head import SURFACE_HARD_NEGATIVES, HeadConfig
    from .defects import SURFACE_DEFECTS

    surface = {"defects": SURFACE_DEFECTS, "hard_negatives": SURFACE_HARD_NEGATIVES} if run.tiles is not None else {}
    return HeadConfig(channels=int(run.model_config.channels or 1), widths=run.train_config.defect_widths,
                      resolution=defect_resolution(run.train_config, tiled=run.tiles is not None),
                      steps=run.train_config.defect_steps, seed=run.train_config.seed,
                      members=run.train_config.defect_heads, **surface)


def defect_resolution(config: TrainConfig, *, tiled: bool) -> str:
    """The defect head's resolution for a run: ``config.defect_resolution``, or when that is None ``"full"`` for a
    tiled run and ``"half"`` otherwise."""
    if config.defect_resolution is not None:
        return config.defect_resolution
    return "full" if tiled else "half"


def _labelled(run: "_Run", emit: Progress) -> Any:
    """The run's labelled defects (``TrainConfig.labelled_defects``) read for its head, or None."""
    if run.train_config.labelled_defects is None:
        return None
    from .labelled import load_labelled

    found = load_labelled(run.train_config.labelled_defects, run.model_config.contract, run.data.tile,
                          run.data.downscale)
    emit("labelled", {"images": len(found.images), "pixels": int(sum(int(m.sum()) for m in found.masks))})
    return found


def _run_epoch(run: _Run, epoch: int, emit: Progress, started: float) -> None:
    """Train one epoch, validate, keep the record and write the checkpoints (rank 0)."""
    if run.tiles is not None:  # every process draws the same tiles from the epoch's seed
        run.x_train = _to_float(run.tiles.draw(run.x_train.shape[0], _tile_rng(run.train_config.seed, epoch)))
    emit("epoch_start", {"epoch": epoch + 1, "epochs": run.train_config.epochs, "steps": run.steps_per_epoch})
    sums = _train_epoch(run, epoch, emit)
    val = evaluate(run.model, run.x_val, seed=run.train_config.seed, ranks=run.ranks)
    record = {"epoch": epoch + 1, **{f"train_{k}": v / run.x_train.shape[0] for k, v in sums.items()},
              **{f"val_{k}": v for k, v in val.items()}, "lr": run.optimizer.param_groups[0]["lr"],
              "seconds": time.perf_counter() - started}
    run.history.append(record)
    if not math.isfinite(val["neg_elbo"]):
        raise ValueError(f"training diverged at epoch {epoch + 1} (validation negative ELBO {val['neg_elbo']}); "
                         "lower --lr")
    # a plain autoencoder is chosen by what it minimises; its "ELBO" (s = exp(-10)) is a valid but loose bound
    criterion = val["neg_elbo"] if run.model_config.variational else val["recon"]
    improved = criterion < run.best
    if improved:
        run.best, run.best_epoch = criterion, epoch + 1
    if run.ranks.is_main:
        _save(run, epoch + 1, improved)
    distributed.barrier(run.ranks)  # the checkpoint of this epoch is complete before any process goes on
    emit("epoch_end", {**record, "best": improved})


def _restore(out: Path, data: DataSpec, model_config: ModelConfig | None, train_config: TrainConfig | None,
             resume: bool, emit: Progress, ranks: distributed.Ranks, given: np.ndarray | None = None) -> _Run:
    """Load the data and build the model and optimizer: fresh, or as ``out/last.pt`` left them."""
    out.mkdir(parents=True, exist_ok=True)
    if ranks.is_main and not resume:  # a head from an earlier run in this folder does not belong to the new VAE
        (out / "defect.pt").unlink(missing_ok=True)
    state: dict[str, Any] | None = None
    if resume:
        if not (out / LAST).exists():
            raise CheckpointError(f"--resume: {out / LAST} does not exist; start a new run without --resume")
        ck = load_checkpoint(out / LAST)
        model_config, train_config, data, state = ck.model_config, ck.train_config, ck.data, ck.raw
    train_config = train_config or TrainConfig()
    distributed.check_batch_size(train_config.batch_size, ranks)
    model_config = model_config or ModelConfig()
    if given is not None:
        data = replace(data, source=IN_MEMORY)
    if not model_config.is_resolved:
        model_config = _resolve(model_config, data, emit, given)
    train_config, x_train, x_val, holdout, tiles = _training_set(data, model_config, train_config, given, emit, ranks)
    torch.manual_seed(train_config.seed)
    model = VAE(model_config).to(ranks.device)
    step: torch.nn.Module = _ELBOStep(model)
    if ranks.distributed:  # every process starts from rank 0's weights (the same seed gives them anyway)
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None,
            gradient_as_bucket_view=True)  # gradients live in the all-reduce buffers: no copy per step
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    total_steps = math.ceil(x_train.shape[0] / train_config.batch_size) * train_config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_lr_factor(step, total_steps))
    run = _Run(out, data, model_config, train_config, _to_float(x_train), _to_float(x_val),
               model, step, optimizer, scheduler, ranks, tiles=tiles)
    run.source_fingerprint = holdout.source_fingerprint
    if ranks.is_main:
        holdout.save(out)  # what export needs, so that it never reads the training source
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        run.start_epoch, run.best = int(state["epoch"]), float(state["best_val_neg_elbo"])
        run.best_epoch, run.history = int(state["best_epoch"]), json.loads(state["history"])
    return run


def _train_epoch(run: _Run, epoch: int, emit: Progress) -> dict[str, float]:
    """One pass over the shuffled training split; returns the sums of loss, reconstruction and KL over images
    (of all processes).

    The epoch's generator draws the order, then per global batch the augmentation and the reparameterisation
    noise of all its images; a process of a distributed run keeps the rows of its images (module docstring of
    :mod:`edgevae.training.distributed`).
    """
    tc, ranks, n = run.train_config, run.ranks, run.x_train.shape[0]
    run.model.train()
    gen = epoch_generator(tc.seed, epoch)
    torch.randperm(n, generator=gen)  # the single-process order; drawn here too so the stream stays the same
    shard = distributed.epoch_shard(n, _order_seed(tc.seed), epoch, ranks)
    steps = run.steps_per_epoch
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
    for step in range(steps):
        rows, positions, size = distributed.step_rows(step, tc.batch_size, n, ranks)
        xb = run.x_train[shard[rows]]  # (B / W, C, H, W)
        if tc.augment_shift or tc.augment_rotate:
            xb = Augmentation.draw(size, tc.augment_shift, tc.augment_rotate, gen).rows(positions).apply(xb)
        eps = torch.randn((size, run.model_config.latent_dim), generator=gen)[positions]  # (B / W, D)
        weight = ranks.world / size  # DDP averages the processes' gradients: this makes it the global batch mean
        if positions.numel() == 0:  # a short last batch left this process nothing: it joins the all-reduce
            xb, eps, weight = run.x_train[shard[:1]], torch.zeros((1, eps.shape[1])), 0.0  # with zero weight
        warm = tc.kl_warmup_epochs
        beta = tc.beta * (min(1.0, (epoch + step / steps) / warm) if warm else 1.0)
        terms = run.step(xb.to(ranks.device), eps)
        total = terms.loss_sum(beta)
        loss = total * weight
        run.optimizer.zero_grad(set_to_none=True)
        with distributed.lost_peer(ranks):
            loss.backward()  # under DDP this all-reduces the gradients
        run.optimizer.step()
        run.scheduler.step()
        kept = 1.0 if weight else 0.0
        part = {"loss": kept * float(total.detach()), "recon": kept * float(terms.nll.detach().sum()),
                "kl": kept * float(terms.kl.detach().sum())}
        for key, value in part.items():
            sums[key] += value
        emit("batch", {k: v / max(1, xb.shape[0]) for k, v in part.items()})
    return distributed.all_reduce_sums(sums, ranks)


def _order_seed(seed: int) -> int:
    """The DistributedSampler seed whose epoch-e permutation is the single-process order of epoch e
    (``epoch_generator``: seed * 1_000_003 + epoch)."""
    return seed * 1_000_003


def _save(run: _Run, epoch: int, improved: bool) -> None:
    """Write last.pt (and best.pt when ``improved``) and metrics.json, each atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "edgevae_version": __version__,
        "model_config": json.dumps(run.model_config.to_dict()),
        "train_config": json.dumps(asdict(run.train_config)),
        "data": json.dumps(run.data.to_dict()),
        "n_train": int(run.x_train.shape[0]),
        "n_val": int(run.x_val.shape[0]),
        "state_dict": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epoch,
        "best_epoch": run.best_epoch,
        "best_val_neg_elbo": run.best,
        "history": json.dumps(run.history),
        "source_fingerprint": run.source_fingerprint,
    }
    for name in ([BEST] if improved else []) + [LAST]:
        with atomic_path(run.out / name) as tmp:
            torch.save(state, tmp)
    write_atomic(run.out / METRICS, json.dumps({
        "best_epoch": run.best_epoch, "best_val_neg_elbo": run.best, "history": run.history,
        "data": run.data.to_dict(), "model_config": run.model_config.to_dict(),
        "train_config": asdict(run.train_config), "n_train": int(run.x_train.shape[0]),
        "n_val": int(run.x_val.shape[0]),
    }, indent=2))


def _images(data: DataSpec, model_config: ModelConfig, given: np.ndarray | None, emit: Progress) -> np.ndarray:
    """The training images (N, C, H, W): the given array, or the source's readable images (each skipped one said)."""
    if given is not None:
        return model_config.contract.to_nchw(np.asarray(given))
    images, _, skipped = load_images(data, model_config.contract)
    for item in skipped:
        emit("skipped", {"item": item})
    return images


def _resolve(model_config: ModelConfig, data: DataSpec, emit: Progress, given: np.ndarray | None = None) -> ModelConfig:
    """Fill the fields a config leaves unset from the data and the architecture rule, and say what was inferred."""
    unset = model_config.unset()
    if data.tile is not None and isinstance(given, (list, tuple)):  # images of several sizes: the first says C
        first = np.asarray(given[0])
        shape = source_shape(data, first[None] if first.ndim == 3 else first[None, None])
    else:
        shape = source_shape(data, given)
    if data.tile is not None:  # a tiled model's input is one tile
        shape = replace(shape, height=data.tile, width=data.tile,
                        note=f"{shape.channels} channel(s) from {shape.note}; {data.tile}x{data.tile} tiles")
    contract = InputContract(model_config.channels or shape.channels, model_config.height or shape.height,
                             model_config.width or shape.width)
    resolved = model_config.resolved(contract)
    from_data = [f for f in SHAPE_FIELDS if f in unset]
    from_rule = [f for f in RULE_FIELDS if f in unset]
    emit("model", {"config": resolved.to_dict(), "from_data": from_data, "from_rule": from_rule,
                   "source": shape.note if from_data else None})
    return resolved
