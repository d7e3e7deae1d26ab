"""Crash safety with real processes and real signals: SIGKILL during training and during export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgevae.runtime import BundleError, load

pytestmark = [pytest.mark.training, pytest.mark.export, pytest.mark.slow]

# the VAE's checkpoints are what a kill must not break: no defect head (it trains after the last epoch)
TRAIN = [sys.executable, "-m", "edgevae.cli", "train", "--classes", "5", "--latent-dim", "3", "--widths", "4,8",
         "--hidden", "16", "--batch-size", "16", "--no-defect-head"]


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_training_killed_mid_epoch_resumes_and_finishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(TRAIN + ["--epochs", "16", "-o", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: (run / "metrics.json").exists() and
                         json.loads((run / "metrics.json").read_text())["history"][-1]["epoch"] >= 2, 120)
        time.sleep(0.3)  # somewhere inside a later epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    for name in leftovers:  # a temp file may survive a kill; it must never be taken for a checkpoint
        assert not name.endswith(".pt")
    from edgevae.training import load_checkpoint

    done = load_checkpoint(run / "last.pt").epoch
    assert 2 <= done < 16
    resumed = subprocess.run(TRAIN + ["--epochs", "16", "-o", str(run), "--resume"], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 17))
    assert load_checkpoint(run / "last.pt").epoch == 16


def test_export_killed_midway_leaves_nothing_that_loads(tiny_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    for delay in (1.0, 3.0, 5.0):
        proc = subprocess.Popen([sys.executable, "-m", "edgevae.cli", "export", str(tiny_run), "-o", str(target)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():  # the kill came after the final rename: then the bundle must be complete
            load(target)
            return
        for leftover in tmp_path.iterdir():
            with pytest.raises(BundleError):
                load(leftover)
    assert not target.exists()
    assert os.listdir(tmp_path) == [] or all(p.startswith(".bundle.") for p in os.listdir(tmp_path))
