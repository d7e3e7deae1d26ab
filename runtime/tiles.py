"""Scoring images larger than the bundle by tiles (numpy only): the tile grid, per-tile scores, their image-level
aggregate and maps stitched back to full resolution.

A tiled bundle (trained with ``--tile``) takes tiles of its input contract's size. An image of any size at least
one tile large is covered by a grid of overlapping tiles (``stride`` apart, the last row and column flush with
the far edges), the tiles are scored in batches of ``TILE_BATCH`` (never an array of all tiles), and:

- the image's score for a method is the largest of its tiles' scores (``aggregate: max``);
- its p-value and flag come from the same aggregate measured on **whole held-out images** at export (the
  manifest's ``tiling.calibration``), so the stored threshold keeps its false-positive rate for whole images of
  the held-out images' size. An image of n tiles, where the held-out images had n0 (their median), is treated
  as n / n0 independent images of that size: its p-value is 1 - (1 - p0)^(n / n0) and its threshold is the
  calibrated one at the rate 1 - (1 - fpr)^(n0 / n) (``size_adjusted_p``, ``size_adjusted_fpr``). Neighbouring
  regions of one image are positively correlated, so this errs on the side of fewer flags;
- its maps are the tiles' maps averaged where tiles overlap.

The graphs do not change: a tile is an ordinary input of the bundle, scored exactly as an image of that size.

Two kinds of camera. On a **stationary surface** (textures, tissue, webs; ``positional: false``) every tile is
judged alike: the anomaly map's per-pixel statistics are those of a tile, pooled over positions. A **fixed camera**
(``positional: true``) sees the same scene in every frame of one size, so what is normal depends on where in the
frame a pixel is: the bundle then stores the statistics of the stitched residual map per pixel of the whole
frame (``tiling.map``, measured on training frames), the anomaly map of a frame is its stitched residual
standardised by them, and a tile's ``local`` score is the mean of the top of that map over the tile. With a defect
head, the head's logits are stitched the same way and standardised by their own per-pixel statistics
(``tiling.defect_map``): a tile's ``defect`` is the largest window mean of that map under it, so a spot the head
always sees at one place of the scene (a bright edge, a shadow) does not count as a defect there. ``combined``
reads its ``local`` and ``defect`` parts against references measured the same way (``tiling.references``). Such a
bundle scores frames of its frame size only. A fixed camera that vibrates shows the scene a pixel or two off: with
``tiling.alignment`` each frame's shift against a reference frame is found first and its maps are read against
statistics measured on aligned training frames, moved by that shift (:class:`FrameAlignment`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
from numpy.typing import NDArray

from .contract import uint8_to_unit
from .errors import ArrayInputError
from .manifest import Calibration, MapEntry
from .maps import MAGNITUDES, Combination, MapStats, Reference, defect_score, residual_magnitude

if TYPE_CHECKING:
    from .model import Scorer

F32 = NDArray[np.float32]
# Tiles per call to the graphs: bounds memory (a 4096 x 4096 image has 16,129 tiles of 64 at stride 32).
TILE_BATCH = 256
AGGREGATES = ("max",)
# Methods a tiled bundle does not calibrate for whole images: ``iwae`` runs 256 decoder passes per tile, which
# for every tile of every held-out image would take export many minutes; it stays calibrated for single tiles.
NOT_FOR_WHOLE_IMAGES = ("iwae",)
# Largest number of grid tiles cut from held-out images for validation and the tiles' own calibration.
VALIDATION_TILES = 1000
# A fixed camera's per-position map statistics (float32 little-endian, row-major (2, H, W) of the frame).
FRAME_MAP_FILE = "frame_map_stats.f32"
# A fixed camera's per-position statistics of the defect head's stitched logits (same layout as FRAME_MAP_FILE).
FRAME_DEFECT_FILE = "frame_defect_stats.f32"
# A fixed camera's reference frame, which each frame is aligned to (float32 little-endian, row-major (C, H, W)
# of the frame, pixels in [0, 1]).
FRAME_REFERENCE_FILE = "frame_reference.f32"
# The per-position statistics of aligned training frames (same layout as FRAME_MAP_FILE and FRAME_DEFECT_FILE).
ALIGNED_MAP_FILE = "frame_map_aligned.f32"
ALIGNED_DEFECT_FILE = "frame_defect_aligned.f32"
# Export's default alignment radius: a frame may sit up to this many pixels off the scene in each direction.
ALIGN_RADIUS = 2
ALIGN_RADIUS_MAX = 8
# Rounds of re-estimating the reference from the training frames moved onto it.
ALIGN_ROUNDS = 2
# Shifts whose mean squared difference is within this relative margin of the smallest count as tied (the zero
# shift wins a tie, then the first in scan order): sums in another order (C, JavaScript) choose alike.
ALIGN_TIE = 1e-6
# Rows of a frame compared at once when estimating its shift (bounds memory for large frames).
ALIGN_ROWS = 256
# The spread of the defect logits at a pixel is floored at this many logits, so that places where the head's
# output hardly varies over normal frames do not turn small changes into large values.
DEFECT_SPREAD_FLOOR = 0.25
# Methods whose tile scores read the map statistics: per position on a fixed camera (``defect`` too when the
# bundle has the defect head's per-position statistics, :attr:`Positional.methods`).
POSITIONAL_METHODS = ("local", "combined")
CAMERAS = ("auto", "fixed", "surface")
# ``auto`` chooses a fixed camera when the training frames share one size and the variance of a pixel across
# frames is below this share of the pixels' total variance (the same scene in every frame), with enough frames.
FIXED_CAMERA_SHARE = 0.5
MIN_FRAMES = 10


def _names_file(entry: Mapping[str, Any]) -> bool:
    """Whether a manifest entry's ``file`` is a plain file name in the bundle's folder."""
    name = entry.get("file")
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def tile_starts(length: int, tile: int, stride: int) -> NDArray[np.int64]:
    """Start offsets of tiles of size ``tile`` covering ``length`` pixels every ``stride``, the last one flush
    with the far edge (so every pixel is covered and no tile reaches past the image).

    Raises:
        ArrayInputError: the image is shorter than one tile.
    """
    if length < tile:
        raise ArrayInputError(f"an image side of {length} px is shorter than one tile ({tile} px); tiled bundles "
                              "score images at least one tile large")
    starts = np.arange(0, length - tile + 1, stride, dtype=np.int64)
    if starts[-1] != length - tile:
        starts = np.append(starts, length - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering a ``height`` x ``width`` image: tiles of ``tile`` (H, W) every ``stride`` pixels."""

    height: int
    width: int
    tile: tuple[int, int]
    stride: int

    @property
    def positions(self) -> NDArray[np.int64]:
        """Top-left corners (n, 2) as (y, x), row by row."""
        ys = tile_starts(self.height, self.tile[0], self.stride)
        xs = tile_starts(self.width, self.tile[1], self.stride)
        return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def batches(self, image: NDArray[Any], size: int = TILE_BATCH) -> Iterator[tuple[NDArray[np.int64], NDArray[Any]]]:
        """(positions, tiles (n, C, th, tw)) of ``image`` (C, H, W) in batches of at most ``size`` tiles; each
        batch is a copy, the image itself is never copied whole."""
        th, tw = self.tile
        pos = self.positions
        for i in range(0, pos.shape[0], size):
            chunk = pos[i:i + size]
            yield chunk, np.stack([image[:, y:y + th, x:x + tw] for y, x in chunk])


