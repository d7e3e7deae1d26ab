"""Model shapes, data sources, determinism, checkpoints and resume."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgevae.runtime import IDXFormatError, InputError, read_idx
from edgevae.training import DataSpec, ModelConfig, TrainConfig, load_checkpoint, train
from edgevae.training.data import embedded_split, infer_contract, load_images
from edgevae.training.model import VAE

pytestmark = pytest.mark.training

TINY = ModelConfig(latent_dim=3, widths=(4, 8), hidden=16)


@pytest.mark.parametrize("channels, h, w", [(1, 28, 28), (3, 32, 32), (1, 64, 64), (3, 30, 45)])
def test_model_shapes(channels: int, h: int, w: int) -> None:
    cfg = ModelConfig(channels=channels, height=h, width=w, latent_dim=5, widths=(8, 16, 16), hidden=32)
    model = VAE(cfg)
    x = torch.rand(2, channels, h, w)
    mu, logvar, kl = model.encode(x)
    mean, logits = model.decode(mu)
    assert mu.shape == logvar.shape == (2, 5) and kl.shape == (2,)
    assert mean.shape == logits.shape == x.shape


def test_activation_is_configurable() -> None:
    relu = VAE(ModelConfig(latent_dim=3, widths=(4, 8), hidden=16, activation="relu"))
    assert any(isinstance(layer, torch.nn.ReLU) for layer in relu.modules())
    assert not any(isinstance(layer, torch.nn.SiLU) for layer in relu.modules())
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(activation="tanh")
    mixed = VAE(ModelConfig(latent_dim=3, widths=(4, 8), hidden=16))  # the default: ReLU encoder, SiLU decoder
    assert {type(m) for m in mixed.encoder.modules()} >= {torch.nn.ReLU} and not any(
        isinstance(m, torch.nn.SiLU) for m in mixed.encoder.modules())
    assert any(isinstance(m, torch.nn.SiLU) for m in mixed.decoder.modules()) and not any(
        isinstance(m, torch.nn.ReLU) for m in mixed.decoder.modules())
    all_silu = VAE(ModelConfig(latent_dim=3, widths=(4, 8), hidden=16, encoder_activation="silu"))
    assert not any(isinstance(m, torch.nn.ReLU) for m in all_silu.modules())
    with pytest.raises(ValueError, match="encoder_activation"):
        ModelConfig(encoder_activation="gelu")
    # configs stored before the field existed still load
    old = ModelConfig().to_dict()
    del old["encoder_activation"]
    assert ModelConfig.from_dict(old).encoder_activation is None
    old_model = VAE(ModelConfig.from_dict({**ModelConfig().resolved().to_dict(), "encoder_activation": None}))
    assert not any(isinstance(m, torch.nn.ReLU) for m in old_model.modules())  # stored None: SiLU as before


def test_model_config_validates() -> None:
    with pytest.raises(ValueError, match="likelihood must be one of"):
        ModelConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="latent_dim"):
        ModelConfig(latent_dim=0)
    with pytest.raises(ValueError, match="channels must be 1"):
        ModelConfig(channels=4)
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY


def test_embedded_split_is_fixed_and_disjoint() -> None:
    train_x, train_y = embedded_split("train")
    test_x, test_y = embedded_split("test")
    assert train_x.shape == (4000, 28, 28) and test_x.shape == (1000, 28, 28)
    assert np.bincount(train_y).tolist() == [400] * 10 and np.bincount(test_y).tolist() == [100] * 10
    flat = {row.tobytes() for row in train_x}
    assert sum(row.tobytes() in flat for row in test_x) <= 5  # MNIST holds a few exact duplicates


def test_class_filter() -> None:
    images, labels, _ = load_images(DataSpec(classes=(3,)), infer_contract(DataSpec()))
    assert images.shape == (400, 1, 28, 28) and set(labels.tolist()) == {3}


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_idx_sources(tmp_path: Path) -> None:
    x, y = embedded_split("test")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x[:50], gz=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[:50], gz=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), x[:50])
    spec = DataSpec(source=str(tmp_path / "t10k-images-idx3-ubyte.gz"), classes=(0,))
    images, labels, _ = load_images(spec, infer_contract(spec))
    assert set(labels.tolist()) == {0} and images.shape[0] == 50  # test split is sorted: first 50 are zeros


def test_bad_idx(tmp_path: Path) -> None:
    (tmp_path / "bad-ubyte").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(IDXFormatError, match="magic"):
        read_idx(tmp_path / "bad-ubyte")
    (tmp_path / "short-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(IDXFormatError, match="truncated"):
        read_idx(tmp_path / "short-ubyte")


def test_npz_and_folder_sources(tmp_path: Path) -> None:
    x, y = embedded_split("test")
    np.savez(tmp_path / "d.npz", images=x[:30], labels=y[:30])
    spec = DataSpec(source=str(tmp_path / "d.npz"), classes=(0,))
    images, labels, _ = load_images(spec, infer_contract(spec))
    assert images.shape == (30, 1, 28, 28)
    folder = tmp_path / "imgs" / "nested"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.repeat(x[i][..., None], 3, axis=2)).resize((40, 40)).save(folder / f"{i}.jpg")
    (folder / "broken.png").write_bytes(b"nope")
    spec = DataSpec(source=str(tmp_path / "imgs"))
    contract = infer_contract(spec, channels=1, size=(28, 28))
    images, labels, skipped = load_images(spec, contract)
    assert images.shape == (4, 1, 28, 28) and labels is None
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    with pytest.raises(InputError, match="class filters need labels"):
        load_images(DataSpec(source=str(tmp_path / "imgs"), classes=(1,)), contract)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt").model.state_dict()


def test_training_is_deterministic_and_resume_matches(tmp_path: Path) -> None:
    spec, cfg = DataSpec(classes=(7,)), TrainConfig(epochs=4, batch_size=64, seed=3)
    a = train(spec, tmp_path / "a", TINY, cfg)
    b = train(spec, tmp_path / "b", TINY, cfg)
    for k, v in _weights(tmp_path / "a").items():
        assert torch.equal(v, _weights(tmp_path / "b")[k]), k
    assert a.best_val_neg_elbo == b.best_val_neg_elbo

    # stop after 2 epochs, then resume to 4: same weights as the uninterrupted run
    with pytest.raises(_Stop):
        train(spec, tmp_path / "c", TINY, TrainConfig(epochs=4, batch_size=64, seed=3), progress=_stop_after(2))
    assert load_checkpoint(tmp_path / "c" / "last.pt").epoch == 2
    c = train(spec, tmp_path / "c", resume=True)
    assert c.history[-1]["epoch"] == 4
    for k, v in _weights(tmp_path / "a").items():
        assert torch.allclose(v, _weights(tmp_path / "c")[k], atol=1e-6), k


class _Stop(Exception):
    """Stands in for a crash right after an epoch's checkpoints were written."""


