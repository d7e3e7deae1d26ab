"""Synthetic defects made from the normal images alone: the training signal of the defect head.

Each defect is a *mask* (where) and a *fill* (what), blended in at a random opacity:

- masks (``MASK_FAMILIES``): ``blob`` (a smooth-noise field thresholded inside a local window: ragged,
  irregular stains), ``ellipse`` and ``rectangle`` (rotated, any aspect), ``line`` (a curved stroke 1 to 3 px
  wide, a quadratic Bezier curve);
- fills (``FILL_FAMILIES``): ``brightness`` (a shift up or down), ``contrast`` (flattened or stretched around the
  region's mean), ``colour`` (a shift per channel), ``other_image`` (the same region of another normal image of
  the batch, moved), ``same_image`` (another part of the same image), ``flat`` (one colour), ``blur`` (a box blur
  of the image), ``noise`` (Gaussian noise).

No external data: every fill is made from the batch itself or from random numbers. Sizes are drawn on a log
scale from ``MIN_SIZE`` pixels to a third of the image's shorter side, so that most defects are small. The
target of a pixel is 1 where the mask is on *and* the blend changed the pixel by more than ``VISIBLE`` (a fill
that changes nothing, such as a blur of a flat region, is not labelled a defect). Half of the images (by
default) are left as they are, with an empty target, so that the head learns what normal looks like.

On a textured surface an absolute threshold labels changes no one could see against the texture, and a fill
moved from elsewhere (``other_image``, ``same_image``) *is* normal texture, yet both would be labelled defects.
``DefectConfig.relative_visibility`` keeps a defect only when its mean change over its mask exceeds that many
times the image's local standard deviation (7x7) over the same pixels (up to ``VISIBILITY_ATTEMPTS`` draws, then
none); ``SURFACE_DEFECTS`` is the config tiled (position-free) runs train with: that rule at 1.0 and no moved
fills. Measured on photographs of brick kept apart from the benchmark's (docs/scoring.md).

Everything is drawn from one ``torch.Generator``: the same seed gives the same defects. docs/scoring.md
describes the generator; benchmarks/real_images.py measures how it generalises by leaving a family out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

MASK_FAMILIES = ("blob", "ellipse", "rectangle", "line")
FILL_FAMILIES = ("brightness", "contrast", "colour", "other_image", "same_image", "flat", "blur", "noise")
# Smallest defect side (pixels) and the largest as a share of the image's shorter side.
MIN_SIZE = 2.0
MAX_SIZE_SHARE = 1.0 / 3.0
# A pixel counts as changed (a target pixel) when some channel moved by more than this.
VISIBLE = 0.02
# Draws of a defect that must pass ``relative_visibility`` before the generator gives it up.
VISIBILITY_ATTEMPTS = 4
# The side of the square the local standard deviation of ``relative_visibility`` is measured over.
VISIBILITY_WINDOW = 7
# The square around a labelled defect whose unmasked pixels estimate the surface under it (LabelledDefects.changes).
TRANSFER_WINDOW = 15


@dataclass(frozen=True)
class DefectConfig:
    """What the generator may draw.

    Args:
        probability: share of images that get a defect (the rest are left normal).
        masks: mask families to draw from (``MASK_FAMILIES``).
        fills: fill families to draw from (``FILL_FAMILIES``).
        min_opacity: the smallest opacity of a blend (the largest is 1).
        max_defects: up to this many defects in one image (drawn uniformly from 1).
        relative_visibility: keep a defect only when its mean change over its mask exceeds this many times the
            image's local standard deviation over the same pixels (0: every defect is kept, as before).
        relative_strength: 0 (the default) blends every defect at an opacity drawn from ``min_opacity`` to 1, so
            its strength is absolute; above 0, each defect's mean change over its mask is drawn instead, log-uniform
            from ``relative_visibility`` to this many times the local standard deviation under it (the opacity set
            to match, at most 1), so that defects are as faint or as strong *relative to the texture* on a smooth
            surface as on a rough one. Needs ``relative_visibility`` > 0 and below it.
    """

    probability: float = 0.5
    masks: tuple[str, ...] = MASK_FAMILIES
    fills: tuple[str, ...] = FILL_FAMILIES
    min_opacity: float = 0.3
    max_defects: int = 2
    relative_visibility: float = 0.0
    relative_strength: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "masks", tuple(self.masks))
        object.__setattr__(self, "fills", tuple(self.fills))
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"defect probability must be in (0, 1], got {self.probability}")
        for kind, given, known in (("mask", self.masks, MASK_FAMILIES), ("fill", self.fills, FILL_FAMILIES)):
            unknown = [g for g in given if g not in known]
            if not given or unknown:
                raise ValueError(f"{kind} families must be a non-empty subset of {', '.join(known)}; got {list(given)}")
        if not 0.0 < self.min_opacity <= 1.0:
            raise ValueError(f"min_opacity must be in (0, 1], got {self.min_opacity}")
        if self.max_defects < 1:
            raise ValueError(f"max_defects must be >= 1, got {self.max_defects}")
        if not (0.0 <= self.relative_visibility < 100.0):
            raise ValueError(f"relative_visibility must be in [0, 100), got {self.relative_visibility}")
        if self.relative_strength and not (0.0 < self.relative_visibility < self.relative_strength < 100.0):
            raise ValueError("relative_strength must be 0 (off) or above relative_visibility (which must be above 0) "
                             f"and below 100; got {self.relative_strength} with relative_visibility "
                             f"{self.relative_visibility}")

    def without(self, family: str) -> "DefectConfig":
        """This config with one mask or fill family left out (the leave-one-family-out measurement)."""
        if family in self.masks:
            return replace(self, masks=tuple(m for m in self.masks if m != family))
        if family in self.fills:
            return replace(self, fills=tuple(f for f in self.fills if f != family))
        raise ValueError(f"{family!r} is not among this config's families")


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _choice(gen: torch.Generator, options: tuple[str, ...]) -> str:
    return options[int(torch.randint(len(options), (), generator=gen))]


class _Grid:
    """Pixel-centre coordinates of an (H, W) image."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        self.x = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)

    def rotated(self, cy: float, cx: float, angle: float) -> tuple[torch.Tensor, torch.Tensor]:
        dy, dx = self.y - cy, self.x - cx
        c, s = math.cos(angle), math.sin(angle)
        return dx * c + dy * s, -dx * s + dy * c