@dataclass(frozen=True)
class Tiling:
    """The manifest's ``tiling`` section: how a tiled bundle scores images larger than its input.

    Args:
        tile: (H, W) of a tile: the input contract's size.
        stride: pixels between neighbouring tiles when scoring.
        aggregate: how tile scores become the image's score (``max``).
        downscale: images are shrunk by this whole factor before tiling (as they were for training).
        positional: whether the map statistics depend on the position in the image (False: a stationary
            surface, every tile judged alike; True: a fixed camera, frames of ``frame`` only).
        calibration: the aggregate's calibration on whole held-out images (thresholds, scores, tails).
        frame: a fixed camera's frame (H, W), after ``downscale``.
        map: a fixed camera's per-position map statistics file (``FRAME_MAP_FILE``, (2, H, W) of the frame).
        references: a fixed camera's references of ``combined``'s parts, its ``local`` (and ``defect``) read per
            position.
        defect_map: a fixed camera's per-position statistics of the defect head's logits (``FRAME_DEFECT_FILE``:
            ``file`` and ``shape`` [2, H, W] of the frame); None for a bundle without a defect head, or from
            before them (its ``defect`` is then read position-free).
    """

    tile: tuple[int, int]
    stride: int
    aggregate: str = "max"
    downscale: int = 1
    positional: bool = False
    calibration: Calibration | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    frame: tuple[int, int] | None = None
    map: MapEntry | None = None
    references: Mapping[str, Reference] | None = None
    defect_map: Mapping[str, Any] | None = None
    alignment: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not (1 <= self.stride <= min(self.tile)):
            raise ValueError(f"tiling.stride must be in 1..{min(self.tile)} (the tile's side), got {self.stride}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"tiling.aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if self.downscale < 1:
            raise ValueError(f"tiling.downscale must be >= 1, got {self.downscale}")
        if self.positional:
            if self.frame is None or self.map is None:
                raise ValueError("a positional tiling needs tiling.frame and tiling.map (its per-position statistics)")
            if self.frame[0] < self.tile[0] or self.frame[1] < self.tile[1]:
                raise ValueError(f"tiling.frame {list(self.frame)} is smaller than one tile {list(self.tile)}")
            if self.map.shape != (2, *self.frame):
                raise ValueError(f"tiling.map.shape must be [2, {self.frame[0]}, {self.frame[1]}] (the frame), got "
                                 f"{list(self.map.shape)}")
            dm = self.defect_map
            if dm is not None and (not isinstance(dm.get("file"), str) or not dm["file"]
                                   or [int(v) for v in dm.get("shape", ())] != [2, *self.frame]):
                raise ValueError(f"tiling.defect_map must name a file of shape [2, {self.frame[0]}, {self.frame[1]}] "
                                 f"(the frame), got {dict(dm)}")
            al = self.alignment
            if al is not None:
                shape, radius = al.get("shape"), al.get("radius")
                stats = [al.get("map"), *([al["defect_map"]] if al.get("defect_map") is not None else [])]
                if (not _names_file(al) or not isinstance(shape, list) or len(shape) != 3
                        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
                        or shape[0] < 1 or shape[1:] != list(self.frame)
                        or not isinstance(radius, int) or isinstance(radius, bool)
                        or not 1 <= radius <= min(ALIGN_RADIUS_MAX, min(self.frame) // 2 - 1)
                        or not (isinstance(al.get("tie", ALIGN_TIE), (int, float)) and 0 <= al.get("tie", ALIGN_TIE) < 1e-3)
                        or not all(isinstance(e, Mapping) and _names_file(e) and e.get("shape") == [2, *self.frame]
                                   for e in stats)):
                    raise ValueError(f"tiling.alignment must name a reference file of shape [C, {self.frame[0]}, "
                                     f"{self.frame[1]}] (the frame), a whole radius in 1..{min(ALIGN_RADIUS_MAX, min(self.frame) // 2 - 1)}, "
                                     "a tie in [0, 0.001) and "
                                     f"map (and defect_map) files of shape [2, {self.frame[0]}, {self.frame[1]}], got "
                                     f"{dict(al)}")
        elif self.alignment is not None:
            raise ValueError("tiling.alignment belongs to a fixed camera (tiling.positional: true)")

    def check_frame(self, height: int, width: int) -> None:
        """Refuse an image a fixed-camera tiling cannot score (another size than its frame).

        Raises:
            ArrayInputError: a positional tiling and an image of another size.
        """
        if self.positional and self.frame is not None and (height, width) != self.frame:
            shrink = f" after shrinking {self.downscale}x" if self.downscale > 1 else ""
            raise ArrayInputError(f"this bundle is for a fixed camera: it scores frames of {self.frame[0]}x{self.frame[1]} "
                                  f"px{shrink} (its statistics are per position), got {height}x{width}; crop or "
                                  "resize frames to the training size, or export the run with --camera surface")

    def grid(self, height: int, width: int) -> TileGrid:
        return TileGrid(height, width, self.tile, self.stride)

    @property
    def note(self) -> str:
        """One sentence on what the image-level calibration covers."""
        cal = self.calibration
        tiles = cal.raw.get("tiles_per_image") if cal is not None else None
        if cal is None or not tiles:
            return "image-level thresholds are not calibrated"
        if self.positional and self.frame is not None:  # frames of one size: no adjustment for other sizes
            return (f"image-level thresholds calibrated on {cal.n} whole held-out {self.frame[0]}x{self.frame[1]} frames "
                    f"of {tiles[0]} tiles")
        span = f"{tiles[0]}" if tiles[0] == tiles[1] else f"{tiles[0]}-{tiles[1]}"
        return (f"image-level thresholds calibrated on {cal.n} whole held-out images of {span} tiles (median "
                f"{calibrated_tiles(cal)}); an image of another number of tiles gets a threshold and p-value adjusted "
                "for it")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Tiling":
        cal = data.get("calibration")
        tile = [int(v) for v in data["tile"]]
        if len(tile) != 2:
            raise ValueError(f"tiling.tile must be [H, W], got {tile}")
        frame = data.get("frame")
        if frame is not None and len(frame) != 2:
            raise ValueError(f"tiling.frame must be [H, W], got {frame}")
        entry, refs = data.get("map"), data.get("references")
        return cls((tile[0], tile[1]), int(data["stride"]), str(data.get("aggregate", "max")),
                   int(data.get("downscale", 1)), bool(data.get("positional", False)),
                   Calibration.from_dict(cal) if cal is not None else None, dict(data),
                   (int(frame[0]), int(frame[1])) if frame is not None else None,
                   MapEntry.from_dict(entry) if entry is not None else None,
                   {p: Reference.from_dict(r) for p, r in refs.items()} if refs is not None else None,
                   dict(data["defect_map"]) if data.get("defect_map") is not None else None,
                   dict(data["alignment"]) if data.get("alignment") is not None else None)

    def to_dict(self) -> dict[str, Any]:
        out = {**self.raw, "tile": list(self.tile), "stride": self.stride, "aggregate": self.aggregate,
               "downscale": self.downscale, "positional": self.positional}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        if self.frame is not None:
            out["frame"] = list(self.frame)
        if self.map is not None:
            out["map"] = self.map.to_dict()
        if self.references is not None:
            out["references"] = {p: r.to_dict() for p, r in self.references.items()}
        if self.defect_map is not None:
            out["defect_map"] = dict(self.defect_map)
        if self.alignment is not None:
            out["alignment"] = dict(self.alignment)
        return out

    def combination(self, parts: Sequence[str], weights: tuple[float, ...] | None = None) -> Combination | None:
        """A fixed camera's ``combined`` parts with its per-position references (None without them)."""
        if self.references is None or any(p not in self.references for p in parts):
            return None
        return Combination(tuple(parts), {p: self.references[p] for p in parts}, weights)


@dataclass(frozen=True)
class DefectStats:
    """A fixed camera's per-pixel statistics of the defect head's stitched logits over normal training frames.

    Attributes:
        mean: (H, W) the mean logit at each pixel of the frame.
        spread: (H, W) its standard deviation, floored at ``DEFECT_SPREAD_FLOOR`` logits; always > 0.
    """

    mean: F32
    spread: F32

    def __post_init__(self) -> None:
        if self.mean.ndim != 2 or self.mean.shape != self.spread.shape:
            raise ValueError(f"defect statistics must be two (H, W) arrays of one shape, got {self.mean.shape} and "
                             f"{self.spread.shape}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.spread).all() and (self.spread > 0).all()):
            raise ValueError("defect statistics must be finite with a positive spread")

    @classmethod
    def fit(cls, maps: Sequence[F32]) -> "DefectStats":
        """Statistics of stitched logit maps ((H, W) each) of normal frames.

        Raises:
            ValueError: fewer than two maps.
        """
        if len(maps) < 2:
            raise ValueError(f"defect statistics need at least 2 frames, got {len(maps)}")
        stack = np.stack([np.asarray(m, np.float64) for m in maps])
        spread = np.maximum(stack.std(axis=0, ddof=1), DEFECT_SPREAD_FLOOR)
        return cls(stack.mean(axis=0).astype(np.float32), spread.astype(np.float32))

    def standardise(self, logits: F32) -> F32:
        """(logits - mean) / spread per pixel, in float32."""
        out: F32 = np.subtract(logits, self.mean, dtype=np.float32)
        out /= self.spread
        return out

    def to_bytes(self) -> bytes:
        """The bundle file: float32 little-endian (2, H, W), mean then spread."""
        return np.stack([self.mean, self.spread]).astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, frame: tuple[int, int]) -> "DefectStats":
        arr = np.frombuffer(data, dtype="<f4").reshape(2, *frame).astype(np.float32)
        return cls(arr[0].copy(), arr[1].copy())

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's ``tiling.defect_map``."""
        h, w = self.mean.shape
        return {"file": FRAME_DEFECT_FILE, "shape": [2, int(h), int(w)], "dtype": "float32", "byte_order": "little",
                "layout": "row-major (2, H, W) of the frame: per-pixel mean, then spread (floored at "
                          f"{DEFECT_SPREAD_FLOOR} logits)",
                "definition": "the defect head's logits of a frame's tiles stitched to the frame, averaged where tiles "
                              "overlap; defect map = (stitched - mean) / spread per pixel of the frame; a tile's defect "
                              "= the largest mean of that map over a scoring.defect_window square inside the tile"}


def move(a: NDArray[Any], dy: int, dx: int) -> NDArray[Any]:
    """``a`` (..., H, W) moved by (dy, dx) pixels, edges repeated: out[..., y, x] = a[..., clamp(y - dy),
    clamp(x - dx)] with clamp to 0..H-1 and 0..W-1."""
    h, w = a.shape[-2:]
    if dy == 0 and dx == 0:
        return a
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    out: NDArray[Any] = a[..., rows, :][..., cols]
    return out


def _banded(plain: F32, aligned: F32, shift: tuple[int, int], band: int) -> F32:
    """``aligned`` (H, W) moved by ``shift``, with ``plain``'s values in the ``band`` pixels along the border."""
    out: F32 = np.array(move(aligned, *shift), dtype=np.float32, copy=True)
    out[:band] = plain[:band]
    out[-band:] = plain[-band:]
    out[:, :band] = plain[:, :band]
    out[:, -band:] = plain[:, -band:]
    return out


def _unit64(pixels: NDArray[Any]) -> NDArray[np.float64]:
    """Pixels as float64 in [0, 1]: uint8 through the contract's one conversion (float32 v / 255), floats as
    they are."""
    if pixels.dtype == np.uint8:
        return uint8_to_unit(pixels).astype(np.float64)
    return np.asarray(pixels, np.float64)


@dataclass(frozen=True)
class FrameAlignment:
    """A fixed camera's frame alignment: a camera that vibrates or was remounted shows the scene a pixel or two
    off, and at the scene's edges that shift, not a defect, is most of the per-pixel spread.

    A frame's shift d = (dy, dx) is the integer shift within ``radius`` whose mean squared difference between the
    frame and the reference moved by d is smallest over the interior (the frame less ``radius`` pixels at each
    side; pixels in [0, 1], every channel; sums in float64). Shifts within ``ALIGN_TIE`` (relative) of the
    smallest tie: the zero shift wins a tie, then the first in row-major scan order (dy, then dx, from -radius).

    ``stats`` (and ``defect``) are the per-position statistics of the training frames' maps moved back by their
    shifts onto the reference. A frame's maps are standardised by them moved by its shift (:func:`move`), except
    in a band of ``radius`` pixels along the frame's border: there the scene may lie outside the reference, and
    the frame's own border (where fewer tiles overlap) is unlike its interior, so the band reads the statistics
    in frame coordinates (``Positional.stats`` and ``Positional.defect``) (:meth:`Positional.at`).

    Attributes:
        reference: (C, H, W) float32 in [0, 1]: the training frames' mean after aligning them.
        radius: the largest shift in each direction, >= 1.
        stats: the aligned per-position map statistics (None only while the alignment is being measured).
        defect: the aligned per-position statistics of the defect head's logits (None without a head).
        tie: the relative margin within which shifts tie (``ALIGN_TIE``; the manifest's ``tie``).
    """

    reference: F32
    radius: int
    stats: MapStats | None = None
    defect: DefectStats | None = None
    tie: float = ALIGN_TIE

    def __post_init__(self) -> None:
        if self.reference.ndim != 3:
            raise ValueError(f"the alignment reference must be (C, H, W), got shape {self.reference.shape}")
        if self.radius < 1:
            raise ValueError(f"the alignment radius must be >= 1, got {self.radius}")
        if min(self.reference.shape[1:]) <= 2 * self.radius:
            raise ValueError(f"frames of {self.reference.shape[1]}x{self.reference.shape[2]} are too small to align "
                             f"within {self.radius} px")
        if not np.isfinite(self.reference).all():
            raise ValueError("the alignment reference must be finite")

    @property
    def frame(self) -> tuple[int, int]:
        return int(self.reference.shape[1]), int(self.reference.shape[2])

    def errors(self, image: NDArray[Any]) -> NDArray[np.float64]:
        """The mean squared difference of ``image`` (C, H, W, uint8 or floats in [0, 1]) to the reference moved
        by each shift: (2 radius + 1, 2 radius + 1), row dy + radius, column dx + radius.

        Raises:
            ArrayInputError: the image is not of the reference's shape.
        """
        c, h, w = self.reference.shape
        if tuple(int(v) for v in image.shape) != (c, h, w):
            raise ArrayInputError(f"frame alignment needs a ({c}, {h}, {w}) frame, got {tuple(image.shape)}")
        r = self.radius
        side = 2 * r + 1
        sums = np.zeros((side, side), np.float64)
        for y0 in range(r, h - r, ALIGN_ROWS):
            y1 = min(y0 + ALIGN_ROWS, h - r)
            rows = _unit64(image[:, y0:y1, r:w - r])
            for i in range(side):
                for j in range(side):
                    dy, dx = i - r, j - r
                    diff = rows - self.reference[:, y0 - dy:y1 - dy, r - dx:w - r - dx]
                    sums[i, j] += float(np.vdot(diff, diff))
        out: NDArray[np.float64] = sums / float(c * (h - 2 * r) * (w - 2 * r))
        return out

    def estimate(self, image: NDArray[Any]) -> tuple[int, int]:
        """The frame's shift (dy, dx) against the reference (the class's rule).

        Raises:
            ArrayInputError: the image is not of the reference's shape.
        """
        e = self.errors(image)
        r = self.radius
        limit = float(e.min()) * (1.0 + self.tie)
        if e[r, r] <= limit:
            return 0, 0
        i, j = (int(v) for v in np.argwhere(e <= limit)[0])
        return i - r, j - r

    @classmethod
    def fit(cls, frames: Sequence[NDArray[Any]], radius: int = ALIGN_RADIUS,
            rounds: int = ALIGN_ROUNDS) -> "FrameAlignment":
        """The reference of training frames ((C, H, W) each, one size): their mean, then ``rounds`` times the mean
        of the frames moved back by their shifts against it (the last time less the shifts' median, so that the
        median frame sits on the reference and the search's radius is spent either side of it).

        Raises:
            ValueError: no frames, frames of several shapes, or frames too small for ``radius``.
        """
        if not frames or len({tuple(f.shape) for f in frames}) != 1:
            raise ValueError("frame alignment needs training frames of one shape")
        total = np.zeros(frames[0].shape, np.float64)
        for f in frames:
            total += _unit64(f)
        aligned = cls((total / len(frames)).astype(np.float32), radius)
        for round_ in range(rounds):
            shifts = np.array([aligned.estimate(f) for f in frames])
            if round_ == rounds - 1:  # centre the scene: the median frame sits on the reference
                shifts -= np.round(np.median(shifts, axis=0)).astype(shifts.dtype)
            total[:] = 0.0
            for f, (dy, dx) in zip(frames, shifts):
                total += move(_unit64(f), -int(dy), -int(dx))
            aligned = cls((total / len(frames)).astype(np.float32), radius)
        return aligned

    def files(self) -> dict[str, bytes]:
        """The bundle files: the reference and the aligned statistics."""
        if self.stats is None:
            raise ValueError("an alignment without its aligned statistics cannot be written")
        out = {FRAME_REFERENCE_FILE: self.to_bytes(), ALIGNED_MAP_FILE: self.stats.to_bytes()}
        if self.defect is not None:
            out[ALIGNED_DEFECT_FILE] = self.defect.to_bytes()
        return out

    def to_bytes(self) -> bytes:
        """The bundle file: float32 little-endian, row-major (C, H, W)."""
        return np.ascontiguousarray(self.reference, "<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, shape: Sequence[int], radius: int, stats: MapStats | None = None,
                   defect: DefectStats | None = None, tie: float = ALIGN_TIE) -> "FrameAlignment":
        c, h, w = (int(v) for v in shape)
        return cls(np.frombuffer(data, dtype="<f4").reshape(c, h, w).astype(np.float32), radius, stats, defect, tie)

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's ``tiling.alignment``."""
        c, h, w = self.reference.shape
        stats = {"map": {"file": ALIGNED_MAP_FILE, "shape": [2, int(h), int(w)]}}
        if self.defect is not None:
            stats["defect_map"] = {"file": ALIGNED_DEFECT_FILE, "shape": [2, int(h), int(w)]}
        return {"file": FRAME_REFERENCE_FILE, "shape": [int(c), int(h), int(w)], "dtype": "float32",
                "byte_order": "little", "radius": self.radius, "tie": self.tie, **stats,
                "layout": "row-major (C, H, W) of the frame, pixels in [0, 1]: the training frames' mean after "
                          "aligning them",
                "definition": "a frame's shift d = (dy, dx), |dy|, |dx| <= radius, minimises the mean over channels "
                              "and the interior (radius px in from every side) of (frame[c, y, x] - reference[c, y - dy, "
                              "x - dx])^2, summed in float64; shifts within a relative tie of the smallest tie, the zero "
                              "shift winning a tie, then the first in row-major order from (-radius, -radius); the "
                              "frame's maps are standardised by the aligned statistics (map, defect_map: the training "
                              "frames' stitched maps moved back by their shifts, layouts as tiling.map and "
                              "tiling.defect_map) moved by d, read at (clamp(y - dy), clamp(x - dx)), except at pixels "
                              "less than radius from the frame's border, which read tiling.map and tiling.defect_map"}


@dataclass(frozen=True)
class Positional:
    """What a fixed camera's tiles are scored with: the frame's per-position map statistics, the defect head's
    (None without them: ``defect`` is then position-free) and the ``combined`` references measured with them
    (None when the combination is not calibrated yet)."""

    stats: MapStats
    combination: Combination | None = None
    defect: DefectStats | None = None
    alignment: FrameAlignment | None = None
    # The statistics of each shift met so far (at most (2 radius + 1)^2 of them), built once: scoring a frame
    # then costs its shift search alone.
    _moved: dict[tuple[int, int], tuple[MapStats, DefectStats | None]] = field(
        default_factory=dict, init=False, compare=False, repr=False)

    def at(self, image: NDArray[Any]) -> tuple[MapStats, DefectStats | None, tuple[int, int]]:
        """The statistics a frame (C, H, W) is standardised by, and its shift: without an alignment the
        statistics in frame coordinates; with one, the aligned statistics moved by the frame's shift, the border
        band of ``radius`` pixels read in frame coordinates (:class:`FrameAlignment`)."""
        al = self.alignment
        if al is None or al.stats is None:
            return self.stats, self.defect, (0, 0)
        d = al.estimate(image)
        moved = self._moved.get(d)
        if moved is None:
            moved = self._moved.setdefault(d, self._shifted(al, d))
        return moved[0], moved[1], d

    def _shifted(self, al: FrameAlignment, d: tuple[int, int]) -> tuple[MapStats, DefectStats | None]:
        """The statistics of a frame at shift ``d``: :meth:`at` without the cache."""
        assert al.stats is not None
        s = self.stats
        stats = MapStats(_banded(s.mean, al.stats.mean, d, al.radius), _banded(s.spread, al.stats.spread, d, al.radius),
                         s.sigma, s.top_k)
        defect = None
        if self.defect is not None:
            a = al.defect if al.defect is not None else self.defect
            defect = DefectStats(_banded(self.defect.mean, a.mean, d, al.radius),
                                 _banded(self.defect.spread, a.spread, d, al.radius))
        return stats, defect

    @property
    def frame(self) -> tuple[int, int]:
        h, w = self.stats.mean.shape
        return int(h), int(w)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods whose tile scores read a whole frame's maps."""
        return POSITIONAL_METHODS + (("defect",) if self.defect is not None else ())


def grid_tiles(images: Sequence[NDArray[Any]], tile: int, limit: int = VALIDATION_TILES, seed: int = 0) -> NDArray[Any]:
    """Non-overlapping tiles on a grid over ``images`` ((C, H, W) each; every image's grid, then at most ``limit``
    of them chosen with ``seed``): the fixed validation set of a tiled run and the tiles its own calibration is
    measured on.

    Raises:
        ArrayInputError: no image is one tile large.
    """
    cut = [im[:, y:y + tile, x:x + tile] for im in images
           for y in range(0, im.shape[1] - tile + 1, tile) for x in range(0, im.shape[2] - tile + 1, tile)]
    if not cut:
        raise ArrayInputError(f"no image is at least one {tile}x{tile} tile large")
    if len(cut) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(cut), limit, replace=False))
        cut = [cut[i] for i in keep]
    return np.stack(cut)


