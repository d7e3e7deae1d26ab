"""A fixed camera by tiles: frames of one scene larger than the model, the map statistics per position of the
frame (``tiling.positional``), chosen from the data or by ``--camera``, through export, scoring, maps,
``edgevae calibrate`` and ``info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from edgevae.runtime.errors import ArrayInputError, CalibrationWarning
from edgevae.runtime.tiles import frame_alignment

TILE = 16
SIDE = 48
# what export warns when a tiny run's held-out frames are too few for the 1 % threshold (every export here)
FEW_CALIBRATION = r"below what \d+ calibration images can promise"


def _scene() -> np.ndarray:
    """One fixed scene (48 x 48, floats in [0, 1]): a flat left half, fine stripes on the right half (where a
    reconstruction's residual is large even on normal frames), a bright square in the middle."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    scene = np.where(x < SIDE // 2, 0.35, 0.5 + 0.35 * np.sin(x * 1.7 + y * 0.9))
    scene[18:30, 18:30] = 0.9
    return scene


def _frame(rng: np.random.Generator) -> np.ndarray:
    """The scene as one frame shows it: a little brighter or darker, with sensor noise; uint8 (1, H, W)."""
    img = _scene() * rng.uniform(0.95, 1.05) + rng.normal(0, 0.02, (SIDE, SIDE))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)[None]


def _broken(frame: np.ndarray) -> np.ndarray:
    """A frame with a small dark spot on the flat half, where normal frames hardly vary."""
    out = frame.copy()
    out[:, 6:10, 6:10] = 20
    return out


def test_frame_alignment_tells_a_fixed_scene_from_views_of_a_surface() -> None:
    rng = np.random.default_rng(0)
    fixed = [_frame(rng) for _ in range(20)]
    texture = rng.random((200, 200))
    views = []
    for _ in range(20):
        y, x = rng.integers(0, 200 - SIDE, 2)
        views.append((texture[None, y:y + SIDE, x:x + SIDE] * 255).astype(np.uint8))
    fixed_share, views_share = frame_alignment(fixed), frame_alignment(views)
    assert fixed_share is not None and views_share is not None
    assert fixed_share < 0.1 and views_share > 0.8
    assert frame_alignment(fixed[:5]) is None  # too few frames to say
    assert frame_alignment([*fixed[:10], views[0][:, :40]]) is None  # frames of two sizes


def _tiny_run(tmp_path_factory: pytest.TempPathFactory, name: str,
              frame: Callable[[np.random.Generator], np.ndarray]) -> Path:
    """A tiny tiled run on 40 frames drawn by ``frame`` (seed 0)."""
    pytest.importorskip("torch")
    from edgevae.training import DataSpec, ModelConfig, TrainConfig, train

    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp(name)
    train(DataSpec(tile=TILE, tiles_per_epoch=256), run, ModelConfig(latent_dim=4, widths=(8, 16), hidden=32),
          TrainConfig(epochs=4, seed=0, defect_steps=30), images=[frame(rng) for _ in range(40)])  # type: ignore[arg-type]
    return run