def _size(gen: torch.Generator, grid: _Grid) -> float:
    """A defect's characteristic size in pixels, log-uniform in [MIN_SIZE, MAX_SIZE_SHARE * shorter side]."""
    top = max(MIN_SIZE * 1.5, MAX_SIZE_SHARE * min(grid.h, grid.w))
    return math.exp(_uniform(gen, math.log(MIN_SIZE), math.log(top)))


def _ellipse(gen: torch.Generator, grid: _Grid) -> torch.Tensor:
    s = _size(gen, grid)
    a, b = max(0.8, s * _uniform(gen, 0.3, 1.0)), max(0.8, s * _uniform(gen, 0.3, 1.0))
    u, v = grid.rotated(_uniform(gen, 0, grid.h - 1), _uniform(gen, 0, grid.w - 1), _uniform(gen, 0, math.pi))
    return ((u / a) ** 2 + (v / b) ** 2 <= 1.0).float()


def _rectangle(gen: torch.Generator, grid: _Grid) -> torch.Tensor:
    s = _size(gen, grid)
    a, b = max(0.6, s * _uniform(gen, 0.2, 1.0)), max(0.6, s * _uniform(gen, 0.2, 1.0))
    u, v = grid.rotated(_uniform(gen, 0, grid.h - 1), _uniform(gen, 0, grid.w - 1), _uniform(gen, 0, math.pi))
    return ((u.abs() <= a) & (v.abs() <= b)).float()


def _blob(gen: torch.Generator, grid: _Grid) -> torch.Tensor:
    """A smooth-noise field (coarse noise upsampled bicubically), thresholded inside an elliptic window."""
    s = _size(gen, grid) * 1.5
    cells = max(2, int(round(min(grid.h, grid.w) / max(s / 2, 1.0))))
    coarse = torch.randn((1, 1, cells, cells), generator=gen)
    field = F.interpolate(coarse, size=(grid.h, grid.w), mode="bicubic", align_corners=False)[0, 0]
    cy, cx = _uniform(gen, 0, grid.h - 1), _uniform(gen, 0, grid.w - 1)
    window = ((grid.y - cy) ** 2 + (grid.x - cx) ** 2) <= s * s
    mask = (field > _uniform(gen, -0.2, 0.6)) & window
    if not bool(mask.any()):  # a threshold above the whole window: a small disc instead
        mask = ((grid.y - cy) ** 2 + (grid.x - cx) ** 2) <= max(1.0, s / 3) ** 2
    return mask.float()