def calibrated_tiles(calibration: Calibration) -> int | None:
    """n0: the median number of tiles of the whole images an image-level calibration was measured on (None when
    the calibration does not say)."""
    n0 = calibration.raw.get("tiles_median")
    return int(n0) if n0 else None


def size_adjusted_p(p: float, tiles: int, tiles0: int) -> float:
    """The p-value of an image of ``tiles`` tiles from p0, its p-value against images of ``tiles0`` tiles."""
    if tiles == tiles0 or p >= 1.0:
        return p
    return float(-np.expm1(tiles / tiles0 * np.log1p(-p)))


def size_adjusted_fpr(fpr: float, tiles: int, tiles0: int) -> float:
    """The rate at which to read the calibrated threshold so that an image of ``tiles`` tiles is flagged at ``fpr``."""
    if tiles == tiles0:
        return fpr
    return float(-np.expm1(tiles0 / tiles * np.log1p(-fpr)))


def image_tile_scores(scorer: "Scorer", image: NDArray[Any], grid: TileGrid, methods: tuple[str, ...],
                      batch: int = TILE_BATCH, positional: Positional | None = None) -> dict[str, NDArray[np.float64]]:
    """Each method's raw score of every tile of ``image`` (C, H, W), in the grid's order: {method: (n,)}. With
    ``positional`` (a fixed camera; default: the scorer's own, a Model of a positional bundle has one), ``local``
    and ``combined`` read the map per position (:func:`positional_tile_scores`)."""
    positional = positional if positional is not None else getattr(scorer, "positional", None)
    if positional is not None and any(m in positional.methods for m in methods):
        return positional_tile_scores(scorer, image, grid, methods, positional, batch)[0]
    out: dict[str, list[NDArray[Any]]] = {m: [] for m in methods}
    for _, tiles in grid.batches(image, batch):
        xb = scorer.prepare(tiles)
        for m in methods:
            out[m].append(scorer.raw_scores(xb, m))
    return {m: np.concatenate(v).astype(np.float64) for m, v in out.items()}


