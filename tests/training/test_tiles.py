"""Tiles: the grid and stitching (numpy), training on tiles of mixed-size images, the image-level calibration
on whole held-out images, and scoring large images by tiles through the Python API and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgevae.runtime.errors import ArrayInputError, CalibrationWarning
from edgevae.runtime.tiles import TILE_BATCH, TileGrid, size_adjusted_fpr, size_adjusted_p, stitch, tile_starts

TILE = 16


def test_tile_starts_cover_the_side_and_end_flush() -> None:
    assert tile_starts(64, 16, 8).tolist() == list(range(0, 49, 8))
    assert tile_starts(70, 16, 8).tolist() == [0, 8, 16, 24, 32, 40, 48, 54]  # the last one flush with the edge
    assert tile_starts(16, 16, 8).tolist() == [0]
    with pytest.raises(ArrayInputError, match="shorter than one tile"):
        tile_starts(15, 16, 8)


def test_stitching_the_tiles_themselves_gives_the_image_back() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 70, 53)).astype(np.float32)
    grid = TileGrid(70, 53, (16, 16), 5)
    seen: list[int] = []

    def identity(tiles: np.ndarray) -> np.ndarray:
        seen.append(tiles.shape[0])
        return tiles[:, 0]

    out = stitch(image, grid, identity, batch=7)
    np.testing.assert_allclose(out, image[0], rtol=1e-6)
    assert max(seen) <= 7 and sum(seen) == len(grid)


def test_size_adjustment_is_its_own_inverse_and_neutral_at_the_calibrated_size() -> None:
    assert size_adjusted_p(0.2, 50, 50) == 0.2 and size_adjusted_fpr(0.01, 50, 50) == 0.01
    for n in (10, 50, 400):
        f = size_adjusted_fpr(0.01, n, 50)
        assert size_adjusted_p(f, n, 50) == pytest.approx(0.01)
    assert size_adjusted_p(0.01, 400, 50) > 0.01 > size_adjusted_p(0.01, 10, 50)  # more tiles: more chances


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A stationary grey texture: diagonal stripes of random phase plus noise, uint8 (1, H, W)."""
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 2 * np.pi)
    img = 0.5 + 0.3 * np.sin((x + y) * 0.8 + phase) + rng.normal(0, 0.05, (h, w))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)[None]


