"""A fixed camera by tiles: frames of one scene larger than the model, the map statistics per position of the
frame (``tiling.positional``), chosen from the data or by ``--camera``, through export, scoring, maps,
``edgevae calibrate`` and ``info``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgevae.runtime.errors import ArrayInputError
from edgevae.runtime.tiles import frame_alignment

TILE = 16
SIDE = 48


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


@pytest.fixture(scope="module")
def camera_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tiled run on 40 frames of one fixed scene."""
    pytest.importorskip("torch")
    from edgevae.training import DataSpec, ModelConfig, TrainConfig, train

    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp("camera_run")
    train(DataSpec(tile=TILE, tiles_per_epoch=256), run, ModelConfig(latent_dim=4, widths=(8, 16), hidden=32),
          TrainConfig(epochs=4, seed=0, defect_steps=30), images=[_frame(rng) for _ in range(40)])  # type: ignore[arg-type]
    return run


@pytest.fixture(scope="module")
def camera_bundle(camera_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgevae.export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("camera_bundles") / "fixed"
    said: list[str] = []
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

    surface = export_bundle(camera_run, tmp_path / "surface", ExportConfig(elbo_samples=4, iwae_samples=16,
                                                                           camera="surface"))
    assert surface.tiling.positional is False and surface.positional is None
    assert "references" not in surface.manifest.raw["tiling"]
    with pytest.raises(ValueError, match="camera must be one of"):
        ExportConfig(camera="tripod")
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