def window_tops(frame_map: F32, grid: TileGrid, stats: MapStats, batch: int = TILE_BATCH) -> NDArray[np.float64]:
    """Per tile of ``grid``, the mean of the ``stats.top_k`` largest values of ``frame_map`` (H, W) under it: a
    fixed camera's tile ``local`` scores (n,)."""
    th, tw = grid.tile
    pos = grid.positions
    out = [stats.local_score(np.stack([frame_map[y:y + th, x:x + tw] for y, x in pos[i:i + batch]]))
           for i in range(0, pos.shape[0], batch)]
    return np.concatenate(out).astype(np.float64)


def positional_tile_scores(scorer: "Scorer", image: NDArray[Any], grid: TileGrid, methods: Sequence[str],
                           positional: Positional, batch: int = TILE_BATCH,
                           parts: bool = False) -> tuple[dict[str, NDArray[np.float64]], F32]:
    """A fixed camera's tile scores of one frame (C, H, W) and its anomaly map (H, W): :func:`positional_frames`
    of that frame alone.

    Raises: as :func:`positional_frames`.
    """
    return next(positional_frames(scorer, [image], grid, methods, positional, batch, parts))


def _frame_chunks(images: Sequence[NDArray[Any]], grid: TileGrid,
                  batch: int) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[Any]]]:
    """(frame index per tile, positions, tiles) in chunks of at most ``batch`` tiles: the tiles of consecutive
    whole frames together when a frame has fewer than ``batch`` tiles, else one frame's tiles in batches."""
    n = len(grid)
    if n >= batch:
        for k, image in enumerate(images):
            for positions, tiles in grid.batches(image, batch):
                yield np.full(len(positions), k), positions, tiles
        return
    per = batch // n
    for first in range(0, len(images), per):
        group = range(first, min(first + per, len(images)))
        yield (np.repeat(np.asarray(group), n), np.tile(grid.positions, (len(group), 1)),
               np.concatenate([next(grid.batches(images[k], n))[1] for k in group]))