@pytest.fixture(scope="module")
def tiled_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tiled run on 40 texture images of mixed sizes, exported with an fp16 variant (edge variants calibrate on their own)."""
    pytest.importorskip("torch")
    from edgevae.export import ExportConfig, export_bundle
    from edgevae.training import DataSpec, ModelConfig, TrainConfig, train

    rng = np.random.default_rng(0)
    images = [_texture(rng, int(rng.integers(32, 56)), int(rng.integers(32, 56))) for _ in range(40)]
    run = tmp_path_factory.mktemp("tiled_run")
    labelled = tmp_path_factory.mktemp("labelled")  # three of the user's own defects: bright 2-px scratches
    for i in range(3):
        img = _texture(rng, 40, 40)[0]
        mask = np.zeros_like(img)
        mask[10 + 5 * i:12 + 5 * i, 4:30] = 255
        img[mask > 0] = 255
        Image.fromarray(img).save(labelled / f"scratch{i}.png")
        Image.fromarray(mask).save(labelled / f"scratch{i}_mask.png")
    events: list[tuple[str, dict]] = []
    train(DataSpec(tile=TILE, tiles_per_epoch=256), run, ModelConfig(latent_dim=4, widths=(8, 16), hidden=32),
          TrainConfig(epochs=4, seed=0, defect_steps=30, labelled_defects=str(labelled)),
          images=images,  # type: ignore[arg-type]
          progress=lambda event, info: events.append((event, dict(info))))
    split = next(info for event, info in events if event == "split")
    assert split["tiles"]["per_epoch"] == 256 and split["n_val"] == 10
    assert next(info for event, info in events if event == "labelled") == {"images": 3, "pixels": 3 * 2 * 26}
    head = next(info for event, info in events if event == "defect_start")  # the console says "training tiles"
    assert head["unit"] == "tiles" and head["resolution"] == "full"
    out = tmp_path_factory.mktemp("tiled_bundles") / "tiled"
    # the tiles of 10 held-out images are the tiles' own calibration: too few to promise 1 %, and export says so
    with pytest.warns(CalibrationWarning, match=r"below what \d+ calibration images can promise"):
        export_bundle(run, out, ExportConfig(elbo_samples=4, iwae_samples=16, variants=("fp16",)))
    return out


def test_a_tiled_bundle_records_its_tiles_and_calibrates_on_whole_images(tiled_bundle: Path) -> None:
    from edgevae.runtime import load
    from edgevae.training.loop import SURFACE_HEAD_TILES

    manifest = json.loads((tiled_bundle / "edgevae.json").read_text())
    tiling = manifest["tiling"]
    assert tiling["tile"] == [TILE, TILE] and tiling["stride"] == TILE // 2 and tiling["positional"] is False
    assert manifest["input"]["height"] == TILE and manifest["training"]["data"]["tile"] == TILE
    cal = tiling["calibration"]
    assert cal["n"] == 10 and set(cal["methods"]) >= {"combined", "smooth_recon", "defect"}
    model = load(tiled_bundle)
    assert "whole held-out images" in model.tiling.note
    head = manifest["scoring"]["defect"]  # a surface's head: hard negatives, visibility against the texture
    assert head["hard_negatives"] > 0 and head["generator"]["relative_visibility"] > 0
    assert "same_image" not in head["generator"]["fills"] and model.spec.defect_window == 1
    assert head["training"]["images"] == SURFACE_HEAD_TILES  # a large pool of distinct tiles
    assert head["labelled_defects"] == 3 and head["generator"]["relative_strength"] == 0
    assert head["upsampling"] == "nearest"  # the map keeps the head's own peaks (TILED_DEFECT_UPSAMPLING)
    assert head["resolution"] == "full"  # a tiled run's default: one logit per pixel at native resolution
    # combined gives its defect part half the false-alarm budget (TILED_DEFECT_SHARE); the VAE's parts share the rest
    parts, weights = manifest["scoring"]["combined"]["parts"], manifest["scoring"]["combined"]["weights"]
    shares = dict(zip(parts, np.array(weights) / sum(weights)))
    assert shares["defect"] == pytest.approx(0.5) and len(set(w for p, w in zip(parts, weights) if p != "defect")) == 1
    assert model.spec.combined_weights == tuple(weights) and model.combination.weights == tuple(weights)


def test_scoring_by_tiles_finds_a_small_defect_anywhere_and_maps_it_at_full_size(tiled_bundle: Path) -> None:
    from edgevae.runtime import load

    model = load(tiled_bundle)
    rng = np.random.default_rng(7)
    normal = _texture(rng, 120, 90)
    broken = normal.copy()
    broken[:, 70:76, 20:26] = 255  # a 6 px defect far from the top-left tile
    a, b = model.score_tiled(normal), model.score_tiled(broken)
    assert a.tiles == b.tiles == len(model.tiling.grid(120, 90))
    assert b.score > a.score and b.p_value < a.p_value
    many = model.score_tiled_many([normal, broken, normal[:, :40, :50]])  # tiles of the three share batches
    np.testing.assert_allclose([r.score for r in many[:2]], [a.score, b.score], rtol=1e-5)
    assert many[2].tiles == len(model.tiling.grid(40, 50))
    maps, before = model.tiled_maps(broken), model.tiled_maps(normal)
    assert maps["anomaly"].shape == maps["defect"].shape == (120, 90)
    change = maps["anomaly"] - before["anomaly"]  # where the defect changed the stitched map most
    y, x = np.unravel_index(np.argmax(change), change.shape)
    assert 62 <= y <= 84 and 12 <= x <= 34
    with pytest.raises(ArrayInputError, match="shorter than one tile"):
        model.score_tiled(normal[:, :10, :])


def test_flags_keep_the_threshold_and_p_value_in_agreement(tiled_bundle: Path) -> None:
    from edgevae.runtime import load

    model = load(tiled_bundle)
    rng = np.random.default_rng(3)
    for h, w in ((40, 40), (200, 160)):
        r = model.score_tiled(_texture(rng, h, w), "smooth_recon")
        assert r.is_outlier == (r.p_value < model.tiling.calibration.fpr) or abs(r.p_value - 0.01) < 1e-3


def test_an_edge_variant_of_a_tiled_bundle_scores_by_tiles_against_its_own_image_calibration(
        tiled_bundle: Path) -> None:
    """The fp16 variant carries its own image-level calibration (measured by tiles with its graphs on the whole
    held-out images), in force when it is loaded; its flags follow its own threshold."""
    from edgevae.runtime import load

    entry = json.loads((tiled_bundle / "edgevae.json").read_text())["variants"]["fp16"]
    assert entry["tiling_calibration"]["n"] == 10 and "this variant" in entry["tiling_calibration"]["source"]
    fp32, fp16 = load(tiled_bundle), load(tiled_bundle, variant="fp16")
    assert fp16.tiling.calibration.methods["combined"].threshold == pytest.approx(
        entry["tiling_calibration"]["methods"]["combined"]["threshold"])
    assert fp16.tiling.calibration.to_dict() != fp32.tiling.calibration.to_dict()
    assert fp16.tiling.tile == fp32.tiling.tile and fp16.tiling.stride == fp32.tiling.stride
    rng = np.random.default_rng(4)
    for h, w in ((48, 40), (120, 96)):
        image = _texture(rng, h, w)
        r, ref = fp16.score_tiled(image), fp32.score_tiled(image)
        assert r.tiles == ref.tiles and r.threshold != ref.threshold  # each read against its own calibration
        assert r.is_outlier == (r.score > r.threshold)


def test_an_untiled_bundle_says_how_to_get_tiles(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="train with --tile"):
        model.score_tiled(np.zeros((1, 64, 64), np.uint8))


def test_cli_scores_images_of_any_size_by_tiles_and_keeps_going_past_a_bad_file(tiled_bundle: Path,
                                                                              tmp_path: Path) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from edgevae.cli import main

    rng = np.random.default_rng(11)
    for name, (h, w) in {"small.png": (32, 40), "large.png": (150, 210)}.items():
        Image.fromarray(_texture(rng, h, w)[0]).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(main, ["score", "-m", str(tiled_bundle), str(tmp_path / "small.png"),
                                       str(tmp_path / "broken.png"), str(tmp_path / "large.png"), "--format", "csv",
                                       "--maps", str(tmp_path / "maps")])
    assert result.exit_code == 2, result.output
    rows = [line.split(",") for line in result.stdout.strip().splitlines()[1:]]
    assert [r[0].rsplit("/", 1)[-1] for r in rows] == ["small.png", "broken.png", "large.png"]
    assert rows[1][5] and not rows[0][5] and float(rows[2][2]) > 0
    panels = sorted((tmp_path / "maps").iterdir())
    assert len(panels) == 2
    with Image.open(panels[-1]) as panel:
        assert 150 <= panel.height <= 152  # full resolution (a 1 px frame)


def test_calibrate_remeasures_a_tiled_bundle_on_whole_images(tiled_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from click.testing import CliRunner
    from PIL import Image

    from edgevae.cli import main
    from edgevae.runtime import load

    bundle = tmp_path / "bundle"
    shutil.copytree(tiled_bundle, bundle)
    rng = np.random.default_rng(5)
    for i in range(12):
        Image.fromarray(_texture(rng, int(rng.integers(40, 90)), int(rng.integers(40, 90)))[0]).save(tmp_path / f"{i}.png")
    (tmp_path / "tiny.png").write_bytes(b"")
    result = CliRunner().invoke(main, ["calibrate", str(bundle), *[str(tmp_path / f"{i}.png") for i in range(12)],
                                       str(tmp_path / "tiny.png")])
    assert result.exit_code == 2, result.output  # the unreadable file is reported; the rest calibrate
    assert "12 whole images" in result.output
    manifest = json.loads((bundle / "edgevae.json").read_text())
    assert manifest["tiling"]["calibration"]["n"] == 12
    assert "tiling" in manifest["calibration_history"][-1]
    variant = manifest["variants"]["fp16"]  # the edge variant is calibrated again too, with its own graphs
    assert variant["tiling_calibration"]["n"] == 12 and "edgevae calibrate" in variant["calibration"]["source"]
    assert load(bundle, variant="fp16").tiling.calibration.n == 12
    model = load(bundle)
    assert model.score_tiled(_texture(rng, 64, 64)).tiles > 0


def test_evaluate_scores_whole_images_of_a_tiled_bundle(tiled_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from edgevae.cli import main

    rng = np.random.default_rng(9)
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    for i in range(6):
        img = _texture(rng, 80, 100)
        Image.fromarray(img[0]).save(tmp_path / "good" / f"{i}.png")
        img[:, 30:40, 50:60] = 255
        Image.fromarray(img[0]).save(tmp_path / "bad" / f"{i}.png")
    result = CliRunner().invoke(main, ["evaluate", "-m", str(tiled_bundle), "--normal", str(tmp_path / "good"),
                                       "--anomalous", str(tmp_path / "bad"), "--method", "smooth_recon",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["n_normal"] == 6 and row["n_anomalous"] == 6 and row["auroc"] > 0.5


def test_batch_scorer_scores_items_of_any_size_by_tiles(tiled_bundle: Path, tmp_path: Path) -> None:
    import io

    from PIL import Image

    from edgevae.runtime import load
    from edgevae.runtime.batch import BatchScorer

    rng = np.random.default_rng(13)
    big = _texture(rng, 130, 70)
    buffer = io.BytesIO()
    Image.fromarray(big[0]).save(buffer, format="PNG")
    path = tmp_path / "big.png"
    path.write_bytes(buffer.getvalue())
    out = BatchScorer(tiled_bundle).score_items([big, buffer.getvalue(), str(path), big[:, :8], "missing.png"])
    expected = load(tiled_bundle).score_tiled(big).score
    np.testing.assert_allclose(out["score"][:3], expected, rtol=1e-6)
    assert list(out["error"][:3]) == [None] * 3
    assert "shorter than one tile" in out["error"][3] and "missing.png" in out["error"][4]


def test_report_of_a_tiled_bundle_shows_whole_images_with_their_stitched_maps(tiled_bundle: Path,
                                                                            tmp_path: Path) -> None:
    import base64
    import io
    import re

    from click.testing import CliRunner
    from PIL import Image

    from edgevae.cli import main

    rng = np.random.default_rng(21)
    normal, odd = tmp_path / "normal", tmp_path / "odd"
    normal.mkdir()
    odd.mkdir()
    for i in range(4):
        Image.fromarray(_texture(rng, 70 + 20 * i, 900 if i == 0 else 90)[0]).save(normal / f"n{i}.png")
        spotted = _texture(rng, 80, 80)
        spotted[:, 30:40, 30:40] = 255  # a bright spot no texture has
        Image.fromarray(spotted[0]).save(odd / f"a{i}.png")
    (odd / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "-m", str(tiled_bundle), "--normal", str(normal),
                                       "--anomalous", str(odd), "-o", str(out), "--method", "smooth_recon"])
    assert result.exit_code == 2, result.output  # the broken file is reported, the rest are in the report
    page = out.read_text()
    assert "scored whole by tiles" in page and "broken.png" in page and "id='evaluation'" in page
    rows = re.findall(r'<tr class="top[^"]*" data-item="([^"]+)" data-score="([^"]+)"', page)
    assert len(rows) == 8
    assert {n.rsplit("/", 1)[-1] for n, _ in rows[:4]} == {f"a{i}.png" for i in range(4)}  # the spots rank first
    wide = re.search(r'data-item="[^"]*n0\.png".*?src="data:image/png;base64,([^"]+)"', page).group(1)
    with Image.open(io.BytesIO(base64.b64decode(wide))) as panel:
        assert panel.width <= 3 * 320 + 8 and panel.height < 70  # 900 px wide: shown shrunk, image | 2 maps
    # score --report writes the same kind of page from the rows it scored, without scoring twice
    again = tmp_path / "again.html"
    result = CliRunner().invoke(main, ["score", "-m", str(tiled_bundle), str(odd / "a0.png"), str(normal / "n1.png"),
                                       "--report", str(again), "--method", "smooth_recon"])
    assert result.exit_code == 0, result.output
    assert "scored whole by tiles" in again.read_text() and again.read_text().count('data-item="') == 2


def test_scoring_a_large_image_reports_its_tiles_as_it_goes(tiled_bundle: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from edgevae import cli
    from edgevae.cli import main
    from edgevae.runtime import read_manifest

    monkeypatch.setattr(cli, "PROGRESS_SECONDS", 0.0)  # a line at every batch of tiles (stderr is not a terminal)
    Image.fromarray(_texture(np.random.default_rng(3), 400, 420)[0]).save(tmp_path / "large.png")
    result = CliRunner().invoke(main, ["score", "-m", str(tiled_bundle), str(tmp_path / "large.png")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "tiles " in line and "of the next image" in line]
    grid = len(read_manifest(tiled_bundle).tiling.grid(400, 420))
    assert len(lines) == -(-grid // 256) - 1 and f"/{grid:,} of the next image" in lines[0]