@pytest.fixture(scope="module")
def camera_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tiled run on 40 frames of one fixed scene."""
    return _tiny_run(tmp_path_factory, "camera_run", _frame)


@pytest.fixture(scope="module")
def camera_bundle(camera_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgevae.export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("camera_bundles") / "fixed"
    said: list[str] = []
    # the 10 held-out frames are the calibration: too few to promise 1 %, and export says so
    with pytest.warns(CalibrationWarning, match=FEW_CALIBRATION):
        export_bundle(camera_run, out, ExportConfig(elbo_samples=4, iwae_samples=16), progress=said.append)
    assert any(line.startswith("camera: fixed (auto:") for line in said), said
    return out


def test_auto_chooses_a_fixed_camera_and_the_bundle_records_its_frame(camera_bundle: Path) -> None:
    from edgevae.runtime import load
    from edgevae.runtime.tiles import FRAME_DEFECT_FILE, FRAME_MAP_FILE

    manifest = json.loads((camera_bundle / "edgevae.json").read_text())
    tiling = manifest["tiling"]
    assert tiling["positional"] is True and tiling["frame"] == [SIDE, SIDE]
    assert tiling["map"]["file"] == FRAME_MAP_FILE and tiling["map"]["shape"] == [2, SIDE, SIDE]
    assert FRAME_MAP_FILE in manifest["files"]  # covered by the checksums (and a signature) like every file
    model = load(camera_bundle)
    assert set(tiling["references"]) == set(model.spec.combined_parts)
    assert model.positional is not None and model.positional.frame == (SIDE, SIDE)
    assert model.positional.combination is not None
    # the defect head's logits have per-position statistics of their own, checksummed like every file
    assert tiling["defect_map"]["file"] == FRAME_DEFECT_FILE and tiling["defect_map"]["shape"] == [2, SIDE, SIDE]
    assert FRAME_DEFECT_FILE in manifest["files"]
    assert model.positional.defect is not None and "defect" in model.positional.methods
    assert manifest["scoring"]["defect"]["upsampling"] == "bilinear"  # a fixed camera keeps the smooth map


def test_a_fixed_camera_scores_frames_by_position_and_refuses_other_sizes(camera_bundle: Path) -> None:
    from edgevae.runtime import load

    model = load(camera_bundle)
    rng = np.random.default_rng(5)
    normals = [_frame(rng) for _ in range(12)]
    broken = _broken(_frame(rng))
    for method in ("local", "combined"):
        clean = [model.score_tiled(f, method).score for f in normals]
        hit = model.score_tiled(broken, method)
        assert hit.score > max(clean), method
        assert hit.tiles == len(model.tiling.grid(SIDE, SIDE))
    many = model.score_tiled_many([normals[0], broken], "combined")
    np.testing.assert_allclose([r.score for r in many],
                               [model.score_tiled(normals[0], "combined").score,
                                model.score_tiled(broken, "combined").score], rtol=1e-5)
    maps = model.tiled_maps(broken)
    assert maps["anomaly"].shape == (SIDE, SIDE)
    y, x = np.unravel_index(np.argmax(maps["anomaly"]), maps["anomaly"].shape)
    assert 2 <= y <= 14 and 2 <= x <= 14  # the per-position map points at the spot, not at the stripes
    with pytest.raises(ArrayInputError, match="fixed camera.*48x48"):
        model.score_tiled(np.zeros((1, 64, 48), np.uint8))
    with pytest.raises(ArrayInputError, match="fixed camera"):
        model.tiled_maps(np.zeros((1, 48, 40), np.uint8))


def test_camera_surface_and_fixed_override_the_choice(camera_run: Path, tmp_path: Path) -> None:
    from edgevae.export import ExportConfig, ExportError, export_bundle

    with pytest.warns(CalibrationWarning, match=FEW_CALIBRATION):
        surface = export_bundle(camera_run, tmp_path / "surface", ExportConfig(elbo_samples=4, iwae_samples=16,
                                                                               camera="surface"))
    assert surface.tiling.positional is False and surface.positional is None
    assert "references" not in surface.manifest.raw["tiling"]
    with pytest.raises(ValueError, match="camera must be one of"):
        ExportConfig(camera="tripod")
    # edge variants: a fixed camera's per-position statistics are the fp32 graphs', so they are refused with the way
    # out; nothing is written
    with pytest.raises(ExportError, match="fixed camera's bundle are not built yet.*--camera surface"):
        export_bundle(camera_run, tmp_path / "variants", ExportConfig(elbo_samples=4, iwae_samples=16,
                                                                      variants=("fp16",)))
    assert not (tmp_path / "variants").exists()
    # a run whose images are not frames of one size cannot be a fixed camera
    from edgevae.training import DataSpec, ModelConfig, TrainConfig, train

    rng = np.random.default_rng(1)
    mixed = [_frame(rng)[:, :int(rng.integers(32, 48)), :int(rng.integers(32, 48))] for _ in range(30)]
    run = tmp_path / "mixed"
    train(DataSpec(tile=TILE, tiles_per_epoch=64), run, ModelConfig(latent_dim=2, widths=(4, 8), hidden=8),
          TrainConfig(epochs=1, seed=0, defect_head=False), images=mixed)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="--camera fixed needs training images that are frames of one size"):
        export_bundle(run, tmp_path / "no", ExportConfig(elbo_samples=4, iwae_samples=16, camera="fixed"))


def test_calibrate_and_info_keep_a_fixed_camera(camera_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from click.testing import CliRunner

    from edgevae.cli import main
    from edgevae.runtime import load
    from PIL import Image

    bundle = tmp_path / "bundle"
    shutil.copytree(camera_bundle, bundle)
    rng = np.random.default_rng(11)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(12):
        Image.fromarray(_frame(rng)[0]).save(frames / f"f{i:02d}.png")
    Image.fromarray(_frame(rng)[0, :32, :40]).save(frames / "small.png")  # another size: reported, not resized
    runner = CliRunner()
    result = runner.invoke(main, ["calibrate", str(bundle), str(frames)])
    assert result.exit_code == 2, result.output  # the wrong-sized frame is reported; the other 12 calibrate
    assert "small.png" in result.output and "fixed camera" in result.output and "48x48" in result.output
    model = load(bundle)
    assert model.positional is not None and model.tiling.calibration is not None
    assert model.tiling.calibration.n == 12 and "calibrate" in str(model.tiling.calibration.raw["source"])
    # calibration scores each frame once; what it stores is what scoring the frames gives afterwards
    read = [np.asarray(Image.open(frames / f"f{i:02d}.png"))[None] for i in range(12)]
    for method in ("combined", "local", "elbo"):
        again = sorted(model.score_tiled(frame, method).score for frame in read)
        np.testing.assert_allclose(model.tiling.calibration.methods[method].sorted_scores, again, rtol=1e-5)
    info = runner.invoke(main, ["info", str(bundle)])
    assert info.exit_code == 0 and "per position of 48x48 frames (the residual and the defect head's logits)" in info.output


def test_position_free_methods_score_alike_beside_the_positional_ones(camera_bundle: Path) -> None:
    from edgevae.runtime import load
    from edgevae.runtime.tiles import image_tile_scores

    model = load(camera_bundle)
    frame = _broken(_frame(np.random.default_rng(2)))
    grid = model.tiling.grid(SIDE, SIDE)
    together = image_tile_scores(model, frame, grid, ("combined", "local", "elbo", "smooth_recon"))
    alone = image_tile_scores(model, frame, grid, ("elbo", "smooth_recon"))  # no map per position needed
    for m in ("elbo", "smooth_recon"):
        np.testing.assert_allclose(together[m], alone[m], rtol=1e-5)
    assert model.score_tiled(frame, "local").score == pytest.approx(float(together["local"].max()), rel=1e-6)


def test_the_parts_pass_gives_the_residual_magnitudes_the_map_stitches(camera_bundle: Path) -> None:
    """A fixed camera's tiles take the residual magnitudes from the combined parts' own encoder and decoder pass:
    the same magnitudes and the same parts as two separate passes give."""
    from edgevae.runtime import load
    from edgevae.runtime.maps import MAGNITUDES

    model = load(camera_bundle)
    frame = _broken(_frame(np.random.default_rng(3)))
    tiles = np.stack([frame[:, y:y + TILE, x:x + TILE] for y in (0, 16, 32) for x in (0, 16, 32)])
    both = model.combined_parts(tiles, magnitudes=True)
    np.testing.assert_allclose(both[MAGNITUDES], model.residual_magnitudes(tiles), rtol=1e-4, atol=1e-5)
    alone = model.combined_parts(tiles)
    assert set(both) == set(alone) | {MAGNITUDES}
    for part, scores in alone.items():
        np.testing.assert_allclose(both[part], scores, rtol=1e-5, atol=1e-6)


def test_frames_scored_together_score_as_each_alone(camera_bundle: Path) -> None:
    """Several frames' tiles share a batch (and a frame with more tiles than a batch is cut into batches): the
    scores and maps are those of each frame scored alone."""
    from edgevae.runtime import load
    from edgevae.runtime.tiles import positional_frames, positional_tile_scores

    model = load(camera_bundle)
    rng = np.random.default_rng(5)
    frames = [_frame(rng) for _ in range(4)] + [_broken(_frame(rng))]
    grid = model.tiling.grid(SIDE, SIDE)
    methods = ("combined", "local", "defect", "smooth_recon")
    alone = [positional_tile_scores(model, f, grid, methods, model.positional) for f in frames]
    for batch in (3 * len(grid), 4, len(grid)):  # frames packed together, a frame cut up, one frame a batch
        together = list(positional_frames(model, frames, grid, methods, model.positional, batch))
        assert len(together) == len(frames)
        for (scores, frame_map), (want, want_map) in zip(together, alone):
            np.testing.assert_allclose(frame_map, want_map, rtol=1e-4, atol=1e-5)
            for m in methods:
                np.testing.assert_allclose(scores[m], want[m], rtol=1e-4, atol=1e-5)
    many = model.score_tiled_many(frames, "combined")
    assert [r.score for r in many] == pytest.approx([float(a[0]["combined"].max()) for a in alone], rel=1e-4)
    assert many[-1].is_outlier


def test_the_defect_score_reads_the_head_per_position(camera_bundle: Path) -> None:
    """A fixed camera's ``defect``: the head's logits stitched over the frame, standardised per pixel by the
    training frames' statistics, and a tile's score the largest window mean of that map inside it; ``combined``
    reads that part, not the position-free one."""
    from edgevae.runtime import load
    from edgevae.runtime.maps import defect_score
    from edgevae.runtime.tiles import positional_tile_scores, stitch

    model = load(camera_bundle)
    assert model.positional is not None and model.positional.defect is not None
    frame = _broken(_frame(np.random.default_rng(4)))
    grid = model.tiling.grid(SIDE, SIDE)
    standard = model.positional.defect.standardise(stitch(frame, grid, model.defect_logits))
    want = defect_score(np.stack([standard[y:y + TILE, x:x + TILE] for y, x in grid.positions]),
                        model.spec.defect_window)
    scores, _ = positional_tile_scores(model, frame, grid, ("defect", "combined"), model.positional, parts=True)
    np.testing.assert_allclose(scores["defect"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores["part:defect"], want, rtol=1e-5, atol=1e-5)
    assert model.score_tiled(frame, "defect").score == pytest.approx(float(want.max()), rel=1e-5)
    # the position-free tile scores are another number: the head's raw logits, not their standardised map
    free = model.raw_scores(np.stack([frame[:, y:y + TILE, x:x + TILE] for y, x in grid.positions]), "defect")
    assert not np.allclose(free, want, rtol=1e-3)
    # a combination read per position takes the per-position parts, with the parts skipped per tile
    per_tile = model.combined_parts(np.stack([frame[:, y:y + TILE, x:x + TILE] for y, x in grid.positions]),
                                    skip=("local", "defect"))
    assert "local" not in per_tile and "defect" not in per_tile
    for part in set(model.spec.combined_parts) - {"local", "defect"}:
        np.testing.assert_allclose(scores[f"part:{part}"], per_tile[part], rtol=1e-5, atol=1e-6)


def _moved_scene(dy: int, dx: int) -> np.ndarray:
    """The scene as a camera that sits (dy, dx) pixels off shows it: scene content at (y - dy, x - dx)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    y, x = y - dy, x - dx
    scene = np.where(x < SIDE // 2, 0.35, 0.5 + 0.35 * np.sin(x * 1.7 + y * 0.9))
    scene[(y >= 18) & (y < 30) & (x >= 18) & (x < 30)] = 0.9
    return scene


def _shaken_frame(rng: np.random.Generator) -> np.ndarray:
    """A frame of a camera that vibrates: the scene up to one pixel off in each direction, a little brighter or
    darker, with sensor noise; uint8 (1, H, W)."""
    dy, dx = (int(v) for v in rng.integers(-1, 2, 2))
    img = _moved_scene(dy, dx) * rng.uniform(0.95, 1.05) + rng.normal(0, 0.02, (SIDE, SIDE))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)[None]


