"""The ELBO training loop, checkpoints (state_dict + JSON config, ``weights_only`` loadable) and resume."""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from edgevae import __version__
from edgevae.runtime.atomic import atomic_path
from edgevae.runtime.contract import uint8_to_unit

from .data import DataSpec, infer_contract, load_images, split_indices
from .model import VAE, ModelConfig
from .objectives import log_likelihood

CHECKPOINT_FORMAT = "edgevae-checkpoint"
CHECKPOINT_VERSION = 1
BEST = "best.pt"
LAST = "last.pt"
METRICS = "metrics.json"

Progress = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Args:
        epochs: passes over the training split. The defaults (150 epochs of batch 64 with 1-pixel shifts) are
            the recipe measured best on the embedded digits (benchmarks/recipes.py): about 8,400 optimizer
            steps on 3,600 images. On a much larger data set, fewer epochs reach the same number of steps.
        batch_size: minibatch size.
        lr: Adam learning rate (cosine-decayed to 10 % over the run when ``cosine`` is set).
        val_fraction: share of the images held out for validation (best checkpoint, calibration).
        seed: seeds the split, the initial weights, the shuffling and the reparameterisation noise.
        beta: weight of the KL term once warm-up is over (1.0 is the true ELBO).
        kl_warmup_epochs: epochs over which the KL weight rises linearly from 0 to ``beta``.
        cosine: use a cosine learning-rate schedule.
        augment_shift: random translation of each training image by a whole number of pixels, up to this many
            in each direction (0: off). Whole-pixel shifts move pixel values without interpolating them, so the
            training images stay as sharp as the data; interpolated sub-pixel shifts blurred them and cost 1.9
            nats of test ELBO on the embedded digits with the default recipe (102.0 against 100.1 nats in two
            runs of benchmarks/recipes.py, before and after the change).
        augment_rotate: random rotation of each training image by up to this many degrees, bilinear (0: off).
    """

    epochs: int = 150
    batch_size: int = 64
    lr: float = 2e-3
    val_fraction: float = 0.1
    seed: int = 0
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    cosine: bool = True
    augment_shift: int = 1
    augment_rotate: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.kl_warmup_epochs < 0:
            raise ValueError(f"kl_warmup_epochs must be >= 0, got {self.kl_warmup_epochs}")
        if not (float(self.augment_shift).is_integer() and 0 <= self.augment_shift <= 8):
            raise ValueError(f"augment_shift must be a whole number of pixels in 0..8, got {self.augment_shift} "
                             "(shifts are exact, without interpolation)")
        object.__setattr__(self, "augment_shift", int(self.augment_shift))
        if not 0 <= self.augment_rotate <= 45:
            raise ValueError(f"augment_rotate must be in [0, 45] degrees, got {self.augment_rotate}")


@dataclass
class TrainResult:
    """What a run produced: paths and the best validation figures (nats per image)."""

    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_val_neg_elbo: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def cosine_lr_factor(step: int, total_steps: int) -> float:
    """Learning-rate multiplier of the cosine schedule: from 1 at step 0 down to 0.1 at ``total_steps``."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temporary file beside ``path`` and rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


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


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint with ``torch.load(weights_only=True)``: nothing in it is unpickled as code.

    Raises:
        ValueError: not an edgevae checkpoint, or an unsupported version.
    """
    p = Path(path)
    if p.is_dir():
        p = p / BEST
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint; train one with 'edgevae train'")
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:  # corrupt, foreign or unsafe files
        raise ValueError(f"{p}: not a readable checkpoint ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: not an edgevae checkpoint")
    if raw.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{p}: checkpoint version {raw.get('version')!r} is not supported (expected {CHECKPOINT_VERSION})")
    cfg = ModelConfig.from_dict(json.loads(raw["model_config"]))
    model = VAE(cfg)
    model.load_state_dict(raw["state_dict"])
    model.eval()
    return Checkpoint(
        model=model,
        model_config=cfg,
        train_config=TrainConfig(**json.loads(raw["train_config"])),
        data=DataSpec.from_dict(json.loads(raw["data"])),
        epoch=int(raw["epoch"]),
        best_val_neg_elbo=float(raw["best_val_neg_elbo"]),
        history=json.loads(raw["history"]),
        raw=raw,
    )


def held_out_images(data: DataSpec, model_config: ModelConfig, train_config: TrainConfig) -> np.ndarray:
    """Re-create the validation split of a run as float32 (N, C, H, W) (used by export for parity and calibration)."""
    images, _, _ = load_images(data, model_config.contract)
    _, val_idx = split_indices(images.shape[0], train_config.val_fraction, train_config.seed)
    return model_config.contract.prepare(images[val_idx])


def augment(x: torch.Tensor, shift: int, rotate: float, gen: torch.Generator) -> torch.Tensor:
    """Random per-image rotation (degrees, bilinear) then translation by whole pixels (exact), zero fill."""
    n, c, h, w = x.shape  # (N, C, H, W)
    if rotate:
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotate)
        cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(n)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if shift:
        dx = torch.randint(-shift, shift + 1, (n,), generator=gen)
        dy = torch.randint(-shift, shift + 1, (n,), generator=gen)
        padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))  # (N, C, H + 2s, W + 2s)
        rows = torch.arange(h)[None, :] + shift - dy[:, None]  # (N, H): source row of each output row
        cols = torch.arange(w)[None, :] + shift - dx[:, None]  # (N, W)
        picked = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
        x = picked.permute(0, 3, 1, 2).contiguous()
    return x


def _to_float(images: np.ndarray) -> torch.Tensor:
    if images.dtype == np.uint8:
        return torch.from_numpy(uint8_to_unit(images))
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def evaluate(model: VAE, x: torch.Tensor, seed: int, batch_size: int = 500) -> dict[str, float]:
    """Negative ELBO, reconstruction and KL in nats per image, one fixed noise draw per image."""
    gen = torch.Generator().manual_seed(seed)
    totals = {"neg_elbo": 0.0, "recon": 0.0, "kl": 0.0}
    model.eval()
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            mu, logvar, kl = model.encode(xb)
            eps = torch.randn(mu.shape, generator=gen)
            mean, param = model.decode(model.reparameterize(mu, logvar, eps))
            nll = -log_likelihood(xb, model.config.likelihood, mean, param)
            totals["recon"] += float(nll.sum())
            totals["kl"] += float(kl.sum())
            totals["neg_elbo"] += float((nll + kl).sum())
    return {k: v / x.shape[0] for k, v in totals.items()}


def train(
    data: DataSpec,
    run_dir: str | os.PathLike[str],
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a VAE by maximising the ELBO; keep the best checkpoint by validation negative ELBO.

    Writes ``best.pt`` (best validation), ``last.pt`` (end of the latest epoch, for ``resume``) and
    ``metrics.json`` into ``run_dir``, each atomically.

    Args:
        data: the training source.
        run_dir: output folder (created).
        model_config: architecture; by default inferred from the data (channels, size) with default widths.
        train_config: optimisation settings.
        resume: continue from ``run_dir/last.pt`` (its configs win over the arguments).
        progress: called with ("epoch_start" | "batch" | "epoch_end" | "done", info).

    Raises:
        InputError: the data cannot be loaded.
        ValueError: bad configuration, or nothing to resume.
    """
    started = time.perf_counter()
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = progress or (lambda event, info: None)
    state: dict[str, Any] | None = None
    if resume:
        if not (out / LAST).exists():
            raise ValueError(f"--resume: {out / LAST} does not exist; start a new run without --resume")
        ck = load_checkpoint(out / LAST)
        model_config, train_config, data, state = ck.model_config, ck.train_config, ck.data, ck.raw
    train_config = train_config or TrainConfig()
    if model_config is None:
        model_config = ModelConfig(**{**ModelConfig().to_dict(), **_shape_of(infer_contract(data))})
    contract = model_config.contract
    images, _, skipped = load_images(data, contract)
    for item in skipped:
        emit("skipped", {"item": item})
    train_idx, val_idx = split_indices(images.shape[0], train_config.val_fraction, train_config.seed)
    x_train, x_val = _to_float(images[train_idx]), _to_float(images[val_idx])

    torch.manual_seed(train_config.seed)
    model = VAE(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    steps_per_epoch = math.ceil(x_train.shape[0] / train_config.batch_size)
    total_steps = steps_per_epoch * train_config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        (lambda step: cosine_lr_factor(step, total_steps)) if train_config.cosine else (lambda step: 1.0),
    )
    start_epoch, best, best_epoch, history = 0, math.inf, -1, []
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        best = float(state["best_val_neg_elbo"])
        best_epoch = int(state["best_epoch"])
        history = json.loads(state["history"])

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "edgevae_version": __version__,
            "model_config": json.dumps(model_config.to_dict()),
            "train_config": json.dumps(asdict(train_config)),
            "data": json.dumps(data.to_dict()),
            "n_train": int(x_train.shape[0]),
            "n_val": int(x_val.shape[0]),
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_epoch": best_epoch,
            "best_val_neg_elbo": best,
            "history": json.dumps(history),
        }

    for epoch in range(start_epoch, train_config.epochs):
        model.train()
        gen = torch.Generator().manual_seed(train_config.seed * 1_000_003 + epoch)
        order = torch.randperm(x_train.shape[0], generator=gen)
        warm = train_config.kl_warmup_epochs
        emit("epoch_start", {"epoch": epoch + 1, "epochs": train_config.epochs, "steps": steps_per_epoch})
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        for step in range(steps_per_epoch):
            idx = order[step * train_config.batch_size:(step + 1) * train_config.batch_size]
            xb = x_train[idx]  # (B, C, H, W)
            if train_config.augment_shift or train_config.augment_rotate:
                xb = augment(xb, train_config.augment_shift, train_config.augment_rotate, gen)
            frac = min(1.0, (epoch + step / steps_per_epoch) / warm) if warm else 1.0
            beta = train_config.beta * frac
            mu, logvar, kl = model.encode(xb)
            eps = torch.randn(mu.shape, generator=gen)
            mean, param = model.decode(model.reparameterize(mu, logvar, eps))
            nll = -log_likelihood(xb, model_config.likelihood, mean, param)
            loss = (nll + beta * kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            b = xb.shape[0]
            sums["loss"] += float(loss.detach()) * b
            sums["recon"] += float(nll.detach().mean()) * b
            sums["kl"] += float(kl.detach().mean()) * b
            emit("batch", {"loss": float(loss.detach()), "recon": float(nll.detach().mean()), "kl": float(kl.detach().mean())})
        val = evaluate(model, x_val, seed=train_config.seed)
        record = {"epoch": epoch + 1, **{f"train_{k}": v / x_train.shape[0] for k, v in sums.items()},
                  **{f"val_{k}": v for k, v in val.items()}, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - started}
        history.append(record)
        if not math.isfinite(val["neg_elbo"]):
            raise ValueError(f"training diverged at epoch {epoch + 1} (validation negative ELBO {val['neg_elbo']}); "
                             "lower --lr")
        improved = val["neg_elbo"] < best
        if improved:
            best, best_epoch = val["neg_elbo"], epoch + 1
        ck = checkpoint(epoch + 1)
        if improved:
            _atomic_torch_save(ck, out / BEST)
        _atomic_torch_save(ck, out / LAST)
        atomic_write_text(out / METRICS, json.dumps({
            "best_epoch": best_epoch, "best_val_neg_elbo": best, "history": history,
            "data": data.to_dict(), "model_config": model_config.to_dict(), "train_config": asdict(train_config),
            "n_train": int(x_train.shape[0]), "n_val": int(x_val.shape[0]),
        }, indent=2))
        emit("epoch_end", {**record, "best": improved})
    seconds = time.perf_counter() - started
    result = TrainResult(run_dir=out, best_checkpoint=out / BEST, best_epoch=best_epoch,
                         best_val_neg_elbo=best, history=history, seconds=seconds)
    emit("done", {"best_epoch": best_epoch, "best_val_neg_elbo": best, "seconds": seconds})
    return result


def _shape_of(contract: Any) -> dict[str, int]:
    return {"channels": contract.channels, "height": contract.height, "width": contract.width}
