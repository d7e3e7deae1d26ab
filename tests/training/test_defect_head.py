"""The synthetic-defect generator, the defect head, its graph in the bundle and its score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgevae.training.defects import FILL_FAMILIES, MASK_FAMILIES, VISIBLE, DefectConfig, synthesize  # noqa: E402


def _texture(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.2 * torch.randn((n, 1, size, size), generator=g)).clamp(0, 1)


def test_the_generator_is_seeded_and_labels_only_changed_pixels() -> None:
    x = _texture()
    a, ta = synthesize(x, torch.Generator().manual_seed(3))
    b, tb = synthesize(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert a.shape == x.shape and ta.shape == (16, 1, 32, 32)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    changed = (a - x).abs().amax(dim=1, keepdim=True) > VISIBLE
    assert bool((ta <= changed.float()).all()), "a target pixel is a pixel the defect changed"
    untouched = ta.flatten(1).sum(1) == 0
    assert torch.equal(a[untouched], x[untouched]), "images without a target are left as they are"
    assert 0 < int(untouched.sum()) < 16, "about half of the images get a defect"


@pytest.mark.parametrize("family", MASK_FAMILIES + FILL_FAMILIES)
def test_every_family_alone_makes_visible_defects(family: str) -> None:
    masks = (family,) if family in MASK_FAMILIES else MASK_FAMILIES
    fills = (family,) if family in FILL_FAMILIES else FILL_FAMILIES
    cfg = DefectConfig(probability=1.0, masks=masks, fills=fills, min_opacity=1.0)
    _, target = synthesize(_texture(32, seed=1), torch.Generator().manual_seed(0), cfg)
    assert int((target.flatten(1).sum(1) > 0).sum()) >= 16, f"{family} made too few visible defects"


def test_small_defects_dominate_and_thin_lines_are_thin() -> None:
    cfg = DefectConfig(probability=1.0, masks=("line",), fills=("flat",), min_opacity=1.0, max_defects=1)
    _, target = synthesize(_texture(64, size=64), torch.Generator().manual_seed(5), cfg)
    areas = target.flatten(1).sum(1)
    assert float(areas.median()) < 0.05 * 64 * 64
    cfg = DefectConfig(probability=1.0, masks=("ellipse", "rectangle", "blob"), fills=("flat",), min_opacity=1.0)
    _, target = synthesize(_texture(64, size=64), torch.Generator().manual_seed(6), cfg)
    assert float(target.flatten(1).sum(1).median()) < 0.1 * 64 * 64


def test_a_line_mask_is_every_pixel_within_reach_of_its_curve_even_where_it_leaves_the_image() -> None:
    """``_line`` measures distances inside the stroke's bounding box only: the mask must be the one measured over
    the whole image (the same draws, in the same order, so that a seed gives the defects it always gave)."""
    from edgevae.training.defects import _Grid, _line, _stroke

    for seed in range(200):
        grid = _Grid(24 + seed % 17, 40 - seed % 13)
        mask = _line(torch.Generator().manual_seed(seed), grid)
        py, px, reach = _stroke(torch.Generator().manual_seed(seed), grid)
        dist = ((grid.y[None] - py) ** 2 + (grid.x[None] - px) ** 2).min(dim=0).values.sqrt()
        assert torch.equal(mask, (dist <= reach).float()), seed


def test_a_family_can_be_left_out_and_unknown_ones_are_refused() -> None:
    cfg = DefectConfig().without("line")
    assert "line" not in cfg.masks and cfg.fills == FILL_FAMILIES
    assert "blur" not in DefectConfig().without("blur").fills
    with pytest.raises(ValueError, match="families"):
        DefectConfig(masks=("stripes",))
    with pytest.raises(ValueError, match="not among"):
        DefectConfig().without("stripes")


def test_surface_defects_must_stand_out_from_the_texture_and_are_never_moved_texture() -> None:
    from edgevae.training.defects import SURFACE_DEFECTS

    assert not {"other_image", "same_image"} & set(SURFACE_DEFECTS.fills) and SURFACE_DEFECTS.relative_visibility > 0
    rough = (0.5 + 0.25 * torch.randn((64, 1, 32, 32), generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    faint = dict(probability=1.0, fills=("brightness", "noise"), min_opacity=0.3, max_defects=1)
    _, every = synthesize(rough, torch.Generator().manual_seed(4), DefectConfig(**faint))
    _, visible = synthesize(rough, torch.Generator().manual_seed(4), DefectConfig(**faint, relative_visibility=1.5))
    kept, all_ = int((visible.flatten(1).sum(1) > 0).sum()), int((every.flatten(1).sum(1) > 0).sum())
    assert 0 < kept < all_, "faint defects on a rough texture are redrawn and given up, not labelled"
    flat = torch.full((16, 1, 32, 32), 0.5)
    a, ta = synthesize(flat, torch.Generator().manual_seed(4), DefectConfig(probability=1.0, relative_visibility=1.5))
    assert int((ta.flatten(1).sum(1) > 0).sum()) >= 12, "on a flat image every visible change stands out"
    assert torch.equal(a[ta.flatten(1).sum(1) == 0], flat[ta.flatten(1).sum(1) == 0])
    with pytest.raises(ValueError, match="relative_visibility"):
        DefectConfig(relative_visibility=-1.0)
    assert DefectConfig(relative_visibility=1.0).without("blur").relative_visibility == 1.0


def test_relative_strength_draws_each_defect_strength_against_the_texture_under_it() -> None:
    from edgevae.training.defects import _local_std

    cfg = DefectConfig(probability=1.0, fills=("brightness", "flat", "colour"), max_defects=1,
                       relative_visibility=1.0, relative_strength=3.0)
    ratios = {}
    for name, spread in (("smooth", 0.03), ("rough", 0.15)):
        x = (0.5 + spread * torch.randn((48, 1, 32, 32), generator=torch.Generator().manual_seed(7))).clamp(0, 1)
        out, target = synthesize(x, torch.Generator().manual_seed(8), cfg)
        std = _local_std(x)
        got = []
        for i in range(48):
            changed = (out[i] - x[i]).abs().amax(dim=0)
            inside = changed > 1e-6
            if bool(inside.any()):
                got.append(float(changed[inside].mean()) / float(std[i][inside].mean()))
        assert len(got) >= 24, f"{name}: most defects are kept"
        ratios[name] = np.array(got)
    for name, r in ratios.items():  # the same spread of strengths relative to the texture on either surface
        assert np.quantile(r, 0.1) > 0.9 and np.quantile(r, 0.9) < 3.3, (name, np.quantile(r, [0.1, 0.9]))
        assert np.quantile(r, 0.9) / np.quantile(r, 0.1) > 1.5, f"{name}: strengths are drawn, not fixed"
    with pytest.raises(ValueError, match="relative_strength"):
        DefectConfig(relative_strength=3.0)  # needs relative_visibility
    with pytest.raises(ValueError, match="relative_strength"):
        DefectConfig(relative_visibility=2.0, relative_strength=1.5)
    from edgevae.training.defect_head import HeadConfig

    stored = HeadConfig(defects=cfg).to_dict()
    assert HeadConfig.from_dict(stored).defects == cfg
    del stored["defects"]["relative_strength"]  # a head stored before the option: absolute strengths
    assert HeadConfig.from_dict(stored).defects.relative_strength == 0


def test_hard_negatives_punish_a_false_peak_the_pixel_mean_hardly_sees() -> None:
    from edgevae.training.defect_head import HeadConfig, defect_loss

    target = torch.zeros((2, 1, 32, 32))
    target[1, 0, 10:14, 10:14] = 1.0
    calm = torch.full((2, 1, 32, 32), -6.0)
    calm[1, 0, 10:14, 10:14] = 6.0
    peaked = calm.clone()
    peaked[0, 0, 20, 20] = 6.0  # one confident false pixel on the normal image
    plain = float(defect_loss(peaked, target)) - float(defect_loss(calm, target))
    hard = float(defect_loss(peaked, target, 16)) - float(defect_loss(calm, target, 16))
    assert hard > 3 * plain > 0
    tiny = torch.zeros_like(target)
    tiny[1, 0, 3, 3] = 1.0  # a defect of fewer pixels than HARD_POSITIVES: finite, no masked fill leaks in
    assert float(defect_loss(calm, tiny, 16)) < 10
    grad = peaked.clone().requires_grad_(True)
    defect_loss(grad, target, 16).backward()
    assert float(grad.grad[0, 0, 20, 20]) > 0, "the false peak is pushed down"
    cfg = HeadConfig(hard_negatives=16, defects=DefectConfig(relative_visibility=1.0))
    again = HeadConfig.from_dict(cfg.to_dict())
    assert again == cfg
    old = cfg.to_dict()
    del old["hard_negatives"], old["defects"]["relative_visibility"]  # a head stored before either existed
    assert HeadConfig.from_dict(old).hard_negatives == 0 and HeadConfig.from_dict(old).defects.relative_visibility == 0
    with pytest.raises(ValueError, match="hard_negatives"):
        HeadConfig(hard_negatives=-1)


def test_the_head_is_fully_convolutional_and_learns_synthetic_defects() -> None:
    from edgevae.training.defect_head import DefectHead, HeadConfig, train_head

    for upsampling in ("transposed", "bilinear"):
        head = DefectHead(3, upsampling=upsampling).eval()
        for shape in ((1, 3, 32, 32), (2, 3, 37, 53), (1, 3, 8, 8), (1, 3, 9, 15)):
            with torch.no_grad():
                assert head(torch.rand(shape)).shape == (shape[0], 1) + shape[2:]
    result = train_head(_texture(64), HeadConfig(channels=1, steps=150, batch_size=16, seed=0))
    assert result.steps == 150 and not result.stopped_early
    cfg = DefectConfig(probability=1.0, masks=("ellipse",), fills=("flat",), min_opacity=1.0)
    x = _texture(64, seed=9)
    xd, target = synthesize(x, torch.Generator().manual_seed(11), cfg)
    with torch.no_grad():
        logits = result.head(xd)
    inside = logits[target > 0].mean()
    outside = logits[target == 0].mean()
    assert float(inside) > float(outside) + 1.0, "after 150 steps the head already separates flat blobs"


def test_a_head_stored_before_the_upsampling_choice_loads_as_bilinear() -> None:
    from edgevae.training.defect_head import DefectHead, HeadConfig

    stored = HeadConfig(channels=3, upsampling="bilinear").to_dict()
    del stored["upsampling"]  # what a head trained before the choice stored
    config = HeadConfig.from_dict(stored)
    assert config.upsampling == "bilinear" and HeadConfig.from_dict(HeadConfig().to_dict()).upsampling == "transposed"
    old = DefectHead(3, config.widths, "bilinear").state_dict()
    DefectHead(config.channels, config.widths, config.upsampling).load_state_dict(old)  # strict: same architecture
    with pytest.raises(RuntimeError):
        DefectHead(3, config.widths, "transposed").load_state_dict(old)
    with pytest.raises(ValueError, match="upsampling must be one of"):
        HeadConfig(upsampling="nearest")


def test_a_nearest_last_step_keeps_the_heads_own_peak_which_bilinear_lowers() -> None:
    from edgevae.training.defect_head import DefectHead

    torch.manual_seed(0)
    head = DefectHead(1).eval()
    nearest = head.with_output("nearest")
    assert head.output == "bilinear" and nearest.output == "nearest" and nearest is not head
    x = torch.rand((2, 1, 37, 50))
    seen: list[torch.Tensor] = []
    nearest.out.register_forward_hook(lambda module, inputs, output: seen.append(output))
    with torch.no_grad():
        smooth, blocks = head(x), nearest(x)
    half = seen[0]  # the head's own logits, at half resolution (19 x 25)
    assert blocks.shape == smooth.shape == (2, 1, 37, 50)
    # every output pixel is one of the head's own logits: the map's largest value is the head's largest logit
    np.testing.assert_allclose(blocks.flatten(1).amax(1).numpy(), half.flatten(1).amax(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(blocks[..., ::2, ::2].numpy(), half.numpy(), rtol=1e-6)
    # a peak one logit wide (a thin scratch): bilinear lowers it, nearest keeps it
    spike = torch.zeros((1, 1, 8, 8))
    spike[..., 4, :] = 4.0
    head.out = torch.nn.Identity()  # the spike stands for the half-resolution logits
    up = torch.nn.functional.interpolate(spike, size=(16, 16), mode="bilinear", align_corners=False)
    assert float(up.amax()) == pytest.approx(3.0)  # 0.75 of the peak, 0.25 of its neighbour
    assert float(torch.nn.functional.interpolate(spike, size=(16, 16), mode="nearest").amax()) == 4.0
    with pytest.raises(ValueError, match="output must be one of"):
        head.with_output("bicubic")


def test_a_full_resolution_head_makes_one_logit_per_pixel_and_exports_alike() -> None:
    """``resolution="full"``: the last convolution sees the input's own grid, the output step has nothing to do,
    and the exported graph (batch normalisations folded) gives the same logits at any size."""
    import onnxruntime as ort

    from edgevae.export import graphs
    from edgevae.training.defect_head import DefectHead, HeadConfig

    torch.manual_seed(0)
    head = DefectHead(3, widths=(8, 8, 8), resolution="full")
    for norm in (m for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)  # statistics a trained head would have
        norm.running_var.uniform_(0.5, 2.0)
    head.eval()
    seen: list[torch.Tensor] = []
    head.out.register_forward_hook(lambda module, inputs, output: seen.append(output))
    for shape in ((1, 3, 32, 32), (2, 3, 37, 53), (1, 3, 8, 8), (1, 3, 9, 15)):
        with torch.no_grad():
            logits = head(torch.rand(shape))
        assert logits.shape == seen[-1].shape == (shape[0], 1) + shape[2:]  # made at full resolution, not upsampled
    x = torch.rand((2, 3, 37, 53))
    with torch.no_grad():
        np.testing.assert_array_equal(head.with_output("nearest")(x).numpy(), head(x).numpy())
    proto = graphs.export_defect_graph(head, np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32), 18)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = head(x).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], want, atol=1e-5)

    stored = HeadConfig(channels=3).to_dict()
    del stored["resolution"]  # what a head trained before the choice stored
    assert HeadConfig.from_dict(stored).resolution == "half"
    assert HeadConfig.from_dict(HeadConfig(resolution="full").to_dict()).resolution == "full"
    with pytest.raises(ValueError, match="resolution must be one of"):
        HeadConfig(resolution="quarter")
    with pytest.raises(ValueError, match="transposed"):
        DefectHead(1, upsampling="bilinear", resolution="full")


def test_a_time_budget_stops_the_head_early() -> None:
    from edgevae.training.defect_head import HeadConfig, train_head

    result = train_head(_texture(16), HeadConfig(channels=1, steps=10_000, batch_size=8, time_budget=0.5))
    assert result.stopped_early and 1 <= result.steps < 10_000


def test_the_command_line_can_train_every_head_step_past_the_time_cap(tmp_path: Path) -> None:
    """``train --no-defect-time-cap``: the head runs all of ``--defect-steps`` although the VAE (one epoch of 40
    small images) takes a fraction of the time; the run records the choice."""
    from click.testing import CliRunner

    from edgevae.cli import main
    from edgevae.training.defect_head import TIME_CAP_FACTORS, load_head

    data = tmp_path / "tiles.npy"
    np.save(data, (_texture(40).numpy()[:, 0] * 255).round().astype(np.uint8))
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "-o", str(run), "--epochs", "1", "--latent-dim",
                                       "2", "--widths", "4,8", "--hidden", "8", "--defect-steps", "200",
                                       "--no-defect-time-cap", "--defect-widths", "8,12,20",
                                       "--defect-resolution", "full"])
    assert result.exit_code == 0, result.output
    assert "synthetic defects made from 30 training images at full resolution" in result.stderr  # not tiles: untiled
    head = load_head(run)
    assert head is not None and head.summary["steps"] == 200 and head.summary["stopped_early"] is False
    # --defect-widths and --defect-resolution built this head: 8 channels at half resolution, 4 at full
    assert head.config.widths == (8, 12, 20) and head.head.halves[0][0].out_channels == 8
    assert head.config.resolution == head.head.resolution == "full" and head.head.out.in_channels == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_config"]["defect_time_cap"] is False and metrics["train_config"]["defect_widths"] == [8, 12, 20]
    assert metrics["train_config"]["defect_resolution"] == "full"
    # longer than a full-resolution head's cap (TIME_CAP_FACTORS times the VAE's time) would have allowed
    assert head.summary["seconds"] > TIME_CAP_FACTORS["full"] * metrics["history"][-1]["seconds"]


def test_train_writes_a_head_and_a_fresh_run_drops_a_stale_one(tmp_path: Path) -> None:
    from edgevae.training import DataSpec, ModelConfig, TrainConfig, train

    cfg = ModelConfig(latent_dim=2, widths=(8,), hidden=16)
    images = (np.random.default_rng(0).random((80, 1, 16, 16)) * 255).astype(np.uint8)
    result = train(DataSpec(source="<array>"), tmp_path, cfg, TrainConfig(epochs=1), images=images)
    assert result.defect_head == tmp_path / "defect.pt" and result.defect_head.exists()
    assert result.defect_seconds <= result.seconds
    result = train(DataSpec(source="<array>"), tmp_path, cfg, TrainConfig(epochs=1, defect_head=False), images=images)
    assert result.defect_head is None and not (tmp_path / "defect.pt").exists()


def test_the_defect_score_is_the_largest_window_mean() -> None:
    from edgevae.runtime.maps import defect_score
    from edgevae.training.objectives import defect_score as torch_defect_score

    z = np.random.default_rng(1).standard_normal((3, 1, 11, 17)).astype(np.float32)
    for window in (1, 3, 5, 11, 40):
        kh, kw = min(window, 11), min(window, 17)
        brute = [max(z[i, 0, y:y + kh, x:x + kw].astype(np.float64).mean() for y in range(12 - kh) for x in range(18 - kw))
                 for i in range(3)]
        np.testing.assert_allclose(defect_score(z, window), brute, rtol=1e-6)
        np.testing.assert_allclose(torch_defect_score(torch.from_numpy(z), window).numpy(), brute, rtol=1e-6)


def test_the_bundle_ships_the_head_as_a_checked_third_graph(model, bundle: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((bundle / "edgevae.json").read_text())
    assert model.has_defect_head and "defect.onnx" in manifest["files"]
    assert manifest["scoring"]["defect"]["file"] == "defect.onnx"
    assert manifest["graphs"]["defect"]["inputs"]["x"] == ["N", 1, "H", "W"]
    assert any(k.startswith("defect.defect_logits") for k in manifest["parity"]["max_abs_diff"])
    assert "defect" in manifest["parity"]["score_max_rel_diff"]
    assert "defect" in manifest["scoring"]["combined"]["parts"] and "defect" in model.manifest.calibration
    assert manifest["scoring"]["method_specs"]["defect"] == {
        "kind": "defect", "graphs": ["defect"], "samples": 0, "noise": None, "map": False, "importance": False,
        "negate": False, "window": 5}
    assert manifest["scoring"]["defect"]["upsampling"] == "bilinear"  # untiled bundles: the smooth map, as before
    assert manifest["scoring"]["defect"]["resolution"] == "half"
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    probabilities = model.defect_map(x)
    assert probabilities.shape == (4, 28, 28) and 0.0 <= probabilities.min() and probabilities.max() <= 1.0
    from edgevae.runtime.maps import defect_score

    np.testing.assert_allclose(model.raw_scores(x, "defect"), defect_score(model.defect_logits(x), 5), rtol=1e-6)


def test_a_bundle_without_the_head_scores_as_before(tiny_run: Path, tmp_path: Path) -> None:
    from edgevae.export import ExportConfig, export_bundle
    from edgevae.runtime import load
    from edgevae.runtime.options import COMBINED_PARTS

    out = tmp_path / "no_head"
    export_bundle(tiny_run, out, ExportConfig(elbo_samples=4, iwae_samples=8, defect_head=False)).close()
    manifest = json.loads((out / "edgevae.json").read_text())
    assert "defect.onnx" not in manifest["files"] and "defect" not in manifest["scoring"]
    assert manifest["scoring"]["combined"]["parts"] == [p for p in COMBINED_PARTS if p != "defect"]
    with load(out) as model:
        assert not model.has_defect_head and "defect" not in model.computable_methods
        x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
        assert np.isfinite(model.score(x).scores).all()
        with pytest.raises(ValueError, match="no defect head"):
            model.defect_map(x)
    with pytest.raises(Exception, match="defect head"):
        export_bundle(tiny_run, tmp_path / "asked", ExportConfig(defect_head=False, default_method="defect"))


def test_a_head_trains_alike_on_uint8_tiles_and_their_float_values() -> None:
    """A tiled run keeps its large pool of head tiles as uint8: a batch is converted as the runtime converts
    pixels, so the head is exactly the one the float images would have given."""
    from edgevae.runtime.contract import uint8_to_unit
    from edgevae.training.defect_head import HeadConfig, train_head

    pixels = np.rint(_texture(24).numpy() * 255).astype(np.uint8)
    cfg = HeadConfig(channels=1, steps=12, batch_size=8, seed=3)
    as_uint8 = train_head(torch.from_numpy(pixels), cfg)
    as_float = train_head(torch.from_numpy(uint8_to_unit(pixels)), cfg)
    assert as_uint8.images == as_float.images == 24
    assert as_uint8.final_loss == as_float.final_loss
    for name, value in as_float.head.state_dict().items():
        assert torch.equal(as_uint8.head.state_dict()[name], value), name


def test_defect_widths_and_resolution_are_checked_before_training(tmp_path: Path) -> None:
    """A wrong ``--defect-widths`` or ``--defect-resolution`` is a usage error naming the option, before any image
    is read."""
    from click.testing import CliRunner

    from edgevae.cli import main
    from edgevae.training import TrainConfig

    with pytest.raises(ValueError, match="defect_widths must be three whole numbers"):
        TrainConfig(defect_widths=(16, 32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="defect_widths"):
        TrainConfig(defect_widths=(16, 32, 0))
    assert TrainConfig.from_dict({"defect_widths": [24, 48, 96]}).defect_widths == (24, 48, 96)
    data = tmp_path / "tiles.npy"
    np.save(data, np.zeros((40, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="defect_resolution must be one of half, full"):
        TrainConfig(defect_resolution="quarter")
    for option, bad, said in (("--defect-widths", "24,48", "three whole numbers"),
                              ("--defect-widths", "a,b,c", "--defect-widths"),
                              ("--defect-resolution", "quarter", "--defect-resolution"),
                              ("--defect-heads", "0", "--defect-heads"), ("--defect-heads", "9", "--defect-heads")):
        result = CliRunner().invoke(main, ["train", "--data", str(data), "-o", str(tmp_path / "r"), option, bad])
        assert result.exit_code != 0 and said in result.output, result.output
        assert not (tmp_path / "r" / "last.pt").exists()
    with pytest.raises(ValueError, match="defect_heads must be in 1..8"):
        TrainConfig(defect_heads=0)
    np.save(data, (_texture(40).numpy()[:, 0] * 255).round().astype(np.uint8))
    result = CliRunner().invoke(main, ["train", "--data", str(data), "-o", str(tmp_path / "two"), "--epochs", "1",
                                       "--latent-dim", "2", "--widths", "4,8", "--hidden", "8", "--defect-steps", "5",
                                       "--defect-widths", "4,4,4", "--defect-heads", "2", "--no-defect-time-cap"])
    assert result.exit_code == 0, result.output
    assert "2 defect heads (their logits averaged): 5 steps each on synthetic defects" in result.stderr
    assert "defect head: 10 steps in" in result.stderr
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["train_config"]["defect_heads"] == 2


def test_several_heads_train_from_successive_seeds_and_ship_as_their_mean(tiny_run: Path, tmp_path: Path) -> None:
    """``members=2`` (``train --defect-heads 2``): two heads from seeds s and s + 1, each what a single head of
    that seed is; the ensemble's logits are their mean, it is stored and loaded whole, and export ships it as one
    checked graph whose manifest says how many heads it averages."""
    import shutil

    from edgevae.export import ExportConfig, export_bundle
    from edgevae.runtime import load
    from edgevae.training.defect_head import HeadConfig, HeadEnsemble, load_head, save_head, train_head

    images = _texture(32)
    events: list[tuple[str, dict]] = []
    config = HeadConfig(channels=1, widths=(8, 8, 8), steps=20, batch_size=8, seed=3)
    result = train_head(images, replace_members(config, 2), progress=lambda e, i: events.append((e, dict(i))))
    assert isinstance(result.head, HeadEnsemble) and len(result.head.members) == 2 and result.steps == 20
    assert events[0] == ("defect_start", {"steps": 40, "images": 32, "budget": None, "resolution": "half",
                                          "members": 2})
    steps = [i["step"] for e, i in events if e == "defect_step"]
    assert steps == sorted(steps) and steps[-1] == 40 and events[-1][1]["steps"] == 40
    x = _texture(2, size=24, seed=5)
    heads = [train_head(images, replace_members(config, 1, seed=s)).head for s in (3, 4)]
    with torch.no_grad():
        singles = [h(x) for h in heads]
        np.testing.assert_allclose(result.head.members[0](x).numpy(), singles[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(result.head.members[1](x).numpy(), singles[1].numpy(), atol=1e-5)
        np.testing.assert_allclose(result.head(x).numpy(), ((singles[0] + singles[1]) / 2).numpy(), atol=1e-5)

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    digits = (np.load(Path(__file__).parents[2] / "training/embedded/mnist_5k.npz")["images"][:68] / 255.0)
    head = train_head(torch.from_numpy(digits[:64, None].astype(np.float32)),
                      replace_members(config, 2, widths=(8, 16, 16)))
    save_head(head, run)
    loaded = load_head(run)
    assert loaded is not None and isinstance(loaded.head, HeadEnsemble) and loaded.config.members == 2
    bundle = tmp_path / "bundle"
    export_bundle(run, bundle, ExportConfig(elbo_samples=8, iwae_samples=16))
    model = load(bundle, ["CPUExecutionProvider"])
    assert model.manifest.raw["scoring"]["defect"]["members"] == 2
    from click.testing import CliRunner

    from edgevae.cli import main

    said = CliRunner().invoke(main, ["info", str(bundle)])
    assert said.exit_code == 0 and "the mean of 2 heads from successive seeds, each trained 20 steps" in said.output
    assert "bilinear from half resolution" in said.output
    xs = digits[64:68, None].astype(np.float32)
    with torch.no_grad():
        want = head.head(torch.from_numpy(xs)).numpy()[:, 0]
    np.testing.assert_allclose(model.defect_logits(xs), want, atol=1e-4)
    with pytest.raises(ValueError, match="members must be in 1..8"):
        HeadConfig(members=0)


def replace_members(config, members: int, **changes):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(config, members=members, **changes)