def test_move_and_frame_alignment_find_each_shift() -> None:
    from edgevae.runtime.tiles import ALIGN_TIE, FrameAlignment, move

    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    for dy, dx in ((1, -2), (0, 0), (-3, 4)):
        want = np.array([[a[min(max(y - dy, 0), 3), min(max(x - dx, 0), 4)] for x in range(5)] for y in range(4)])
        np.testing.assert_array_equal(move(a, dy, dx), want)
    reference = _moved_scene(0, 0).astype(np.float32)[None]
    alignment = FrameAlignment(reference, 2)
    rng = np.random.default_rng(0)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            frame = np.clip(_moved_scene(dy, dx) + rng.normal(0, 0.02, (SIDE, SIDE)), 0, 1)
            assert alignment.estimate(frame[None]) == (dy, dx)
            as_uint8 = np.rint(frame * 255).astype(np.uint8)[None]
            assert alignment.estimate(as_uint8) == (dy, dx)  # uint8 frames are read as the contract reads them
    # ties: a flat frame against a flat reference matches every shift alike, and the zero shift wins
    flat = FrameAlignment(np.full((1, SIDE, SIDE), 0.5, np.float32), 2)
    assert flat.estimate(np.full((1, SIDE, SIDE), 0.3, np.float32)) == (0, 0)
    errors = alignment.errors(reference)
    assert errors[2, 2] == 0.0 and (np.delete(errors.ravel(), 12) > ALIGN_TIE).all()
    back = FrameAlignment.from_bytes(alignment.to_bytes(), (1, SIDE, SIDE), 2)
    np.testing.assert_array_equal(back.reference, reference)
    with pytest.raises(ArrayInputError, match="frame alignment needs a \\(1, 48, 48\\) frame"):
        alignment.estimate(np.zeros((1, 40, 48), np.uint8))
    with pytest.raises(ValueError, match="too small to align"):
        FrameAlignment(np.zeros((1, 4, 40), np.float32), 2)
    # fitting centres the scene: the median training frame sits on the reference
    frames = [_shaken_frame(rng) for _ in range(30)]
    fitted = FrameAlignment.fit(frames, 2)
    shifts = np.array([fitted.estimate(f) for f in frames])
    assert (np.median(shifts, axis=0) == 0).all() and np.abs(shifts).max() <= 2


