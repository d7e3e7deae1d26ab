"""Distributed training: torchrun with 2 CPU processes (gloo) against one process on the same data and seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgevae.training.data import DataSpec, embedded_split  # noqa: E402
from edgevae.training.loop import TrainConfig, evaluate, load_checkpoint, run_holdout, train  # noqa: E402
from edgevae.training.model import ModelConfig  # noqa: E402

pytestmark = [pytest.mark.scale, pytest.mark.training, pytest.mark.slow]

# 401 images, a quarter held out: 301 training images in global batches of 60, so the last batch holds one
# image and the second process has none in that step (the padding the sampler adds must not count).
N_IMAGES, VAL_FRACTION, BATCH = 401, 0.25, 60
SMALL = ["--latent-dim", "4", "--widths", "8,16", "--hidden", "32"]
# Weights after DDP and after one process differ by summation order only; measured: 3e-7 after 2 epochs.
WEIGHT_TOLERANCE = 1e-4


def _torchrun(data: Path, out: Path, epochs: int, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "edgevae",
           "train", "--data", str(data), "--val-fraction", str(VAL_FRACTION), "--batch-size", str(BATCH),
           "--epochs", str(epochs), "-o", str(out), *SMALL, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _single(data: Path, out: Path, epochs: int) -> Path:
    train(DataSpec(source=str(data)), out, ModelConfig(latent_dim=4, widths=(8, 16), hidden=32),
          TrainConfig(epochs=epochs, batch_size=BATCH, val_fraction=VAL_FRACTION))
    return out


def _max_weight_diff(a: Path, b: Path) -> float:
    sa, sb = load_checkpoint(a).model.state_dict(), load_checkpoint(b).model.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, _ = embedded_split("train")
    path = tmp_path_factory.mktemp("ddp_data") / "digits.npy"
    np.save(path, images[:N_IMAGES])
    return path


@pytest.fixture(scope="module")
def ddp_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    code, stdout, stderr = _finish(_torchrun(data, out, 2))
    assert code == 0, stderr[-3000:]
    assert "on 2 processes" in stderr
    assert stdout.count("best validation negative ELBO") == 1  # rank 0 reports, the other rank is silent
    return out


def test_ddp_checkpoint_is_an_ordinary_checkpoint_and_exports(ddp_run: Path, tmp_path: Path) -> None:
    ck = load_checkpoint(ddp_run / "best.pt")
    assert ck.raw["n_train"] == 301 and ck.epoch == 2
    assert [r["epoch"] for r in json.loads((ddp_run / "metrics.json").read_text())["history"]] == [1, 2]
    result = subprocess.run([sys.executable, "-m", "edgevae", "export", str(ddp_run), "-o", str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from edgevae.runtime import load

    images, _ = embedded_split("test")
    scored = load(tmp_path / "b").score(images[:20])
    assert np.isfinite(scored.scores).all()


def test_ddp_validation_elbo_equals_a_one_process_recomputation(ddp_run: Path) -> None:
    ck = load_checkpoint(ddp_run / "best.pt")
    x_val = torch.from_numpy(ck.model_config.contract.prepare(run_holdout(ck).calibration))
    assert x_val.shape[0] == 100
    again = evaluate(ck.model, x_val, seed=ck.train_config.seed)["neg_elbo"]
    assert abs(again - ck.best_val_neg_elbo) < 1e-4


def test_ddp_weights_match_one_process_with_the_same_seed_and_global_batch(
        ddp_run: Path, data: Path, tmp_path: Path) -> None:
    single = _single(data, tmp_path / "single", 2)
    assert _max_weight_diff(ddp_run / "last.pt", single / "last.pt") < WEIGHT_TOLERANCE
    a = json.loads((ddp_run / "metrics.json").read_text())["history"]
    b = json.loads((single / "metrics.json").read_text())["history"]
    for key in ("train_loss", "val_neg_elbo", "val_kl"):
        assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-5)


def test_ddp_resumes_after_being_killed_mid_epoch(data: Path, tmp_path: Path) -> None:
    out, epochs = tmp_path / "run", 12
    proc = _torchrun(data, out, epochs)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.json").exists() and json.loads((out / "metrics.json").read_text())["history"]:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    time.sleep(0.15)  # into the next epoch
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both processes, mid-epoch, without warning
    proc.wait(timeout=30)
    done = json.loads((out / "metrics.json").read_text())["history"]
    assert 1 <= len(done) < epochs
    load_checkpoint(out / "last.pt")  # what the kill left loads (atomic writes)

    code, _, stderr = _finish(_torchrun(data, out, epochs, "--resume"))
    assert code == 0, stderr[-3000:]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert history[:len(done)] == done
    # resuming replays the interrupted epoch exactly: the result is the uninterrupted single-process run's
    single = _single(data, tmp_path / "single", epochs)
    assert _max_weight_diff(out / "last.pt", single / "last.pt") < WEIGHT_TOLERANCE


def test_a_process_that_dies_ends_the_job_with_an_error_not_a_hang(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _torchrun(data, out, 200)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (out / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    victim = _worker_with_rank(proc.pid, 1)
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    code, _, stderr = _finish(proc, timeout=120)
    assert code != 0
    assert time.monotonic() - started < 60
    assert "rank      : 1" in stderr and "SIGKILL" in stderr  # torchrun names the process that failed first


def _worker_with_rank(parent: int, rank: int) -> int:
    """The pid of the process torchrun started with RANK=rank (Linux /proc)."""
    for _ in range(100):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no process with RANK={rank} under {parent}")
