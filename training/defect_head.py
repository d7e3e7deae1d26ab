"""The defect head: a small fully convolutional network that maps an image to a per-pixel defect map (logits).

It is trained from scratch, after the VAE, on synthetic defects made from the same normal images
(:mod:`edgevae.training.defects`); it reads the image alone, so it runs at any image size, needs neither of the
VAE's graphs at scoring time, and one graph call gives the map. The VAE stays what it is: the head adds a local
detector beside the VAE's global scores (``combined`` joins both; docs/scoring.md).

Architecture (``HeadConfig.widths`` = (w0, w1, w2), about 110k weights at the default (16, 32, 64)): see
:class:`DefectHead` — every stage below full resolution (a half, a quarter, an eighth with dilated convolutions
that widen the view to about 100 pixels), logits at half resolution upsampled to the input's size. BatchNorm after
every 3x3 convolution folds into it at export.

The loss suits masks that cover a few pixels: a focal loss (gamma 2) over every pixel plus a soft Dice loss
over the batch. The image's ``defect`` score is a maximum over the map, which a mean over pixels barely sees: a
few confident false peaks on normal texture cost little in the loss and everything in the score.
``HeadConfig.hard_negatives`` = k adds a term on exactly those (:func:`defect_loss`): per image, the k largest
logits off the target pushed down and the few largest on it pushed up. Tiled runs train with it (k =
``SURFACE_HARD_NEGATIVES``). The run stores the head in ``defect.pt`` beside the VAE's checkpoints; ``edgevae export``
ships it as ``defect.onnx``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from edgevae.runtime import options
from edgevae.runtime.atomic import atomic_path
from edgevae.runtime.contract import uint8_to_unit
from edgevae.runtime.errors import CheckpointError

from .defects import FILL_FAMILIES, MASK_FAMILIES, DefectConfig, LabelledDefects, insert_labelled, synthesize

HEAD_FILE = "defect.pt"
HEAD_FORMAT = "edgevae-defect-head"
HEAD_VERSION = 1
FOCAL_GAMMA = 2.0
# The hard-negative term (HeadConfig.hard_negatives): its weight, and how many of the largest logits on a
# defect's pixels it raises (at most).
HARD_WEIGHT = 0.5
HARD_POSITIVES = 4
# The hard negatives of tiled (position-free) runs, which score an image by the largest logit of any tile.
SURFACE_HARD_NEGATIVES = 16
# With labelled defects: the share of every batch's images that carry one (HeadConfig.labelled_share).
LABELLED_SHARE = 0.25

Progress = Callable[[str, Mapping[str, Any]], None]


# How the head returns to half resolution (DefectHead); the first is the default.
UPSAMPLING = ("transposed", "bilinear")
# How the head's half-resolution logits reach the input's size (DefectHead.output); the first is the default.
OUTPUTS = options.DEFECT_UPSAMPLINGS
# Where the head's logits are made (DefectHead.resolution); the first is the default.
RESOLUTIONS = options.DEFECT_RESOLUTIONS
# The head's time cap (TrainConfig.defect_time_cap) as a multiple of the VAE's training time, per resolution. A
# full-resolution step costs 1.3-2 times a half-resolution one (150 steps on 64x64 tiles, batch 32, 2 threads:
# 23-31 s against 15-18 s); under a cap of 1x a tiled gravel run's head stopped at 1,998 of its 3,000 steps.
TIME_CAP_FACTORS = {"half": 1.0, "full": 2.0}


@dataclass(frozen=True)
class HeadConfig:
    """The defect head's architecture and training.

    Args:
        channels: image channels (from the VAE's input contract).
        widths: channels at half, a quarter and an eighth of the input's resolution.
        steps: optimizer steps (batches of synthetic defects).
        batch_size: images per step.
        lr: Adam learning rate, cosine-decayed to 10 %.
        seed: seeds the weights and every synthetic defect.
        defects: what the generator may draw.
        time_budget: stop early after this many seconds (None: no limit); ``train`` passes the VAE's own
            training time, so the head never takes longer than the VAE.
        upsampling: how the head returns to half resolution, one of ``UPSAMPLING`` (see :class:`DefectHead`); a
            stored config without it is a head trained before the choice existed, read as ``"bilinear"``.
        hard_negatives: per image, how many of the largest logits off the defects the loss also pushes down (and
            the largest on them up); 0: the focal and Dice loss alone (see :func:`defect_loss`).
        labelled_share: with labelled defects (``train_head(..., labelled=...)``), the share of every batch's
            images that carry one of them (the synthetic generator still draws over the rest).
        labelled: how many labelled defective images the head trained on (0: synthetic defects alone); recorded,
            not chosen.
        resolution: ``"half"`` (logits at half resolution, upsampled) or ``"full"`` (a full-resolution stage at
            each end: a logit per input pixel; see :class:`DefectHead`); a stored config without it is ``"half"``.
        members: how many heads are trained (seeds ``seed``, ``seed + 1``, ...; each for ``steps`` and under
            ``time_budget`` of its own) and shipped as one whose logits are their mean (:class:`HeadEnsemble`);
            1: a single head, as before the choice existed.
    """

    channels: int = 1
    widths: tuple[int, int, int] = options.DEFECT_WIDTHS
    steps: int = options.DEFECT_STEPS
    batch_size: int = options.DEFECT_BATCH_SIZE
    lr: float = options.DEFECT_LEARNING_RATE
    seed: int = options.SEED
    defects: DefectConfig = field(default_factory=DefectConfig)
    time_budget: float | None = None
    upsampling: str = "transposed"
    hard_negatives: int = 0
    labelled_share: float = LABELLED_SHARE
    labelled: int = 0
    resolution: str = RESOLUTIONS[0]
    members: int = 1

    def __post_init__(self) -> None:
        _check_layout(self.resolution, self.upsampling)
        if not 1 <= self.members <= options.DEFECT_MEMBERS_MAX:
            raise ValueError(f"members must be in 1..{options.DEFECT_MEMBERS_MAX} heads, got {self.members}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != 3 or any(w < 1 for w in self.widths):
            raise ValueError(f"defect head widths must be three positive channel counts, got {list(self.widths)}")
        if self.channels not in options.CHANNELS:
            raise ValueError(f"channels must be one of {options.CHANNELS}, got {self.channels}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.hard_negatives <= 4096:
            raise ValueError(f"hard_negatives must be in 0..4096, got {self.hard_negatives}")
        if not 0.0 < self.labelled_share < 1.0:
            raise ValueError(f"labelled_share must be in (0, 1), got {self.labelled_share}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be a positive number of seconds or None, got {self.time_budget}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["defects"] = {**asdict(self.defects), "masks": list(self.defects.masks), "fills": list(self.defects.fills)}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeadConfig":
        defects = DefectConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["defects"].items()})
        # Heads trained before the transposed upsampling carry no "upsampling" entry: they upsample bilinearly.
        # Heads trained before the full-resolution choice carry no "resolution" entry: they work at half resolution.
        return cls(**{"upsampling": "bilinear", "resolution": RESOLUTIONS[0], **data, "widths": tuple(data["widths"]),
                      "defects": defects})


def _check_layout(resolution: str, upsampling: str) -> None:
    """A known upsampling and resolution, and transposed upsampling with a full-resolution head (the only stage
    built for it). HeadConfig and DefectHead both check here, so a config that cannot be built fails early."""
    if upsampling not in UPSAMPLING:
        raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {upsampling!r}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    if resolution == "full" and upsampling != "transposed":
        raise ValueError("a full-resolution defect head upsamples with transposed convolutions only")


def _checked_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return output


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class DefectHead(nn.Module):
    """x (N, C, H, W) in [0, 1] -> defect logits (N, 1, H, W); any H, W >= 8.

    Every stage works below full resolution: a stride-2 stem (w0, half resolution), a stride-2 stage (w1, a
    quarter), a stride-2 stage with dilated convolutions (w2, an eighth), then two upsampling stages with skip
    connections back to half resolution, one logit per pixel there, and a bilinear upsampling of the logits to the
    input's size. The stem's stride-2 convolution still reads every input pixel, so a 1-px line reaches it; the map
    is located to about 2 px.

    ``upsampling="transposed"`` (the default) doubles the resolution with a 2x2 stride-2 transposed convolution and
    adds the skip connection; ``"bilinear"`` (heads trained before it) interpolates and concatenates. The second
    does the same work in more time: onnxruntime runs Resize and Concat outside its blocked convolution layout, so
    each costs two layout changes (benchmarks/defect_cost.py).

    ``output`` is the last step, from the half-resolution logits to the input's size. ``"bilinear"`` (the default,
    and what the head trains with) gives a smooth map; every output pixel then lies between the head's own
    logits, so a peak one logit wide (a thin scratch) comes out lower than the logit itself. ``"nearest"`` gives
    each logit a 2x2 block: the map's largest value *is* the head's largest logit. Export chooses it per bundle
    (``ExportConfig.defect_upsampling``); it has no weights, so one trained head serves both.

    ``resolution="full"`` adds a stage at the input's own resolution at each end (half of w0 channels, at least
    4): two 3x3 convolutions before the stride-2 stem, and after the half-resolution stage a 2x2 stride-2
    transposed convolution back to full resolution, a skip connection from the first full-resolution stage and a
    3x3 convolution; one logit per input pixel, so ``output`` changes nothing. Transposed upsampling only.
    """

    def __init__(self, channels: int, widths: tuple[int, int, int] = options.DEFECT_WIDTHS,
                 upsampling: str = "transposed", output: str = "bilinear", resolution: str = RESOLUTIONS[0]) -> None:
        super().__init__()
        _check_layout(resolution, upsampling)
        self.output = _checked_output(output)
        w0, w1, w2 = widths
        self.upsampling = upsampling
        self.resolution = resolution
        wf = max(4, w0 // 2)  # channels of the full-resolution stages
        if resolution == "full":
            self.full = nn.Sequential(_conv(channels, wf), _conv(wf, wf))
            self.halves = nn.Sequential(_conv(wf, w0, stride=2), _conv(w0, w0))
        else:
            self.halves = nn.Sequential(_conv(channels, w0, stride=2), _conv(w0, w0))
        self.quarters = nn.Sequential(_conv(w0, w1, stride=2), _conv(w1, w1))
        self.eighths = nn.Sequential(_conv(w1, w2, stride=2), _conv(w2, w2, dilation=2), _conv(w2, w2, dilation=4))
        if upsampling == "transposed":
            self.to_quarter = nn.ConvTranspose2d(w2, w1, 2, stride=2)
            self.to_half = nn.ConvTranspose2d(w1, w0, 2, stride=2)
            self.up_quarter, self.up_half = _conv(w1, w1), _conv(w0, w0)
        else:
            self.up_quarter, self.up_half = _conv(w2 + w1, w1), _conv(w1 + w0, w0)
        if resolution == "full":
            self.to_full = nn.ConvTranspose2d(w0, wf, 2, stride=2)
            self.up_full = _conv(wf, wf)
        self.out = nn.Conv2d(wf if resolution == "full" else w0, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.full(x * 2.0 - 1.0) if self.resolution == "full" else None
        h = self.halves(x * 2.0 - 1.0 if f is None else f)
        q = self.quarters(h)
        e = self.eighths(q)
        if self.upsampling == "transposed":  # an odd side comes back one larger: crop to the skip's size
            q = self.up_quarter(self.to_quarter(e)[..., : q.shape[-2], : q.shape[-1]] + q)
            h = self.up_half(self.to_half(q)[..., : h.shape[-2], : h.shape[-1]] + h)
        else:
            q = self.up_quarter(torch.cat([F.interpolate(e, size=q.shape[-2:], mode="bilinear", align_corners=False),
                                           q], 1))
            h = self.up_half(torch.cat([F.interpolate(q, size=h.shape[-2:], mode="bilinear", align_corners=False),
                                        h], 1))
        if f is not None:  # a logit per input pixel: the last step has nothing to do
            full: torch.Tensor = self.out(self.up_full(self.to_full(h)[..., : f.shape[-2], : f.shape[-1]] + f))
            return full
        if self.output == "nearest":
            nearest: torch.Tensor = F.interpolate(self.out(h), size=x.shape[-2:], mode="nearest")
            return nearest
        logits: torch.Tensor = F.interpolate(self.out(h), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def with_output(self, output: str) -> "DefectHead":
        """A copy of this head (same weights) whose last step is ``output`` (``OUTPUTS``), in eval mode."""
        twin = copy.deepcopy(self).eval()
        twin.output = _checked_output(output)
        return twin


class HeadEnsemble(nn.Module):
    """Heads of one layout trained from different seeds: x -> the mean of their logits (N, 1, H, W).

    The head's largest logit scores a surface's image, and where a head puts its false peaks on normal texture
    depends on its seed more than on any setting measured (docs/scoring.md); the mean of a few heads keeps the
    peaks they share. It costs the heads' time in training and in scoring; exported, it is one graph like a
    single head's, so every runtime reads it unchanged.
    """

    def __init__(self, heads: list[DefectHead]) -> None:
        super().__init__()
        if len(heads) < 2:
            raise ValueError(f"an ensemble has at least two heads, got {len(heads)}")
        self.members = nn.ModuleList(heads)

    @property
    def output(self) -> str:
        return str(self.members[0].output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.members[0](x)
        for head in list(self.members)[1:]:
            total = total + head(x)
        mean: torch.Tensor = total / len(self.members)
        return mean

    def with_output(self, output: str) -> "HeadEnsemble":
        """A copy (same weights) whose heads' last step is ``output``, in eval mode."""
        return HeadEnsemble([head.with_output(output) for head in self.members]).eval()