def test_a_frames_statistics_are_built_once_per_shift() -> None:
    """``Positional.at`` moves the aligned statistics by a frame's shift, keeps the border band in frame
    coordinates, and builds each shift's statistics once: later frames at that shift reuse them."""
    from edgevae.runtime.maps import MapStats
    from edgevae.runtime.tiles import DefectStats, FrameAlignment, Positional, move

    rng = np.random.default_rng(3)
    plain, aligned = (MapStats(rng.uniform(0, 1, (SIDE, SIDE)).astype(np.float32),
                               rng.uniform(0.5, 1, (SIDE, SIDE)).astype(np.float32), 1.0, 8) for _ in range(2))
    defect_plain, defect_aligned = (DefectStats(rng.normal(0, 1, (SIDE, SIDE)).astype(np.float32),
                                                rng.uniform(0.5, 1, (SIDE, SIDE)).astype(np.float32)) for _ in range(2))
    reference = _moved_scene(0, 0).astype(np.float32)[None]
    positional = Positional(plain, None, defect_plain, FrameAlignment(reference, 2, aligned, defect_aligned))
    for dy, dx in ((1, -2), (0, 0), (1, -2)):
        frame = _moved_scene(dy, dx).astype(np.float32)[None]
        stats, defect, shift = positional.at(frame)
        assert shift == (dy, dx) and defect is not None
        want = move(aligned.mean, dy, dx)
        np.testing.assert_array_equal(stats.mean[2:-2, 2:-2], want[2:-2, 2:-2])
        np.testing.assert_array_equal(stats.mean[:2], plain.mean[:2])
        np.testing.assert_array_equal(defect.spread[2:-2, 2:-2], move(defect_aligned.spread, dy, dx)[2:-2, 2:-2])
    again, _, _ = positional.at(_moved_scene(1, -2).astype(np.float32)[None])
    assert again is positional.at(_moved_scene(1, -2).astype(np.float32)[None])[0]
    assert len(positional._moved) == 2


