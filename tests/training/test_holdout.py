"""Runs export on their own: the run folder keeps its held-out images; export never reads the training source."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.training, pytest.mark.export, pytest.mark.slow]

SMALL = {"latent_dim": 2, "widths": (4, 8), "hidden": 8}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run trained on a folder of PNG files: (run folder, image folder)."""
    from PIL import Image

    from edgevae.training import DataSpec, ModelConfig, TrainConfig, train
    from edgevae.training.data import embedded_split

    root = tmp_path_factory.mktemp("holdout")
    images, labels = embedded_split("train")
    data = root / "imgs"
    data.mkdir()
    for i, image in enumerate(images[labels == 1][:120]):
        Image.fromarray(image).save(data / f"{i:03d}.png")
    run = root / "run"
    train(DataSpec(source=str(data)), run, ModelConfig(**SMALL), TrainConfig(epochs=1, seed=0))
    return run, data


def test_a_run_exports_after_its_data_is_gone(folder_run: tuple[Path, Path], tmp_path: Path) -> None:
    from edgevae.cli import main
    from edgevae.training import Holdout

    run, data = folder_run
    kept = Holdout.read(run)
    assert kept is not None and kept.calibration.dtype == np.uint8 and kept.calibration.shape[0] >= 10
    moved = tmp_path / "elsewhere"
    shutil.move(str(data), moved)
    try:
        r = CliRunner().invoke(main, ["export", str(run), "-o", str(tmp_path / "bundle")])
        assert r.exit_code == 0, r.output
        assert (tmp_path / "bundle" / "edgevae.json").exists()
    finally:
        shutil.move(str(moved), data)


def test_a_run_without_kept_images_says_why_it_cannot_export(folder_run: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    from edgevae.cli import main

    run, data = folder_run
    old_style = tmp_path / "old_run"
    shutil.copytree(run, old_style)
    (old_style / "holdout.npz").unlink()  # a run from before runs kept their held-out images
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    runner = CliRunner()
    moved = tmp_path / "moved"
    shutil.move(str(data), moved)
    try:
        r = runner.invoke(main, ["export", str(old_style), "-o", str(tmp_path / "b1")])
        assert r.exit_code == 1 and "keeps no held-out images" in r.output and "cannot be read" in r.output, r.output
        shutil.copytree(changed, data)
        Image.fromarray(np.full((28, 28), 255, np.uint8)).save(data / "000.png")  # one image altered
        r = runner.invoke(main, ["export", str(old_style), "-o", str(tmp_path / "b2")])
        assert r.exit_code == 1 and "changed since" in r.output, r.output
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.move(str(moved), data)
    r = runner.invoke(main, ["export", str(old_style), "-o", str(tmp_path / "b3")])  # the same data again: fine
    assert r.exit_code == 0, r.output


def test_training_from_an_array_writes_no_copy_and_exports(tmp_path: Path) -> None:
    from edgevae.export import export_bundle
    from edgevae.training import IN_MEMORY, DataSpec, ModelConfig, TrainConfig, load_checkpoint, train
    from edgevae.training.data import embedded_split

    images, labels = embedded_split("train")
    run = tmp_path / "run"
    result = train(DataSpec(source=IN_MEMORY), run, ModelConfig(**SMALL), TrainConfig(epochs=1, seed=0),
                   images=images[labels == 2][:150])
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "defect.pt", "holdout.npz", "last.pt", "metrics.json"]
    assert load_checkpoint(result.best_checkpoint).data.source == IN_MEMORY
    model = export_bundle(run, tmp_path / "bundle")
    assert model.manifest.calibration_n == holdout_n(run)
    model.close()


def holdout_n(run: Path) -> int:
    from edgevae.training import Holdout

    kept = Holdout.read(run)
    assert kept is not None
    return int(kept.calibration.shape[0])


def test_the_estimator_trains_from_its_array_without_a_file(tmp_path: Path) -> None:
    from edgevae import OutlierVAE
    from edgevae.training.data import embedded_split

    images, labels = embedded_split("train")
    detector = OutlierVAE(epochs=1, latent_dim=2, work_dir=tmp_path).fit(images[labels == 3][:150])
    assert not list(tmp_path.rglob("*.npy"))  # no copy of the training array on disk
    assert detector.predict(images[:5]).shape == (5,)
