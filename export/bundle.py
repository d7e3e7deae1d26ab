"""Export a checkpoint to a bundle: two ONNX graphs, parity-checked against PyTorch, calibrated, with a manifest.

:func:`export_bundle` runs the steps in order — export the graphs, check parity, calibrate, build the edge
variants, write the bundle — each a function of its own. The bundle is assembled in a temporary folder beside
the target and renamed into place only after it has been loaded back and verified, so an interrupted export
never leaves a folder that loads as a bundle.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgevae import __version__
from edgevae.runtime.options import (
    CALIBRATION_FPR,
    COMBINED_PARTS,
    DEFAULT_METHOD,
    DEFECT_UPSAMPLING,
    DEFECT_UPSAMPLINGS,
    DEFECT_WINDOW,
    ELBO_SAMPLES,
    IWAE_SAMPLES,
    OPSET,
    OPSET_RANGE,
    SCORE_SEED,
    SMOOTH_SIGMA,
    TILED_DEFECT_SHARE,
    TILED_DEFECT_UPSAMPLING,
    TILED_DEFECT_WINDOW,
    VARIANTS,
)
from edgevae.runtime.bundle import check_graphs, load
from edgevae.runtime.calibration import (MIN_CALIBRATION_IMAGES, calibrate_positional, calibrate_tiled, calibration_section,
                                         fit_map_stats)
from edgevae.runtime.errors import CalibrationError, CheckpointError, ExportError
from edgevae.runtime.manifest import (
    DECODER_FILE,
    DEFECT_FILE,
    DEFECT_INPUT,
    DEFECT_OUTPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    FORMAT_NAME,
    SCHEMA_VERSION,
    Calibration,
    ScoringSpec,
    check_score_settings,
)
from edgevae.runtime.maps import MAP_FILE, MapStats, check_parts, check_weights
from edgevae.runtime.methods import MONTE_CARLO_METHODS, SCORE_METHODS, noise_file
from edgevae.runtime.model import Model, Scorer
from edgevae.runtime.runner import build_runner
from edgevae.runtime.tiles import (ALIGN_RADIUS, ALIGN_RADIUS_MAX, CAMERAS, FIXED_CAMERA_SHARE, FRAME_MAP_FILE, MIN_FRAMES,
                                  FrameAlignment, Positional, Tiling, frame_alignment, frame_stats, image_level_methods)
from edgevae.runtime.scores import warn_if_unpromisable
from edgevae.runtime.writer import graph_with_manifest, write_bundle
from edgevae.training.defect_head import LoadedHead, load_head
from edgevae.training.holdout import Holdout
from edgevae.training.loop import Checkpoint, load_checkpoint, run_holdout
from edgevae.training.model import VAE

from .graphs import Graphs, export_defect_graph, export_graphs, quiet_exporter
from .parity import PARITY_BATCH_SIZES, PARITY_TOLERANCE, ParityReport, check_parity
from .variants import MIN_RANK_CORRELATION, compare, make_defect_variant, make_variant, to_ort_format

Say = Callable[[str], None]


@dataclass(frozen=True)
class ExportConfig:
    """Export settings; defaults and allowed values come from ``edgevae.runtime.options``.

    Args:
        fpr: target false-positive rate of the stored thresholds.
        elbo_samples: Monte-Carlo samples K of the ``elbo`` score.
        iwae_samples: importance samples K of the ``iwae`` score.
        score_seed: seed of the shared noise of the Monte-Carlo scores.
        smooth_sigma: width (pixels) of the Gaussian that smooths the residual in ``smooth_recon``; the
            default suits 28x28 images, larger images may want a proportionally larger value.
        default_method: the method ``score`` uses when none is named.
        combined_parts: the scores the ``combined`` method joins through their p-values (a local and a global
            one by default).
        combined_weights: weights of the parts (part name to a positive number; parts not named weigh 1): part i
            gets the share k w_i / sum(w) of the false-alarm budget. ``{}``: equal shares. None (the default): equal
            shares, except in a tiled run with a defect head, where the ``defect`` part gets ``TILED_DEFECT_SHARE``
            of the budget and the others share the rest (tiles are for small local defects, which the head is
            built to find; the VAE's parts keep the global novelty).
        opset: ONNX opset of the graphs.
        tolerance: largest allowed max-abs difference between onnxruntime and PyTorch outputs.
        variants: edge variants to add: ``int8`` (static QDQ quantization), ``fp16``.
        ort_format: also write every graph (fp32 and variants) in the ORT format, as variants named
            ``ort`` (fp32) and ``<variant>-ort``.
        defect_head: ship the run's defect head (``defect.pt``, when it has one) as ``defect.onnx``.
        defect_window: side of the square the ``defect`` score averages the head's logits over; None:
            ``DEFECT_WINDOW``, or ``TILED_DEFECT_WINDOW`` for a tiled run.
        defect_upsampling: how the exported defect graph brings the head's half-resolution logits to the image's
            size, one of ``DEFECT_UPSAMPLINGS``: ``bilinear`` (a smooth map) or ``nearest`` (each logit over a 2x2
            block, so that the map's largest value is the head's largest logit; a bilinear map lowers a peak one
            logit wide, such as a thin scratch's). None: ``DEFECT_UPSAMPLING``, or ``TILED_DEFECT_UPSAMPLING`` for
            a tiled run of a stationary surface (not a fixed camera: unmeasured there).
        tile_stride: a tiled run's (``--tile``) distance between neighbouring tiles when scoring large images;
            None: half a tile.
        camera: a tiled run's kind of camera (``CAMERAS``): ``fixed`` (the same scene in every frame of one size:
            the map statistics per position of the frame), ``surface`` (a stationary surface: position-free), or
            ``auto`` (fixed when the training frames share one size and look alike position by position).
        align_radius: a fixed camera's frame alignment (``tiling.alignment``): each frame is matched to the
            training frames' aligned mean within this many pixels in each direction and read against the
            per-position statistics moved by its shift; 0: frames are read where they fall.
    """

    fpr: float = CALIBRATION_FPR
    elbo_samples: int = ELBO_SAMPLES
    iwae_samples: int = IWAE_SAMPLES
    score_seed: int = SCORE_SEED
    smooth_sigma: float = SMOOTH_SIGMA
    default_method: str = DEFAULT_METHOD
    combined_parts: tuple[str, ...] = COMBINED_PARTS
    combined_weights: Mapping[str, float] | None = None
    opset: int = OPSET
    tolerance: float = PARITY_TOLERANCE
    variants: tuple[str, ...] = ()
    ort_format: bool = False
    defect_head: bool = True
    defect_window: int | None = None
    defect_upsampling: str | None = None
    tile_stride: int | None = None
    camera: str = "auto"
    align_radius: int = ALIGN_RADIUS

    def __post_init__(self) -> None:
        if not 0 <= self.align_radius <= ALIGN_RADIUS_MAX:
            raise ValueError(f"align_radius must be in 0..{ALIGN_RADIUS_MAX} pixels, got {self.align_radius}")
        if self.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {', '.join(CAMERAS)}, got {self.camera!r}")
        if self.defect_upsampling is not None and self.defect_upsampling not in DEFECT_UPSAMPLINGS:
            raise ValueError(f"defect_upsampling must be one of {', '.join(DEFECT_UPSAMPLINGS)} or None, got "
                             f"{self.defect_upsampling!r}")
        if self.tile_stride is not None and self.tile_stride < 1:
            raise ValueError(f"tile_stride must be >= 1 or None (half a tile), got {self.tile_stride}")
        if not 0.0 < self.fpr < 0.5:
            raise ValueError(f"fpr must be in (0, 0.5), got {self.fpr}")
        if not OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1]:
            raise ValueError(f"opset must be in {OPSET_RANGE[0]}..{OPSET_RANGE[1]}, got {self.opset}")
        if not 0 < self.tolerance <= 1e-2:
            raise ValueError(f"tolerance must be in (0, 0.01], got {self.tolerance}")
        object.__setattr__(self, "variants", tuple(dict.fromkeys(self.variants)))
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        check_score_settings(self.default_method, self.elbo_samples, self.iwae_samples, self.smooth_sigma)
        object.__setattr__(self, "combined_parts", tuple(self.combined_parts))
        check_parts(self.combined_parts)
        if self.combined_weights is not None:
            unknown = [p for p in self.combined_weights if p not in self.combined_parts]
            if unknown:
                raise ValueError(f"combined_weights names {unknown}, which are not parts of combined "
                                 f"({', '.join(self.combined_parts)})")
            if self.combined_weights:
                check_weights(self.combined_parts, self.weights_tuple() or ())

    def weights_tuple(self) -> tuple[float, ...] | None:
        """The parts' weights in their order (parts not named weigh 1), or None for equal shares (``{}`` or None)."""
        if not self.combined_weights:
            return None
        return tuple(float(self.combined_weights.get(p, 1.0)) for p in self.combined_parts)

    def for_tiles(self, tiled: bool) -> "ExportConfig":
        """This config with its default weights resolved: for a tiled run with a ``defect`` part, that part gets
        ``TILED_DEFECT_SHARE`` of the false-alarm budget; otherwise (or when weights are given) as it is."""
        if self.combined_weights is not None:
            return self
        if not tiled or "defect" not in self.combined_parts:
            return replace(self, combined_weights={})
        others = len(self.combined_parts) - 1
        return replace(self, combined_weights={"defect": TILED_DEFECT_SHARE * others / (1 - TILED_DEFECT_SHARE)})

    def scoring_spec(self, contract: Any, latent_dim: int, likelihood: str) -> ScoringSpec:
        """The score settings of a bundle with this contract, latent size and likelihood."""
        return ScoringSpec(contract=contract, latent_dim=latent_dim, likelihood=likelihood,
                           default_method=self.default_method, elbo_samples=self.elbo_samples,
                           iwae_samples=self.iwae_samples, seed=self.score_seed, smooth_sigma=self.smooth_sigma,
                           combined_parts=self.combined_parts, combined_weights=self.weights_tuple(),
                           defect_window=DEFECT_WINDOW if self.defect_window is None else self.defect_window)

    def for_head(self, has_head: bool) -> "ExportConfig":
        """This config for a bundle with or without a defect head: without one, the default parts and method
        leave ``defect`` out.

        Raises:
            ExportError: a part or default method named ``defect`` without a head to compute it.
        """
        if has_head:
            return self
        parts, method = self.combined_parts, self.default_method
        if parts == COMBINED_PARTS:
            parts = tuple(p for p in parts if p != "defect")
        if "defect" in parts or method == "defect" or "defect" in (self.combined_weights or {}):
            raise ExportError("the defect score needs the run's defect head (defect.pt), which this export has not: "
                              "train with the defect head (the default), or choose other parts and default method")
        return replace(self, combined_parts=parts, default_method=method)


def export_bundle(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    bundle_dir: str | os.PathLike[str],
    config: ExportConfig | None = None,
    *,
    calibration_images: np.ndarray | None = None,
    reference_images: np.ndarray | None = None,
    force: bool = False,
    progress: Say | None = None,
    sign_key: str | os.PathLike[str] | None = None,
) -> Model:
    """Export a checkpoint to a verified bundle directory and return it loaded through the runtime.

    Args:
        checkpoint: a checkpoint file or run folder (``best.pt`` is used), or a loaded Checkpoint.
        bundle_dir: target folder; it must not exist unless ``force``.
        config: export settings.
        calibration_images: held-out normal images for parity and calibration (default: the run's validation
            split, which the run folder keeps in ``holdout.npz``).
        reference_images: normal images, other than the calibration images, on which the anomaly-map statistics
            are measured (default: up to ``REFERENCE_IMAGES`` of the run's training split, kept beside it).
        force: replace an existing bundle folder.
        progress: called with a short message per step.
        sign_key: an Ed25519 private key file (``edgevae keygen``): the bundle is signed before it is moved
            into place, and verified with that key.

    Raises:
        ExportError: parity outside tolerance, invalid graph, too few calibration images, or target exists.
    """
    cfg = config or ExportConfig()
    say = progress or (lambda msg: None)
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    target = Path(bundle_dir)
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; choose another folder or pass --force to replace it")
    model = ck.model.eval()
    mc = ck.model_config
    head = load_head(ck.path) if cfg.defect_head and ck.path is not None else None
    cfg = cfg.for_head(head is not None)
    if cfg.defect_window is None:
        cfg = replace(cfg, defect_window=TILED_DEFECT_WINDOW if ck.data.tile is not None else DEFECT_WINDOW)
    # the run's held-out images, read once: the camera and the tiles' calibration, and the default images
    holdout = (_holdout(ck) if ck.data.tile is not None or calibration_images is None or reference_images is None
               else None)
    camera = _camera(ck, cfg, say, holdout)
    if cfg.defect_upsampling is None:  # nearest where measured: a stationary surface's tiles (docs/scoring.md)
        surface = camera is not None and not camera.fixed
        cfg = replace(cfg, defect_upsampling=TILED_DEFECT_UPSAMPLING if surface else DEFECT_UPSAMPLING)
    if head is not None:  # the module that is exported and checked: the trained head with the chosen last step
        head = replace(head, head=head.head.with_output(cfg.defect_upsampling or DEFECT_UPSAMPLING))
    cfg = cfg.for_tiles(ck.data.tile is not None)
    references, images = _export_images(ck, calibration_images, reference_images, holdout)
    say("exporting encoder.onnx and decoder.onnx" + (" and defect.onnx" if head is not None else ""))
    graphs = export_graphs(model, images, cfg.opset)
    defect_graph = export_defect_graph(head.head, images, cfg.opset) if head is not None else None
    scorer = _scorer(cfg.scoring_spec(mc.contract, int(mc.latent_dim or 0), mc.likelihood), graphs.encoder.SerializeToString(),
                     graphs.decoder.SerializeToString(),
                     defect=defect_graph.SerializeToString() if defect_graph is not None else None)
    scorer, calibration = _measure(scorer, references, images, cfg, say)
    tiling, frame_stats, whole = _tiling(ck, cfg, scorer, say, camera)
    say(f"checking parity with PyTorch at batch sizes {' and '.join(map(str, PARITY_BATCH_SIZES))}")
    report = check_parity(model, scorer, images, cfg.tolerance, head.head if head is not None else None)
    warn_if_unpromisable(cfg.fpr, images.shape[0], tail=any(c.tail is not None for c in calibration.methods.values()))
    manifest = build_manifest(ck, cfg, scorer, calibration, report, head)
    if tiling is not None:
        manifest["tiling"] = tiling.to_dict()
    files = {ENCODER_FILE: serialize(graphs.encoder), DECODER_FILE: serialize(graphs.decoder), **_data_files(scorer)}
    if defect_graph is not None:
        files[DEFECT_FILE] = serialize(defect_graph)
    if frame_stats is not None:
        files[FRAME_MAP_FILE] = frame_stats.stats.to_bytes()
        if frame_stats.defect is not None:
            files[frame_stats.defect.manifest_entry()["file"]] = frame_stats.defect.to_bytes()
        if frame_stats.alignment is not None:
            files.update(frame_stats.alignment.files())
    manifest["variants"] = build_variants(files, manifest, graphs, model, scorer, images, cfg, say, defect_graph,
                                          tiled=(tiling, whole) if tiling is not None and whole else None)
    say("writing the bundle")
    try:
        write_bundle(target, files, manifest, replace=force, sign_key=sign_key)
    except FileExistsError as exc:
        raise ExportError(f"{exc}; pass --force to replace it") from exc
    say(f"wrote {target}" + (" (signed)" if sign_key is not None else ""))
    return load(target, ["CPUExecutionProvider"], trusted_keys=[] if sign_key is None else [sign_key])


@dataclass(frozen=True)
class _Camera:
    """A tiled run's kind of camera, decided before its graphs are exported (the defect graph's last step follows
    it): the run's held-out whole images, its training frames, their alignment, and whether it is a fixed camera."""

    whole: list[np.ndarray]
    frames: list[np.ndarray]
    alignment: FrameAlignment | None
    fixed: bool


def _holdout(ck: Checkpoint) -> Holdout:
    """The run's held-out images (``run_holdout``).

    Raises:
        ExportError: the run kept none and its source cannot be read or has changed since training.
    """
    try:
        return run_holdout(ck)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc


def _camera(ck: Checkpoint, cfg: ExportConfig, say: Say, holdout: Holdout | None) -> _Camera | None:
    """The kind of camera of a tiled run (None for a run on whole images), from its held-out ``holdout``.

    Raises:
        ExportError: ``--camera fixed`` for images that are not frames of one size.
    """
    if ck.data.tile is None:
        return None
    if holdout is None:
        raise AssertionError("a tiled run's camera needs its held-out images")
    whole = [np.asarray(w) for w in holdout.whole]
    frames = [np.asarray(f) for f in holdout.frames]
    alignment = _alignment(cfg, frames)
    return _Camera(whole, frames, alignment, _fixed_camera(cfg.camera, frames, whole, say, alignment))


def _tiling(ck: Checkpoint, cfg: ExportConfig, scorer: Scorer, say: Say,
            camera: _Camera | None) -> tuple[Tiling | None, Positional | None, list[np.ndarray]]:
    """A tiled run's ``tiling`` section: its tile, stride and downscale, the kind of camera, and the image-level
    calibration on the whole held-out images the run kept (None for a run on whole images); with a fixed camera
    also its per-position statistics (written as ``FRAME_MAP_FILE`` and, with a defect head,
    ``FRAME_DEFECT_FILE``); and those whole images (a stationary surface's, which its edge variants calibrate on).

    Raises:
        ExportError: edge variants of a fixed camera, a stride larger than the tile, or too few whole images.
    """
    tile = ck.data.tile
    if tile is None or camera is None:
        return None, None, []
    stride = cfg.tile_stride or max(1, tile // 2)
    if stride > tile:
        raise ExportError(f"--tile-stride {stride} is larger than the tile ({tile}): parts of images would go unseen")
    whole, frames, alignment = camera.whole, camera.frames, camera.alignment
    tiling = Tiling((tile, tile), stride, downscale=ck.data.downscale, positional=False)
    methods = image_level_methods([m for m in SCORE_METHODS if m in scorer.computable_methods])
    if camera.fixed:
        if cfg.variants:
            raise ExportError("edge variants (--quantize, --precision) of a fixed camera's bundle are not built yet: "
                              "its per-position statistics are the fp32 graphs'; export it without them (a stationary "
                              "surface's tiled bundle, --camera surface, takes them)")
        try:
            _say_alignment(alignment, frames, say, cfg.align_radius)
            say(f"measuring per-position map statistics on {len(frames)} training frames of "
                f"{frames[0].shape[1]}x{frames[0].shape[2]}")
            measured = frame_stats(scorer, frames, tiling, alignment)
            say(f"calibrating a fixed camera's image scores on {len(whole)} whole held-out frames by {tile}x{tile} "
                f"tiles every {stride} px")
            positional, fitted = calibrate_positional(scorer, measured, whole, tiling, cfg.fpr,
                                                      methods, source="whole held-out frames of the training data, "
                                                                      "scored by tiles with per-position statistics")
        except (CalibrationError, ValueError) as exc:
            raise ExportError(str(exc)) from exc
        return positional, fitted, []
    say(f"calibrating image scores on {len(whole)} whole held-out images by {tile}x{tile} tiles every {stride} px")
    try:
        cal = calibrate_tiled(scorer, whole, tiling, cfg.fpr, methods,
                              source="whole held-out images of the training data, scored by tiles")
    except CalibrationError as exc:
        raise ExportError(str(exc)) from exc
    return replace(tiling, calibration=cal), None, whole


def _alignment(cfg: ExportConfig, frames: list[np.ndarray]) -> FrameAlignment | None:
    """The training frames' alignment when they may be a fixed camera's (frames of one size, ``--align-radius``
    >= 1, not ``--camera surface``), else None.

    Raises:
        ExportError: ``--camera fixed`` with frames too small for the radius.
    """
    if cfg.camera == "surface" or not cfg.align_radius or len(frames) < MIN_FRAMES:
        return None
    if len({tuple(f.shape) for f in frames}) != 1:
        return None
    h, w = frames[0].shape[1:]
    if min(h, w) <= 2 * cfg.align_radius + 1:
        if cfg.camera == "fixed":
            raise ExportError(f"frames of {h}x{w} are too small to align within {cfg.align_radius} px; pass a "
                              "smaller --align-radius, or 0")
        return None
    return FrameAlignment.fit(frames, cfg.align_radius)


def _say_alignment(alignment: FrameAlignment | None, frames: list[np.ndarray], say: Say, radius: int) -> None:
    """One line on how far the training frames sat off the scene."""
    if alignment is None:
        why = "--align-radius 0" if radius == 0 else f"frames too small to align within {radius} px"
        say(f"frames are read where they fall ({why})")
        return
    moved = Counter(max(abs(dy), abs(dx)) for dy, dx in (alignment.estimate(f) for f in frames))
    spread = ", ".join(f"{moved[k]} by {k} px" for k in sorted(moved) if k)
    say(f"aligned frames to the scene within {alignment.radius} px: of {len(frames)} training frames, {moved[0]} sit "
        "on it" + (f", {spread}" if spread else "") + " (--align-radius 0 turns it off)")


def _fixed_camera(camera: str, frames: list[np.ndarray], whole: list[np.ndarray], say: Say,
                  alignment: FrameAlignment | None = None) -> bool:
    """Whether a tiled run is exported for a fixed camera: ``--camera`` or, with ``auto``, the data (frames of one
    size whose pixels vary across frames by less than ``FIXED_CAMERA_SHARE`` of their total variance).

    Raises:
        ExportError: ``--camera fixed`` for a run whose images are not frames of one size.
    """
    if camera == "surface":
        say("camera: a stationary surface (--camera surface): map statistics are position-free")
        return False
    sizes = {tuple(int(v) for v in im.shape[1:]) for im in [*frames, *whole]}
    usable = len(frames) >= MIN_FRAMES and len(sizes) == 1
    if camera == "fixed":
        if not usable:
            raise ExportError(f"--camera fixed needs training images that are frames of one size, at least {MIN_FRAMES} "
                              f"of them kept by the run; this run kept {len(frames)} and its images have "
                              f"{len(sizes)} size(s). Retrain on frames of one size, or export with --camera surface")
        say("camera: fixed (--camera fixed): map statistics per position of the frame")
        return True
    share = frame_alignment(frames) if usable else None
    if share is not None and share >= FIXED_CAMERA_SHARE and alignment is not None:
        aligned = frame_alignment(frames, alignment)  # a vibrating camera's frames are alike once aligned
        if aligned is not None and aligned < FIXED_CAMERA_SHARE:
            say(f"camera: fixed (auto: once aligned within {alignment.radius} px, {aligned:.0%} of the pixels' variance "
                f"lies between frames at one position, {share:.0%} before; fixed below {FIXED_CAMERA_SHARE:.0%}; "
                "--camera chooses)")
            return True
    if share is None:
        say("camera: a stationary surface (auto: the images are not frames of one size): position-free statistics")
        return False
    fixed = share < FIXED_CAMERA_SHARE
    say(f"camera: {'fixed' if fixed else 'a stationary surface'} (auto: {share:.0%} of the pixels' variance lies "
        f"between frames at one position; fixed below {FIXED_CAMERA_SHARE:.0%}; --camera chooses)")
    return fixed


def _data_files(scorer: Scorer) -> dict[str, bytes]:
    """The files beside the graphs: the shared Monte-Carlo noise (for readers that cannot reproduce numpy's
    generator) and the anomaly-map statistics."""
    files: dict[str, bytes] = {}
    for method in MONTE_CARLO_METHODS:
        noise = scorer.noise(method)
        if noise is None:
            raise ExportError(f"{method} is listed as a Monte-Carlo method but draws no noise")
        files[noise_file(method)] = noise.astype("<f4").tobytes()
    if scorer.maps is not None:
        files[MAP_FILE] = scorer.maps.to_bytes()
    return files


def _measure(scorer: Scorer, references: np.ndarray, images: np.ndarray, cfg: ExportConfig,
             say: Say) -> tuple[Scorer, Calibration]:
    """Map statistics on the reference (training) images, then the calibration on the held-out ones; the scorer
    that carries both."""
    say(f"measuring anomaly-map statistics on {references.shape[0]} training images")
    try:
        scorer = fit_map_stats(scorer, references)
    except CalibrationError as exc:
        raise ExportError(str(exc)) from exc
    say(f"calibrating thresholds at FPR {cfg.fpr:g} on {images.shape[0]} held-out images")
    calibration = _calibrate(scorer, images, cfg.fpr)
    combination = calibration.combination(cfg.combined_parts, scorer.spec.combined_weights)
    if combination is not None and scorer.maps is not None:
        scorer = scorer.with_maps(scorer.maps, combination)
    return scorer, calibration


def _export_images(ck: Checkpoint, calibration_images: np.ndarray | None, reference_images: np.ndarray | None,
                   holdout: Holdout | None) -> tuple[np.ndarray, np.ndarray]:
    """(reference, calibration) images as float32 (N, C, H, W): the given ones, else those the run kept
    (``holdout``, read from ``holdout.npz``; export never reads the training source of a run that kept them)."""
    contract = ck.model_config.contract
    if calibration_images is None or reference_images is None:
        if holdout is None:
            raise AssertionError("default export images need the run's held-out images")
        calibration_images = holdout.calibration if calibration_images is None else calibration_images
        reference_images = holdout.reference if reference_images is None else reference_images
    images = contract.prepare(calibration_images)
    if images.shape[0] < MIN_CALIBRATION_IMAGES:
        raise ExportError(f"calibration needs at least {MIN_CALIBRATION_IMAGES} held-out images, got {images.shape[0]}")
    return contract.prepare(reference_images), images


def _scorer(spec: ScoringSpec, encoder: bytes, decoder: bytes, like: Scorer | None = None,
            defect: bytes | None = None) -> Scorer:
    """An uncalibrated scorer over serialized graphs, on the CPU provider (what export checks against), with the
    map statistics and references of ``like`` when given."""
    runner = build_runner(encoder, decoder, ["CPUExecutionProvider"], slice_workers=1, defect=defect)
    check_graphs(runner, spec)
    scorer = Scorer(spec, runner)
    return scorer.with_maps(like.maps, like.combination) if like is not None and like.maps is not None else scorer


CALIBRATION_SOURCE = "validation split of the training data (held out from gradient updates)"


def _calibrate(scorer: Scorer, images: np.ndarray, fpr: float) -> Calibration:
    try:
        return calibration_section(scorer, images, fpr, source=CALIBRATION_SOURCE)
    except CalibrationError as exc:
        raise ExportError(str(exc)) from exc


def build_variants(files: dict[str, bytes], manifest: dict[str, Any], graphs: Graphs, model: VAE, scorer: Scorer,
                   images: np.ndarray, cfg: ExportConfig, say: Say, defect_graph: onnx.ModelProto | None = None,
                   tiled: tuple[Tiling, list[np.ndarray]] | None = None) -> dict[str, Any]:
    """Add the configured edge variants (and ORT-format copies) to ``files``, each checked against fp32 and
    calibrated on its own; returns the manifest's ``variants`` section. A stationary surface's tiled bundle
    (``tiled``: its tiling and whole held-out images) gives each variant its own image-level calibration too
    (``tiling_calibration``), measured by tiles on those images as the fp32 graphs' is.

    Raises:
        ExportError: a variant ranks held-out images unlike the fp32 graphs.
    """
    variants: dict[str, Any] = {}
    builds: list[tuple[str, bytes, bytes, bytes | None]] = [
        ("fp32", files[ENCODER_FILE], files[DECODER_FILE], files.get(DEFECT_FILE))]
    for name in cfg.variants:
        say(f"building the {name} variant")
        with torch.no_grad():
            latents = model.encode(torch.from_numpy(images))[0].numpy()  # (N, D), as PyTorch computes them
        with quiet_exporter():
            v_enc, v_dec = make_variant(name, graphs.encoder, graphs.decoder, images, latents)
            v_defect = make_defect_variant(name, defect_graph, images) if defect_graph is not None else None
        builds.append((name, serialize(v_enc), serialize(v_dec), serialize(v_defect) if v_defect is not None else None))
    if cfg.ort_format:  # an ORT file keeps the metadata of the ONNX graph it is converted from
        say("converting graphs to the ORT format")
        builds += [(("ort" if n == "fp32" else f"{n}-ort"), to_ort_format(graph_with_manifest(e, manifest)),
                    to_ort_format(graph_with_manifest(d, manifest)),
                    to_ort_format(graph_with_manifest(f, manifest)) if f is not None else None)
                   for n, e, d, f in builds]
    for name, enc_bytes, dec_bytes, defect_bytes in builds[1:]:
        say(f"validating and calibrating the {name} variant")
        ext = "ort" if name.endswith("ort") else "onnx"
        stem = name.replace("-ort", "") if name != "ort" else "fp32"
        names = {"encoder": f"encoder.{stem}.{ext}", "decoder": f"decoder.{stem}.{ext}"}
        if defect_bytes is not None:
            names["defect"] = f"defect.{stem}.{ext}"
        variant = _scorer(scorer.spec, enc_bytes, dec_bytes, like=scorer, defect=defect_bytes)
        report = compare(scorer, variant, images)
        # combined is a step function of its parts at their reference scores, each part is held to the bar
        weak = {m: r for m, r in report["rank_correlation"].items() if m != "combined" and not r >= MIN_RANK_CORRELATION}
        if set(weak) == {"defect"} and defect_bytes is not None and files.get(DEFECT_FILE) is not None:
            # the head alone ranks unlike fp32 in this arithmetic: the variant keeps the fp32 head (the loader uses
            # the fp32 defect.onnx for a variant that lists none), and says so
            say(f"the {name} defect head ranks held-out images unlike fp32 (Spearman {weak['defect']:.3f}); the "
                f"{name} variant keeps the fp32 defect.onnx")
            defect_bytes = None
            names.pop("defect", None)
            variant = _scorer(scorer.spec, enc_bytes, dec_bytes, like=scorer, defect=files[DEFECT_FILE])
            report = {**compare(scorer, variant, images), "defect_head": f"fp32 (the {name} head's Spearman "
                                                                          f"{weak['defect']:.3f} < {MIN_RANK_CORRELATION})"}
            weak = {m: r for m, r in report["rank_correlation"].items() if m != "combined" and not r >= MIN_RANK_CORRELATION}
        if weak:
            raise ExportError(f"the {name} variant ranks held-out images unlike fp32 (Spearman "
                              + ", ".join(f"{m} {r:.3f}" for m, r in weak.items())
                              + f" < {MIN_RANK_CORRELATION}); leave it out")
        files[names["encoder"]], files[names["decoder"]] = enc_bytes, dec_bytes
        if defect_bytes is not None:
            files[names["defect"]] = defect_bytes
        calibration = _calibrate(variant, images, cfg.fpr)
        variants[name] = {**names, "format": ext, **report, "calibration": calibration.to_dict()}
        if tiled is not None:
            variants[name]["tiling_calibration"] = _variant_image_level(variant, calibration, *tiled, cfg.fpr).to_dict()
    return variants


def _variant_image_level(variant: Scorer, calibration: Calibration, tiling: Tiling, whole: list[np.ndarray],
                         fpr: float) -> Calibration:
    """A variant's image-level calibration on the whole held-out images: its own tile-level references for
    ``combined``, the fp32 image-level calibration's methods.

    Raises:
        ExportError: the images cannot be calibrated on (as for the fp32 graphs).
    """
    spec = variant.spec
    combination = calibration.combination(spec.combined_parts, spec.combined_weights)
    scorer = variant.with_maps(variant.maps, combination) if variant.maps is not None else variant
    assert tiling.calibration is not None
    methods = [m for m in tiling.calibration.methods if m in scorer.computable_methods]
    try:
        return calibrate_tiled(scorer, whole, tiling, fpr, methods,
                               source="whole held-out images of the training data, scored by tiles with this variant")
    except CalibrationError as exc:
        raise ExportError(str(exc)) from exc


def _versions() -> dict[str, str]:
    import onnxscript

    return {"edgevae": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": ort.__version__}


def build_manifest(ck: Checkpoint, cfg: ExportConfig, scorer: Scorer, calibration: Calibration,
                   parity: ParityReport, head: LoadedHead | None = None) -> dict[str, Any]:
    """The manifest of a bundle, without ``files`` and ``variants``."""
    mc, spec = ck.model_config, scorer.spec
    scoring = spec.to_dict()
    if scorer.maps is not None:
        scoring["map"] = scorer.maps.manifest_entry()
    graphs = _graph_entries(spec)
    if head is not None:
        scoring["defect"] = {"file": DEFECT_FILE, "input": DEFECT_INPUT, "output": DEFECT_OUTPUT,
                             "map": "sigmoid of the logits: per-pixel defect probability",
                             "parameters": sum(p.numel() for p in head.head.parameters()),
                             "widths": list(head.config.widths), "training": head.summary,
                             "generator": head.config.to_dict()["defects"],
                             "hard_negatives": head.config.hard_negatives,
                             "labelled_defects": head.config.labelled,
                             "upsampling": head.head.output, "resolution": head.config.resolution,
                             "members": head.config.members}
        graphs["defect"] = {"file": DEFECT_FILE, "inputs": {DEFECT_INPUT: ["N", spec.contract.channels, "H", "W"]},
                            "outputs": {DEFECT_OUTPUT: ["N", 1, "H", "W"]}}
    return {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "producer": _versions(),
        "opset": cfg.opset,
        "input": spec.contract.to_dict(),
        "latent_dim": spec.latent_dim,
        "likelihood": spec.likelihood,
        "prior": "N(0, I)",
        "graphs": graphs,
        "scoring": scoring,
        "calibration": calibration.to_dict(),
        "parity": {
            "tolerance": cfg.tolerance,
            "batch_sizes": list(PARITY_BATCH_SIZES),
            "max_abs_diff": dict(parity.graph_max_abs_diff),
            "score_max_rel_diff": dict(parity.score_max_rel_diff),
        },
        "model": mc.to_dict(),
        "training": training_summary(ck),
    }


def _graph_entries(spec: ScoringSpec) -> dict[str, Any]:
    """The manifest's ``graphs`` section for the encoder and the decoder."""
    c, h, w = spec.contract.shape
    mean_name, param_name = spec.decoder_outputs
    param_shape: list[Any] = ["N", c, h, w] if spec.likelihood == "bernoulli" else ["N", 1]
    return {
        "encoder": {"file": ENCODER_FILE, "inputs": {ENCODER_INPUT: ["N", c, h, w]},
                    "outputs": {"mu": ["N", spec.latent_dim], "logvar": ["N", spec.latent_dim], "kl": ["N"]}},
        "decoder": {"file": DECODER_FILE, "inputs": {"t": ["N", spec.latent_dim]},
                    "outputs": {mean_name: ["N", c, h, w], param_name: param_shape}},
    }


def training_summary(ck: Checkpoint) -> dict[str, Any]:
    """The manifest's ``training`` section: data, sizes and the best epoch's validation figures."""
    history = ck.history
    best = next((r for r in history if r.get("epoch") == ck.raw.get("best_epoch")), history[-1] if history else {})
    return {
        "data": ck.data.to_dict(),
        "n_train": ck.raw.get("n_train"),
        "n_val": ck.raw.get("n_val"),
        "epochs": ck.train_config.epochs,
        "best_epoch": ck.raw.get("best_epoch"),
        "val_neg_elbo": ck.best_val_neg_elbo,
        "val_recon": best.get("val_recon"),
        "val_kl": best.get("val_kl"),
        "seconds": _run_seconds(ck, history),  # the whole run
        "seconds_to_best_epoch": best.get("seconds"),
        "train_config": asdict(ck.train_config),
    }


def _run_seconds(ck: Checkpoint, history: list[dict[str, Any]]) -> float | None:
    """The whole run's training time: the last epoch of the run's metrics.json (the best checkpoint's own history
    ends at the best epoch), else of the checkpoint's history."""
    import json

    if ck.path is not None and (ck.path.parent / "metrics.json").exists():
        try:
            last = json.loads((ck.path.parent / "metrics.json").read_text())["history"][-1]
            return float(last["seconds"])
        except (ValueError, KeyError, IndexError, TypeError):
            pass
    return history[-1].get("seconds") if history else None


def serialize(proto: onnx.ModelProto) -> bytes:
    """A graph's bytes, edgevae named as its producer (the bundle writer embeds the manifest)."""
    proto.producer_name, proto.producer_version = "edgevae", __version__
    data: bytes = proto.SerializeToString()
    return data