def positional_frames(scorer: "Scorer", images: Sequence[NDArray[Any]], grid: TileGrid, methods: Sequence[str],
                      positional: Positional, batch: int = TILE_BATCH,
                      parts: bool = False) -> Iterator[tuple[dict[str, NDArray[np.float64]], F32]]:
    """A fixed camera's tile scores and anomaly map of each frame (C, H, W) of ``images``, in order, as each is done.

    The tiles of consecutive frames are scored together in batches of up to ``batch`` (one pass of the graphs
    gives the position-free methods' scores and, with ``combined``'s parts, the residual magnitudes from the
    parts' own reconstructions); each frame's residual magnitudes are stitched (averaged where tiles overlap) and
    standardised by the frame's per-position statistics into its anomaly map; a tile's ``local`` is the mean of
    its top ``top_k`` map values. With the defect head's per-position statistics (``positional.defect``), its
    logits are stitched and standardised alike and a tile's ``defect`` is the largest window mean of that map
    under it. ``combined`` reads these ``local`` and ``defect`` against ``positional.combination``. With
    ``parts``, the combined score's parts come back too (as ``part:<name>``), which is what calibrating the
    combination needs. At most ``batch`` / tiles-per-frame + 1 frames' maps are held at once.

    Raises:
        ArrayInputError: a frame is not of the statistics' size.
        ValueError: ``combined`` asked for without a combination.
    """
    if (grid.height, grid.width) != positional.frame:
        raise ArrayInputError(f"a fixed-camera bundle scores frames of {positional.frame[0]}x{positional.frame[1]} px, "
                              f"got {grid.height}x{grid.width}")
    for image in images:
        if tuple(int(v) for v in image.shape[1:]) != (grid.height, grid.width):
            raise ArrayInputError(f"a fixed-camera bundle scores frames of {positional.frame[0]}x"
                                  f"{positional.frame[1]} px, got {image.shape[1]}x{image.shape[2]}")
    if "combined" in methods and positional.combination is None:
        raise ValueError("this fixed-camera bundle has no per-position references for combined")
    names = list(scorer.spec.combined_parts) if ("combined" in methods or parts) else []
    framed = positional.methods
    plain = [m for m in methods if m not in framed]
    # the parts read from the whole frame's maps are not computed per tile
    skip = tuple(p for p in names if p in framed)
    stitched_defect = positional.defect is not None and ("defect" in methods or "defect" in names)
    th, tw = grid.tile
    n = len(grid)
    # per frame in flight: position-free scores, the stitched sums (magnitudes, defect logits) and counts, tiles done
    state: dict[int, tuple[dict[str, list[NDArray[Any]]], list[NDArray[np.float32]], NDArray[np.float32], list[int]]] = {}
    for owners, positions, tiles in _frame_chunks(images, grid, batch):
        xb = scorer.prepare(tiles)
        got: dict[str, NDArray[Any]] = {m: scorer.raw_scores(xb, m) for m in plain}
        if names:  # the parts' reconstructions give the residual magnitudes too: one pass for both
            both = scorer.combined_parts(xb, magnitudes=True, skip=skip)
            got.update({f"part:{p}": both[p] for p in names if p not in skip})
            maps = [both[MAGNITUDES]]
        else:
            maps = [scorer.residual_magnitudes(xb)]
        if stitched_defect:
            maps.append(scorer.defect_logits(xb))
        for k in np.unique(owners):
            k = int(k)
            rows = np.flatnonzero(owners == k)
            if k not in state:
                state[k] = ({key: [] for key in got}, [np.zeros((grid.height, grid.width), np.float32) for _ in maps],
                            np.zeros((grid.height, grid.width), np.float32), [0])
            collected, totals, count, done = state[k]
            for key, values in got.items():
                collected[key].append(values[rows])
            for j, (y, x) in zip(rows, positions[rows]):
                for total, m in zip(totals, maps):
                    total[y:y + th, x:x + tw] += m[j]
                count[y:y + th, x:x + tw] += 1.0
            done[0] += len(rows)
            if done[0] == n:
                del state[k]
                stats, defect_stats, _ = positional.at(images[k])
                frame_map = stats.standardise(totals[0] / count)
                defect_map = defect_stats.standardise(totals[1] / count) if stitched_defect else None  # type: ignore[union-attr]
                yield _positional_frame(collected, frame_map, defect_map, scorer.spec.defect_window, grid, methods,
                                        positional, names, parts, batch)