def _stroke(gen: torch.Generator, grid: _Grid) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A quadratic Bezier curve's points (py, px), each (P, 1, 1), and the stroke's reach from them (its width of
    1 to 3 px halved, plus 0.2)."""
    length = _size(gen, grid) * _uniform(gen, 1.5, 4.0)
    y0, x0 = _uniform(gen, 0, grid.h - 1), _uniform(gen, 0, grid.w - 1)
    angle = _uniform(gen, 0, 2 * math.pi)
    y2, x2 = y0 + length * math.sin(angle), x0 + length * math.cos(angle)
    bend = _uniform(gen, -0.4, 0.4) * length
    y1, x1 = (y0 + y2) / 2 + bend * math.cos(angle), (x0 + x2) / 2 - bend * math.sin(angle)
    t = torch.linspace(0, 1, max(8, int(length * 2)))[:, None, None]
    py = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * y1 + t ** 2 * y2
    px = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * x1 + t ** 2 * x2
    width = float(torch.randint(1, 4, (), generator=gen))
    return py, px, width / 2 + 0.2


def _line(gen: torch.Generator, grid: _Grid) -> torch.Tensor:
    """A quadratic Bezier stroke 1 to 3 px wide (:func:`_stroke`): every pixel within its reach of the curve.
    Distances are measured inside the stroke's bounding box only (a pixel farther than the reach from every point
    is off)."""
    py, px, reach = _stroke(gen, grid)
    mask = torch.zeros((grid.h, grid.w))
    top, bottom = max(0, math.floor(float(py.min()) - reach)), min(grid.h, math.ceil(float(py.max()) + reach) + 1)
    left, right = max(0, math.floor(float(px.min()) - reach)), min(grid.w, math.ceil(float(px.max()) + reach) + 1)
    if top < bottom and left < right:
        ys, xs = grid.y[None, top:bottom, left:right], grid.x[None, top:bottom, left:right]
        dist = ((ys - py) ** 2 + (xs - px) ** 2).min(dim=0).values.sqrt()
        mask[top:bottom, left:right] = (dist <= reach).float()
    return mask


MASKS: dict[str, Callable[[torch.Generator, _Grid], torch.Tensor]] = {
    "blob": _blob, "ellipse": _ellipse, "rectangle": _rectangle, "line": _line}


def _shifted(img: torch.Tensor, gen: torch.Generator, least: int) -> torch.Tensor:
    """``img`` (C, H, W) rolled by a random offset of at least ``least`` pixels on one axis at least."""
    h, w = img.shape[-2:]
    dy = int(torch.randint(least, max(least + 1, h - least), (), generator=gen))
    dx = int(torch.randint(0, w, (), generator=gen))
    return torch.roll(img, shifts=(dy, dx), dims=(-2, -1))


def _fill(kind: str, x: torch.Tensor, batch: torch.Tensor, index: int, mask: torch.Tensor,
          gen: torch.Generator) -> torch.Tensor:
    """The image the defect region takes its pixels from: (C, H, W)."""
    c = x.shape[0]
    sign = 1.0 if float(torch.rand((), generator=gen)) < 0.5 else -1.0
    if kind == "brightness":
        return x + sign * _uniform(gen, 0.1, 0.5)
    if kind == "contrast":
        area = mask.sum().clamp_min(1.0)
        mean = (x * mask).sum(dim=(-2, -1), keepdim=True) / area
        k = _uniform(gen, 0.0, 0.5) if sign > 0 else _uniform(gen, 1.5, 3.0)
        return mean + (x - mean) * k
    if kind == "colour":
        return x + (torch.rand((c, 1, 1), generator=gen) * 2 - 1) * 0.4
    if kind == "other_image":
        others = batch.shape[0]
        j = int(torch.randint(others, (), generator=gen)) if others > 1 else index
        j = (j + 1) % others if j == index and others > 1 else j
        return _shifted(batch[j], gen, 0)
    if kind == "same_image":
        return _shifted(x, gen, max(2, x.shape[-2] // 8))
    if kind == "flat":
        return torch.rand((c, 1, 1), generator=gen).expand_as(x)
    if kind == "blur":
        k = 2 * int(torch.randint(1, 5, (), generator=gen)) + 1  # 3..9
        padded = F.pad(x[None], (k // 2,) * 4, mode="replicate")
        return F.avg_pool2d(padded, k, stride=1)[0]
    if kind == "noise":
        return x + torch.randn(x.shape, generator=gen) * _uniform(gen, 0.05, 0.3)
    raise ValueError(f"unknown fill {kind!r}")


# What tiled (position-free) runs train their defect head with: no moved fills, visibility relative to the texture.
SURFACE_DEFECTS = DefectConfig(fills=tuple(f for f in FILL_FAMILIES if f not in ("other_image", "same_image")),
                               relative_visibility=1.0)


def _local_std(batch: torch.Tensor) -> torch.Tensor:
    """The standard deviation of each image's channel mean over a ``VISIBILITY_WINDOW`` square: (N, H, W)."""
    pad = VISIBILITY_WINDOW // 2
    g = F.pad(batch.mean(dim=1, keepdim=True), (pad,) * 4, mode="replicate")
    mean = F.avg_pool2d(g, VISIBILITY_WINDOW, stride=1)
    return (F.avg_pool2d(g * g, VISIBILITY_WINDOW, stride=1) - mean * mean).clamp_min(0.0).sqrt()[:, 0]