@pytest.fixture(scope="module")
def shaken_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tiled run on 40 frames of a camera that vibrates by up to a pixel."""
    return _tiny_run(tmp_path_factory, "shaken_run", _shaken_frame)


def test_a_vibrating_camera_is_aligned_to_its_scene(shaken_run: Path, tmp_path: Path) -> None:
    """Frames a pixel off: export finds it a fixed camera once aligned (fine stripes make unaligned frames look
    like views of a surface), records the reference and the aligned statistics as checksummed files, and a small
    spot at the bright square's edge (where unaligned statistics have the edge's movement in their spread) stands
    out of normal frames better than without alignment. ``--align-radius 0`` gives the bundle of before."""
    from sklearn.metrics import roc_auc_score

    from edgevae.export import ExportConfig, export_bundle
    from edgevae.runtime.tiles import ALIGNED_DEFECT_FILE, ALIGNED_MAP_FILE, FRAME_REFERENCE_FILE

    said: list[str] = []
    with pytest.warns(CalibrationWarning, match=FEW_CALIBRATION):
        aligned = export_bundle(shaken_run, tmp_path / "aligned", ExportConfig(elbo_samples=4, iwae_samples=16),
                                progress=said.append)
    assert any(line.startswith("camera: fixed (auto: once aligned within 2 px") for line in said), said
    assert any(line.startswith("aligned frames to the scene within 2 px: of ") for line in said), said
    manifest = json.loads((tmp_path / "aligned" / "edgevae.json").read_text())
    entry = manifest["tiling"]["alignment"]
    assert entry["file"] == FRAME_REFERENCE_FILE and entry["shape"] == [1, SIDE, SIDE] and entry["radius"] == 2
    assert entry["map"]["file"] == ALIGNED_MAP_FILE and entry["defect_map"]["file"] == ALIGNED_DEFECT_FILE
    assert {FRAME_REFERENCE_FILE, ALIGNED_MAP_FILE, ALIGNED_DEFECT_FILE} <= set(manifest["files"])
    assert aligned.positional is not None and aligned.positional.alignment is not None
    with pytest.warns(CalibrationWarning, match=FEW_CALIBRATION):
        plain = export_bundle(shaken_run, tmp_path / "plain", ExportConfig(elbo_samples=4, iwae_samples=16,
                                                                           camera="fixed", align_radius=0))
    assert "alignment" not in plain.manifest.raw["tiling"] and plain.positional is not None
    assert plain.positional.alignment is None

    rng = np.random.default_rng(6)
    normals = [_shaken_frame(rng) for _ in range(16)]
    spotted = []
    for _ in range(16):
        frame = _shaken_frame(rng)
        frame[:, 17:20, 20:23] = 0  # a dark spot on the bright square's top edge
        spotted.append(frame)
    labels = [0] * 16 + [1] * 16

    def auroc(model) -> float:  # type: ignore[no-untyped-def]
        return float(roc_auc_score(labels, [model.score_tiled(f, "local").score for f in normals + spotted]))

    assert auroc(aligned) > auroc(plain) + 0.05
    # the anomaly map of an aligned frame: the aligned statistics moved by its shift, in frame coordinates at the border
    frame = spotted[0]
    stats, _, shift = aligned.positional.at(frame)
    assert max(abs(v) for v in shift) <= 2
    from edgevae.runtime.tiles import move, stitch

    magnitude = stitch(frame, aligned.tiling.grid(SIDE, SIDE), aligned.residual_magnitudes)
    al = aligned.positional.alignment
    assert al.stats is not None
    want = (magnitude - move(al.stats.mean, *shift)) / move(al.stats.spread, *shift)
    got = aligned.tiled_maps(frame)["anomaly"]
    np.testing.assert_allclose(got[2:-2, 2:-2], want[2:-2, 2:-2], rtol=1e-4, atol=1e-4)
    border = aligned.positional.stats.standardise(magnitude)
    np.testing.assert_allclose(got[:2], border[:2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[:, -2:], border[:, -2:], rtol=1e-4, atol=1e-4)


def test_align_radius_from_the_cli_and_an_altered_reference_is_refused(shaken_run: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgevae.cli import main
    from edgevae.runtime import load
    from edgevae.runtime.errors import BundleError
    from edgevae.runtime.tiles import FRAME_REFERENCE_FILE, Tiling

    runner = CliRunner()
    result = runner.invoke(main, ["export", str(shaken_run), "-o", str(tmp_path / "b"), "--camera", "fixed",
                                  "--align-radius", "1", "--elbo-samples", "4", "--iwae-samples", "16"])
    assert result.exit_code == 0, result.output
    assert "aligned frames to the scene within 1 px" in result.output
    info = runner.invoke(main, ["info", str(tmp_path / "b")])
    assert info.exit_code == 0 and "a fixed camera, each frame aligned to the scene within 1 px" in info.output
    bad = runner.invoke(main, ["export", str(shaken_run), "-o", str(tmp_path / "c"), "--align-radius", "9"])
    assert bad.exit_code == 2 and "--align-radius" in bad.output
    path = tmp_path / "b" / FRAME_REFERENCE_FILE
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=FRAME_REFERENCE_FILE):
        load(tmp_path / "b")
    raw = json.loads((tmp_path / "b" / "edgevae.json").read_text())["tiling"]
    with pytest.raises(ValueError, match="tiling.alignment must name"):
        Tiling.from_dict({**raw, "alignment": {**raw["alignment"], "radius": 30}})
    with pytest.raises(ValueError, match="belongs to a fixed camera"):
        Tiling.from_dict({"tile": [16, 16], "stride": 8, "alignment": raw["alignment"]})