def _positional_frame(collected: Mapping[str, list[NDArray[Any]]], frame_map: F32, defect_map: F32 | None,
                      window: int, grid: TileGrid, methods: Sequence[str], positional: Positional,
                      names: Sequence[str], parts: bool, batch: int) -> tuple[dict[str, NDArray[np.float64]], F32]:
    """One frame's scores from its tiles' collected scores and its standardised maps (:func:`positional_frames`)."""
    scores = {key: np.concatenate(v).astype(np.float64) for key, v in collected.items()}
    framed = {"local": window_tops(frame_map, grid, positional.stats, batch)}
    if defect_map is not None:
        framed["defect"] = window_means(defect_map, grid, window, batch)
    part_scores = {p: framed[p] if p in framed else scores[f"part:{p}"] for p in names}
    result = {m: framed[m] if m in framed else scores[m] for m in methods if m != "combined"}
    if "combined" in methods:
        assert positional.combination is not None
        result["combined"] = positional.combination.statistic(
            {p: part_scores[p] for p in positional.combination.parts}).astype(np.float64)
    if parts:
        result.update({f"part:{p}": part_scores[p] for p in names})
    return result, frame_map


def window_means(frame_map: F32, grid: TileGrid, window: int, batch: int = TILE_BATCH) -> NDArray[np.float64]:
    """Per tile of ``grid``, the largest mean of ``frame_map`` (H, W) over a ``window`` square inside the tile
    (``maps.defect_score`` of the tile's part of the map): a fixed camera's tile ``defect`` scores (n,)."""
    th, tw = grid.tile
    pos = grid.positions
    out = [defect_score(np.stack([frame_map[y:y + th, x:x + tw] for y, x in pos[i:i + batch]]), window)
           for i in range(0, pos.shape[0], batch)]
    return np.concatenate(out).astype(np.float64)