def _stop_after(epochs: int):  # type: ignore[no-untyped-def]
    def progress(event: str, info) -> None:  # type: ignore[no-untyped-def]
        if event == "epoch_end" and info["epoch"] == epochs:
            raise _Stop

    return progress


def test_checkpoint_is_weights_only_and_json_config(tiny_run: Path) -> None:
    raw = torch.load(tiny_run / "best.pt", weights_only=True)
    assert raw["format"] == "edgevae-checkpoint"
    assert json.loads(raw["model_config"])["latent_dim"] == 4
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["best_epoch"] >= 1 and len(metrics["history"]) == 10
    first, last = metrics["history"][0], metrics["history"][-1]
    assert last["val_neg_elbo"] < first["val_neg_elbo"]  # training improves the ELBO


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="--resume"):
        train(DataSpec(), tmp_path / "empty", resume=True)


def test_shift_augmentation_moves_whole_pixels_without_changing_values() -> None:
    from edgevae.training.loop import Augmentation

    def augment(x: torch.Tensor, shift: int, rotate: float, gen: torch.Generator) -> torch.Tensor:
        return Augmentation.draw(x.shape[0], shift, rotate, gen).apply(x)

    x = torch.rand(64, 3, 9, 11)
    out = augment(x, 2, 0.0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    seen = set()
    for img, src in zip(out, x):
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(img, padded[:, 2 - dy:2 - dy + 9, 2 - dx:2 - dx + 11])]
        assert len(matches) == 1, "each image is its source moved by whole pixels, zero filled"
        seen.add(matches[0])
    assert len(seen) > 10  # the offsets vary over the batch
    again = augment(x, 2, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(augment(x, 0, 0.0, torch.Generator()), x)
    rotated = augment(x, 0, 10.0, torch.Generator().manual_seed(1))
    assert rotated.shape == x.shape and not torch.equal(rotated, x)


def test_shift_must_be_whole_pixels() -> None:
    assert TrainConfig(augment_shift=2.0).augment_shift == 2  # stored configs written as floats still load
    with pytest.raises(ValueError, match="whole number of pixels"):
        TrainConfig(augment_shift=1.5)


def test_activation_names_are_the_options_and_old_train_configs_load() -> None:
    from edgevae.runtime import options
    from edgevae.training.loop import TrainConfig
    from edgevae.training.model import ACTIVATIONS

    assert tuple(ACTIVATIONS) == options.ACTIVATIONS
    old = {**TrainConfig().__dict__, "cosine": True}  # checkpoints written before the schedule stopped being optional
    assert TrainConfig.from_dict(old) == TrainConfig()


def test_elbo_terms_is_the_training_and_evaluation_objective(tiny_run: Path) -> None:
    from edgevae.training.loop import evaluate, load_checkpoint
    from edgevae.training.objectives import elbo_terms, log_likelihood

    model = load_checkpoint(tiny_run).model
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        terms = elbo_terms(model, x, torch.Generator().manual_seed(3))
    eps = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mu, logvar, kl = model.encode(x)
        mean, param = model.decode(mu + torch.exp(0.5 * logvar) * eps)
    torch.testing.assert_close(terms.nll, -log_likelihood(x, "bernoulli", mean, param))
    torch.testing.assert_close(terms.loss_sum(0.5), (terms.nll + 0.5 * kl).sum())
    figures = evaluate(model, x, seed=3)
    assert figures["neg_elbo"] == pytest.approx(float((terms.nll + terms.kl).mean()), rel=1e-5)


def test_default_split_holds_out_enough_images_to_calibrate() -> None:
    from edgevae.training.data import auto_val_fraction, split_indices

    held = {n: len(split_indices(n, auto_val_fraction(n), 0)[1]) for n in (100, 200, 400, 600, 1000, 4000, 50_000)}
    assert held == {100: 25, 200: 50, 400: 100, 600: 100, 1000: 100, 4000: 400, 50_000: 5000}
    assert TrainConfig().val_fraction is None and TrainConfig().split_fraction(400) == 0.25
    assert TrainConfig(val_fraction=0.3).split_fraction(400) == 0.3
