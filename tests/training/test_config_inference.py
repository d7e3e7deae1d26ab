"""The architecture rule, model configs that come from the data, messy training folders, and the plain
autoencoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgevae.runtime import options

pytestmark = pytest.mark.training
torch = pytest.importorskip("torch")

from edgevae.training import DataSpec, ModelConfig, TrainConfig, train  # noqa: E402
from edgevae.training.model import VAE, architecture_for  # noqa: E402


def test_rule_gives_the_digits_architecture_and_a_small_bottleneck_for_larger_images() -> None:
    assert architecture_for(1, 28, 28) == {"widths": options.WIDTHS, "latent_dim": options.LATENT_DIM,
                                           "hidden": options.HIDDEN}
    for c, h, w in ((3, 64, 64), (3, 128, 96), (3, 256, 256), (1, 500, 40)):
        cfg = ModelConfig(channels=c, height=h, width=w).resolved()
        bottleneck = cfg.feature_sizes()[-1]
        assert max(bottleneck) <= options.BOTTLENECK_MAX or len(cfg.widths) == 6, (c, h, w, bottleneck)
    rgb64 = VAE(ModelConfig(channels=3, height=64, width=64))
    digits = VAE(ModelConfig())
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert size(rgb64) < 1.5 * size(digits)  # the 64x64 RGB model is not larger than the digits model's order


def test_fields_set_by_the_user_win_over_the_rule() -> None:
    cfg = ModelConfig(latent_dim=7, widths=(8, 16)).resolved()
    assert (cfg.latent_dim, cfg.widths, cfg.hidden) == (7, (8, 16), options.HIDDEN)
    with pytest.raises(ValueError, match="leaves channels, height, width.*resolved"):
        _ = ModelConfig(latent_dim=7).contract


def _rgb_folder(folder: Path, n: int, size: int = 32, gray: int = 0, broken: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((size, size, 3)) * 80 + np.linspace(0, 150, size)[None, :, None]).astype(np.uint8)
        if i < gray:
            Image.fromarray(img[..., 0]).save(folder / f"a{i:03d}.png")  # sorts first: the old code took its mode
        else:
            Image.fromarray(img).save(folder / f"b{i:03d}.png")
    for i in range(broken):
        (folder / f"c{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_api_config_comes_from_the_data_unless_set(tmp_path: Path) -> None:
    folder = _rgb_folder(tmp_path / "imgs", 40, gray=3, broken=2)
    events: list[tuple[str, dict]] = []
    result = train(DataSpec(str(folder)), tmp_path / "run", ModelConfig(latent_dim=4),
                   TrainConfig(epochs=1, batch_size=16), progress=lambda e, info: events.append((e, info)))
    cfg = json.loads((result.run_dir / "metrics.json").read_text())["model_config"]
    assert (cfg["channels"], cfg["height"], cfg["width"], cfg["latent_dim"]) == (3, 32, 32, 4)
    model_events = [info for e, info in events if e == "model"]
    assert model_events and "40 image files" in model_events[0]["source"]
    assert "3 grayscale files are converted to colour" in model_events[0]["source"]
    assert "2 unreadable files are skipped" in model_events[0]["source"]
    assert model_events[0]["from_rule"] == ["widths", "hidden"]
    skipped = [info["item"] for e, info in events if e == "skipped"]
    assert len(skipped) == 2 and all("c0.png" in s or "c1.png" in s for s in skipped)


def test_cli_says_what_it_inferred(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgevae.cli import main

    folder = _rgb_folder(tmp_path / "imgs", 30, broken=1)
    result = CliRunner().invoke(main, ["train", "--data", str(folder), "-o", str(tmp_path / "run"), "--epochs", "1",
                                       "--latent-dim", "4"])
    assert result.exit_code == 0, result.output
    assert "input: 3x32x32 from the headers of 30 image files" in result.output
    assert "model: 3x32x32, stages 32,64,128" in result.output and "by the architecture rule: widths, hidden" in result.output
    assert "skipped:" in result.output and "c0.png" in result.output


def test_plain_autoencoder_trains_exports_and_has_no_sampling(tmp_path: Path) -> None:
    from edgevae.export import ExportConfig, export_bundle
    from edgevae.training.model import PLAIN_LOGVAR

    run = tmp_path / "run"
    train(DataSpec(classes=(1,)), run, ModelConfig(latent_dim=4, widths=(8, 16), hidden=32, variational=False),
          TrainConfig(epochs=2, batch_size=64))
    bundle = export_bundle(run, tmp_path / "bundle", ExportConfig(elbo_samples=4, iwae_samples=8))
    posterior = bundle.encode(np.zeros((3, 28, 28), np.uint8))
    np.testing.assert_allclose(posterior.logvar, PLAIN_LOGVAR)
    assert bundle.manifest.raw["model"]["variational"] is False
    assert np.isfinite(bundle.raw_scores(np.zeros((3, 28, 28), np.uint8), "combined")).all()