def packed_tile_scores(scorer: "Scorer", images: Sequence[NDArray[Any]], grids: Sequence[TileGrid], method: str,
                       batch: int = TILE_BATCH, progress: Callable[[int], None] | None = None,
                       positional: Positional | None = None) -> list[NDArray[np.float64]]:
    """One method's tile scores of several images ((C, H, W) each, with their grids), the tiles of consecutive
    images packed into batches of ``batch``: {image: (n_tiles,)} as a list in order. ``progress`` is called with
    the number of tiles each batch scored. A fixed camera's ``local`` and ``combined`` go through
    :func:`positional_frames` (frames of one size, each needing its whole frame's map)."""
    if positional is not None and method in positional.methods and images:
        done = []
        for scores, _ in positional_frames(scorer, images, grids[0], (method,), positional, batch):
            done.append(scores[method])
            if progress is not None:
                progress(len(grids[0]))
        return done
    pending: list[NDArray[Any]] = []
    owners: list[int] = []
    out: list[list[NDArray[Any]]] = [[] for _ in images]

    def flush() -> None:
        scores = scorer.raw_scores(scorer.prepare(np.concatenate(pending)), method)
        if progress is not None:
            progress(int(scores.shape[0]))
        start = 0
        for owner, part in zip(owners, pending):
            out[owner].append(scores[start:start + part.shape[0]])
            start += part.shape[0]
        pending.clear()
        owners.clear()

    filled = 0
    for k, (image, grid) in enumerate(zip(images, grids)):
        for _, tiles in grid.batches(image, batch):
            if filled + tiles.shape[0] > batch and pending:
                flush()
                filled = 0
            pending.append(tiles)
            owners.append(k)
            filled += tiles.shape[0]
    if pending:
        flush()
    return [np.concatenate(parts).astype(np.float64) for parts in out]


def image_level_methods(computable: Sequence[str]) -> tuple[str, ...]:
    """The methods a tiled bundle calibrates for whole images: every computable one but ``NOT_FOR_WHOLE_IMAGES``."""
    return tuple(m for m in computable if m not in NOT_FOR_WHOLE_IMAGES)