def build_head(config: HeadConfig) -> DefectHead | HeadEnsemble:
    """An untrained head of ``config``'s layout: one :class:`DefectHead`, or ``config.members`` of them."""
    heads = [_one_head(config) for _ in range(config.members)]
    return heads[0] if len(heads) == 1 else HeadEnsemble(heads)


def _one_head(config: HeadConfig) -> DefectHead:
    return DefectHead(config.channels, config.widths, config.upsampling, resolution=config.resolution)


def defect_loss(logits: torch.Tensor, target: torch.Tensor, hard_negatives: int = 0) -> torch.Tensor:
    """Focal loss (gamma ``FOCAL_GAMMA``, mean over pixels) plus soft Dice over the batch's positive pixels.

    With ``hard_negatives`` = k > 0, plus ``HARD_WEIGHT`` times the mean softplus of every image's k largest
    logits off its target (a binary cross-entropy towards 0 on the would-be false peaks) and the mean softplus of
    minus the ``HARD_POSITIVES`` largest on it, for images with a defect (towards 1: the peak a defect must
    keep). Both are image-level terms of the ``defect`` score's own maximum.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * target + (1 - p) * (1 - target)
    focal = ((1 - p_true) ** FOCAL_GAMMA * bce).mean()
    inter = (p * target).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)
    if hard_negatives <= 0:
        return focal + dice
    z, t = logits.flatten(1), target.flatten(1)
    k = min(hard_negatives, z.shape[1])
    negatives, at = z.masked_fill(t > 0, -1e4).topk(k, dim=1)
    off_defect = t.gather(1, at) <= 0  # an image nearly all defect has fewer than k
    hard = F.softplus(negatives[off_defect]).mean() if bool(off_defect.any()) else z.sum() * 0.0
    positives, at = z.masked_fill(t <= 0, -1e4).topk(min(HARD_POSITIVES, k), dim=1)
    on_defect = t.gather(1, at) > 0  # images without a defect, and defects of fewer pixels, add nothing here
    if bool(on_defect.any()):
        hard = hard + F.softplus(-positives[on_defect]).mean()
    return focal + dice + HARD_WEIGHT * hard


@dataclass
class HeadResult:
    """A trained head and how its training went."""

    head: DefectHead | HeadEnsemble
    config: HeadConfig
    steps: int  # each member's (the fewest, when a time budget stopped them at different steps)
    seconds: float
    final_loss: float
    stopped_early: bool
    images: int = 0  # how many normal images (or tiles) the synthetic defects were made from


def train_head(images: torch.Tensor, config: HeadConfig, progress: Progress | None = None,
               labelled: LabelledDefects | None = None) -> HeadResult:
    """Train a defect head on synthetic defects made from ``images`` (N, C, H, W): float in [0, 1], or uint8
    (0..255, converted a batch at a time: a large pool of tiles stays a quarter of the size).

    Every step draws a batch of normal images (with random flips), puts defects into about half of them and
    takes one Adam step on :func:`defect_loss`. With ``labelled`` (a user's own defects and masks), about
    ``config.labelled_share`` of every batch carries one of them instead (:func:`insert_labelled`). Stops after
    ``config.steps`` or ``config.time_budget`` seconds.
    """
    if labelled is not None:
        config = replace(config, labelled=len(labelled.images))
    emit = progress or (lambda event, info: None)
    started = time.perf_counter()
    n = images.shape[0]
    total = config.steps * config.members
    emit("defect_start", {"steps": total, "images": n, "budget": config.time_budget,
                          "resolution": config.resolution, "members": config.members})
    heads, losses, steps = [], [], []
    for k in range(config.members):
        head, loss_value, step = _train_member(images, config, config.seed + k, labelled, emit, k * config.steps,
                                               total, started)
        heads.append(head)
        losses.append(loss_value)
        steps.append(step)
    seconds = time.perf_counter() - started
    trained = heads[0] if len(heads) == 1 else HeadEnsemble(heads).eval()
    step, loss_value = min(steps), float(sum(losses) / len(losses))
    result = HeadResult(trained, config, step, seconds, loss_value, stopped_early=step < config.steps, images=n)
    emit("defect_done", {"steps": sum(steps), "seconds": seconds, "loss": loss_value,
                         "stopped_early": result.stopped_early})
    return result


def _train_member(images: torch.Tensor, config: HeadConfig, seed: int, labelled: LabelledDefects | None,
                  emit: Progress, offset: int, total: int, since: float) -> tuple[DefectHead, float, int]:
    """One head trained from ``seed`` (the weights and every synthetic defect): (head, last loss, steps taken).
    Its ``defect_step`` events count from ``offset`` out of ``total``, the ensemble's steps, and their seconds
    from ``since``, the ensemble's start; its time budget counts from its own start."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    head = _one_head(config)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    head.train()
    n = images.shape[0]
    loss_value, step, every = math.nan, 0, max(1, config.steps // 20)
    for step in range(1, config.steps + 1):
        idx = torch.randint(n, (min(config.batch_size, max(n, 1)),), generator=gen)
        xb = images[idx]
        if xb.dtype == torch.uint8:
            xb = torch.from_numpy(uint8_to_unit(xb.numpy()))
        if float(torch.rand((), generator=gen)) < 0.5:
            xb = xb.flip(-1)
        if float(torch.rand((), generator=gen)) < 0.5:
            xb = xb.flip(-2)
        xd, target = synthesize(xb, gen, config.defects)
        if labelled is not None:
            insert_labelled(xd, target, labelled, gen, config.labelled_share)
        loss = defect_loss(head(xd), target, config.hard_negatives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise ValueError(f"defect head training diverged at step {step}; lower its learning rate")
        elapsed = time.perf_counter() - started
        if step % every == 0 or step == config.steps:
            emit("defect_step", {"step": offset + step, "steps": total, "loss": loss_value,
                                 "seconds": time.perf_counter() - since})
        if config.time_budget is not None and elapsed > config.time_budget and step < config.steps:
            break
    head.eval()
    return head, loss_value, step


def save_head(result: HeadResult, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``defect.pt`` (weights + JSON config, ``weights_only`` loadable) atomically into the run folder."""
    path = Path(run_dir) / HEAD_FILE
    state = {"format": HEAD_FORMAT, "version": HEAD_VERSION, "config": json.dumps(result.config.to_dict()),
             "state_dict": result.head.state_dict(), "steps": result.steps, "seconds": result.seconds,
             "final_loss": result.final_loss, "stopped_early": result.stopped_early, "images": result.images}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


@dataclass
class LoadedHead:
    head: DefectHead | HeadEnsemble
    config: HeadConfig
    summary: dict[str, Any]


def load_head(run_dir: str | os.PathLike[str]) -> LoadedHead | None:
    """The run's defect head (``defect.pt`` beside its checkpoints), or None when the run has none.

    Raises:
        CheckpointError: the file exists but is not a readable defect head.
    """
    path = Path(run_dir)
    path = path / HEAD_FILE if path.is_dir() else path.parent / HEAD_FILE
    if not path.exists():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or raw.get("format") != HEAD_FORMAT or raw.get("version") != HEAD_VERSION:
            raise ValueError("not an edgevae defect head of a supported version")
        config = HeadConfig.from_dict(json.loads(raw["config"]))
        head = build_head(config)
        head.load_state_dict(raw["state_dict"])
    except (RuntimeError, ValueError, KeyError, TypeError, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable defect head ({exc}); train again, or delete it to export "
                              "without a defect head") from exc
    head.eval()
    summary = {k: raw.get(k) for k in ("steps", "seconds", "final_loss", "stopped_early", "images") if k in raw}
    return LoadedHead(head, config, summary)


__all__ = ("DefectHead", "FILL_FAMILIES", "OUTPUTS", "HEAD_FILE", "HeadConfig", "HeadEnsemble", "build_head", "HeadResult", "LoadedHead", "MASK_FAMILIES",
           "SURFACE_HARD_NEGATIVES", "defect_loss", "load_head", "save_head", "train_head")