def synthesize(batch: torch.Tensor, gen: torch.Generator,
               config: DefectConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Put synthetic defects into a batch of normal images.

    Args:
        batch: normal images (N, C, H, W) in [0, 1].
        gen: the generator every draw comes from.
        config: what may be drawn.

    Returns:
        (images with defects (N, C, H, W) in [0, 1], targets (N, 1, H, W) in {0, 1}).
    """
    cfg = config or DefectConfig()
    n, _, h, w = batch.shape
    grid = _Grid(h, w)
    out = batch.clone()
    target = torch.zeros((n, 1, h, w))
    local_std = _local_std(batch) if cfg.relative_visibility > 0 else None
    for i in range(n):
        if float(torch.rand((), generator=gen)) >= cfg.probability:
            continue
        for _ in range(int(torch.randint(1, cfg.max_defects + 1, (), generator=gen))):
            for _attempt in range(VISIBILITY_ATTEMPTS if local_std is not None else 1):
                mask = MASKS[_choice(gen, cfg.masks)](gen, grid)
                fill = _fill(_choice(gen, cfg.fills), out[i], batch, i, mask, gen)
                if cfg.relative_strength > 0 and local_std is not None:
                    fill = fill.clamp(0.0, 1.0)
                    alpha = _relative_opacity(cfg, gen, (fill - out[i]).abs().amax(dim=0), local_std[i], mask) * mask
                else:
                    alpha = _uniform(gen, cfg.min_opacity, 1.0) * mask
                blended = (out[i] * (1 - alpha) + fill * alpha).clamp(0.0, 1.0)
                delta = (blended - out[i]).abs().amax(dim=0)
                inside = mask > 0
                if local_std is None or _visible(delta, local_std[i], inside, cfg.relative_visibility):
                    out[i] = blended
                    target[i, 0] = torch.maximum(target[i, 0], ((delta > VISIBLE) & inside).float())
                    break
    return out, target


def _relative_opacity(cfg: DefectConfig, gen: torch.Generator, full: torch.Tensor, local_std: torch.Tensor,
                      mask: torch.Tensor) -> float:
    """The opacity that gives a defect a mean change over its mask of r times the local standard deviation
    under it, r log-uniform in [``relative_visibility``, ``relative_strength``] (at most 1: a fill too weak for
    that strength goes in fully opaque, and ``_visible`` then decides)."""
    inside = mask > 0
    ratio = math.exp(_uniform(gen, math.log(cfg.relative_visibility), math.log(cfg.relative_strength)))
    if not bool(inside.any()):
        return 1.0
    change, spread = float(full[inside].mean()), float(local_std[inside].mean())
    return 1.0 if change <= 0 else min(1.0, ratio * max(spread, VISIBLE) / change)


def _visible(delta: torch.Tensor, local_std: torch.Tensor, inside: torch.Tensor, ratio: float) -> bool:
    """Whether a defect's mean change over its mask exceeds ``VISIBLE`` and ``ratio`` times the local variation."""
    if not bool(inside.any()):
        return False
    change = float(delta[inside].mean())
    return change > VISIBLE and change > ratio * float(local_std[inside].mean())





@dataclass(frozen=True)
class LabelledDefects:
    """A user's own defective images with their masks: real defects the head trains on beside the synthetic ones.

    ``images`` are float (C, H, W) in [0, 1] and ``masks`` bool (H, W) of the same size, at the resolution the head
    trains at (a tiled run's native pixels, or the input contract's size); each mask marks at least one pixel.
    ``changes`` (computed) is what each defect changed: the image minus an estimate of the surface under the mask
    (the mean of the unmasked pixels around it, ``TRANSFER_WINDOW`` square), zero off the mask.
    """

    images: tuple[torch.Tensor, ...]
    masks: tuple[torch.Tensor, ...]
    changes: tuple[torch.Tensor, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.images or len(self.images) != len(self.masks):
            raise ValueError("labelled defects need at least one image and exactly one mask per image")
        for i, (img, mask) in enumerate(zip(self.images, self.masks)):
            if img.ndim != 3 or mask.shape != img.shape[-2:]:
                raise ValueError(f"labelled defect {i}: mask of shape {tuple(mask.shape)} for an image of shape "
                                 f"{tuple(img.shape)}; each mask must have its image's height and width")
            if not bool(mask.any()):
                raise ValueError(f"labelled defect {i}: its mask marks no pixel; mark the defect, or leave it out")
        object.__setattr__(self, "changes", tuple(_change(img, mask) for img, mask in zip(self.images, self.masks)))


def _change(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image`` minus the mean of the unmasked pixels in a ``TRANSFER_WINDOW`` square around each pixel (wider
    where the window holds none), on the mask; zero elsewhere."""
    off = (~mask).float()[None, None]
    x = image[None]
    window = TRANSFER_WINDOW
    while True:
        pad = window // 2
        total = F.avg_pool2d(F.pad(x * off, (pad,) * 4), window, stride=1)
        count = F.avg_pool2d(F.pad(off, (pad,) * 4), window, stride=1)
        if bool((count[0, 0][mask] > 0).all()) or window > 4 * max(image.shape[-2:]):
            break
        window = 2 * window + 1
    under = total / count.clamp_min(1e-6)
    return ((x - under)[0] * mask[None].float())


def insert_labelled(batch: torch.Tensor, target: torch.Tensor, examples: LabelledDefects, gen: torch.Generator,
                    share: float) -> None:
    """Put real labelled defects into about ``share`` of a batch (in place), as windows of the batch's size cut
    around a random pixel of a defect (flipped at random): half of them whole (the defect in its own
    surroundings), half added onto the batch's image through their mask (the defect on another normal patch).
    The target is the mask's window; a pasted defect keeps the target already there.

    A pasted defect adds what it changed (``LabelledDefects.changes``) to the new surface, not its own pixels: the
    surface it was found on stays behind, so a few examples do not teach the head their own backgrounds."""
    _, c, h, w = batch.shape
    for i in range(batch.shape[0]):
        if float(torch.rand((), generator=gen)) >= share:
            continue
        j = int(torch.randint(len(examples.images), (), generator=gen))
        img, mask = examples.images[j], examples.masks[j]
        if img.shape[0] != c or img.shape[-2] < h or img.shape[-1] < w:
            raise ValueError(f"labelled defect {j} is {tuple(img.shape)}; the head trains on ({c}, {h}, {w}) windows")
        ys, xs = torch.nonzero(mask, as_tuple=True)
        k = int(torch.randint(len(ys), (), generator=gen))
        y0 = int(ys[k]) - int(torch.randint(h, (), generator=gen))
        x0 = int(xs[k]) - int(torch.randint(w, (), generator=gen))
        y0, x0 = min(max(y0, 0), img.shape[-2] - h), min(max(x0, 0), img.shape[-1] - w)
        window, m = img[:, y0:y0 + h, x0:x0 + w], mask[y0:y0 + h, x0:x0 + w].float()
        change = examples.changes[j][:, y0:y0 + h, x0:x0 + w]
        for dim in (-1, -2):
            if float(torch.rand((), generator=gen)) < 0.5:
                window, m, change = window.flip(dim), m.flip(dim), change.flip(dim)
        if h == w and float(torch.rand((), generator=gen)) < 0.5:
            window, m, change = window.transpose(-1, -2), m.transpose(-1, -2), change.transpose(-1, -2)
        if float(torch.rand((), generator=gen)) < 0.5:
            batch[i], target[i, 0] = window, m
        else:
            batch[i] = (batch[i] + change).clamp(0.0, 1.0)
            target[i, 0] = torch.maximum(target[i, 0], m)
__all__ = ("DefectConfig", "FILL_FAMILIES", "LabelledDefects", "MASK_FAMILIES", "SURFACE_DEFECTS", "insert_labelled",
           "synthesize")