def tiled_image_scores(scorer: Any, image: NDArray[Any], methods: Sequence[str]) -> dict[str, float]:
    """Each method's image score (the tiling's aggregate) of one image (C, H, W), its tiles scored once for all
    methods; ``scorer`` is a Model of a tiled bundle."""
    tiling = scorer.tiling
    img = tile_view(image, scorer.spec.contract.channels)
    tiling.check_frame(img.shape[1], img.shape[2])
    scores = image_tile_scores(scorer, img, tiling.grid(img.shape[1], img.shape[2]), tuple(methods),
                               positional=getattr(scorer, "positional", None))
    return {m: aggregate(v, tiling.aggregate) for m, v in scores.items()}


def aggregate(tile_scores: NDArray[Any], how: str = "max") -> float:
    """The image's score from its tiles' scores."""
    if how != "max":
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}")
    return float(np.max(tile_scores))


def stitch(image: NDArray[Any], grid: TileGrid, tile_maps: Callable[[NDArray[Any]], F32],
           batch: int = TILE_BATCH) -> F32:
    """A full-resolution map (H, W): ``tile_maps`` ((n, C, th, tw) tiles -> (n, th, tw) maps) over the grid,
    averaged where tiles overlap. Memory: the two (H, W) accumulators and one batch."""
    total = np.zeros((grid.height, grid.width), np.float32)
    count = np.zeros((grid.height, grid.width), np.float32)
    th, tw = grid.tile
    for positions, tiles in grid.batches(image, batch):
        maps = tile_maps(tiles)
        for (y, x), m in zip(positions, maps):
            total[y:y + th, x:x + tw] += m
            count[y:y + th, x:x + tw] += 1.0
    out: F32 = total / count
    return out


class TiledScore(NamedTuple):
    """One image scored by tiles: the aggregate score, its p-value and flag, and how many tiles it took."""

    score: float
    p_value: float
    is_outlier: bool
    threshold: float
    tiles: int


def tile_view(image: NDArray[Any], channels: int) -> NDArray[Any]:
    """An image as (C, H, W): (H, W), (C, H, W) or (H, W, C) arrays of the bundle's channel count.

    Raises:
        ArrayInputError: another rank or channel count.
    """
    a = np.asarray(image)
    if a.ndim == 2 and channels == 1:
        a = a[None]
    elif a.ndim == 3 and a.shape[0] != channels and a.shape[-1] == channels:
        a = np.moveaxis(a, -1, 0)
    if a.ndim != 3 or a.shape[0] != channels:
        raise ArrayInputError(f"a tiled bundle scores one image at a time as (H, W), (C, H, W) or (H, W, C) with "
                              f"{channels} channel(s); got shape {a.shape}")
    return a


def frame_stats(scorer: "Scorer", frames: Sequence[NDArray[Any]], tiling: Tiling,
                alignment: FrameAlignment | None = None, batch: int = TILE_BATCH) -> Positional:
    """A fixed camera's per-position statistics from its training frames (C, H, W, all of one size; no
    references yet): each frame's residual magnitudes (and, with a defect head, its logits) stitched by tiles as
    scoring stitches them, then their per-pixel mean and spread over the frames (``MapStats.fit``, ``top_k`` that
    of a tile, as ``local`` averages over a tile; :meth:`DefectStats.fit`). With ``alignment`` (its reference,
    :meth:`FrameAlignment.fit`) also the statistics of the same maps moved back by each frame's shift.

    Raises:
        ValueError: fewer than two frames, frames of several sizes, or a scorer without map statistics.
    """
    sizes = {(int(f.shape[1]), int(f.shape[2])) for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"a fixed camera's frames share one size; got {len(sizes)} sizes")
    (h, w), = sizes
    grid = tiling.grid(h, w)
    tile_stats = scorer.maps
    if tile_stats is None:
        raise ValueError("per-position statistics need the tiles' own map statistics first")
    head = scorer.has_defect_head
    magnitudes = [stitch(f, grid, scorer.residual_magnitudes, batch) for f in frames]
    logits = [stitch(f, grid, scorer.defect_logits, batch) for f in frames] if head else []

    def fitted(maps: Sequence[F32]) -> MapStats:
        m = MapStats.fit([x[None] for x in maps], tile_stats.sigma)
        return MapStats(m.mean, m.spread, tile_stats.sigma, tile_stats.top_k)

    stats, defect = fitted(magnitudes), DefectStats.fit(logits) if head else None
    if alignment is not None:
        shifts = [alignment.estimate(f) for f in frames]
        alignment = replace(alignment, stats=fitted([move(m, -dy, -dx) for m, (dy, dx) in zip(magnitudes, shifts)]),
                            defect=DefectStats.fit([move(m, -dy, -dx) for m, (dy, dx) in zip(logits, shifts)])
                            if head else None)
    return Positional(stats, None, defect, alignment)


def frame_alignment(frames: Sequence[NDArray[Any]], alignment: FrameAlignment | None = None) -> float | None:
    """The share of the pixels' variance that lies between frames at one position (mean over pixels of the
    variance across frames, over the variance of all pixel values): near 0 when every frame shows the same scene
    (a fixed camera), near 1 for views of a surface at random places. With ``alignment``, of the frames moved back
    by their shifts onto its reference (a vibrating camera's frames of fine detail are alike only once aligned).
    None when the frames differ in size or are fewer than ``MIN_FRAMES``."""
    if len(frames) < MIN_FRAMES or len({tuple(f.shape) for f in frames}) != 1:
        return None
    total = np.zeros(frames[0].shape, np.float64)
    squares = np.zeros(frames[0].shape, np.float64)
    for f in frames:
        v = np.asarray(f, np.float64)
        if alignment is not None:
            dy, dx = alignment.estimate(f)
            v = move(v, -dy, -dx)
        total += v
        squares += v * v
    n = len(frames)
    mean = total / n
    between = float(np.mean(squares / n - mean * mean))
    overall = float(squares.sum() / (n * mean.size) - (total.sum() / (n * mean.size)) ** 2)
    return between / overall if overall > 0 else 0.0
