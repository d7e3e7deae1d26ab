"""The runner's thread plan and pool, numpy calibration and AUROC, atomic folders, and the options module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgevae.runtime import options
from edgevae.runtime import CalibrationError, load, thread_plan
from edgevae.runtime.atomic import atomic_folder, atomic_open
from edgevae.runtime.calibration import auroc, calibrate

pytestmark = pytest.mark.runtime


def test_thread_plan_leaves_cores_for_decoding(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    array = tmp_path / "x.npy"
    np.save(array, np.zeros((2, 28, 28), np.uint8))
    assert thread_plan([str(array)], "kl") == thread_plan([str(array)], "kl", decode_threads=3)
    assert thread_plan([str(array)], "kl").threads is None  # arrays need no decoding: onnxruntime's default
    images = thread_plan([str(tmp_path)], "kl", decode_threads=1)
    assert images.threads == max(1, cores - 1) and images.slice_workers is None
    assert thread_plan([str(tmp_path)], "smooth_recon").slice_workers == cores  # the decoder methods slice wider
    assert thread_plan([str(tmp_path)], "elbo", threads=3).threads == 3  # an explicit choice is kept as it is


def test_model_closes_its_pool_and_still_runs(bundle: Path, test_digits) -> None:  # type: ignore[no-untyped-def]
    x = test_digits[0][:128]
    with load(bundle, ["CPUExecutionProvider"], slice_workers=2) as model:
        before = model.raw_scores(x, "recon")
    assert model.runner._pool is None  # closed by the with block
    np.testing.assert_array_equal(model.raw_scores(x, "recon"), before)  # a new pool on demand
    model.close()


def test_calibrate_gives_every_method_and_refuses_too_few(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    x = test_digits[0][:60]
    cal = calibrate(model, x, 0.05, methods=("kl", "recon"))
    assert set(cal) == {"kl", "recon"}
    scores = np.asarray(cal["recon"]["scores"])
    assert scores.size == 60 and np.all(np.diff(scores) >= 0)
    assert (scores > cal["recon"]["threshold"]).mean() <= 0.05
    with pytest.raises(CalibrationError, match="at least 10"):
        calibrate(model, x[:5], 0.05)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=60))
def test_auroc_matches_scikit_learn_with_ties(pairs: list[tuple[bool, int]]) -> None:
    from sklearn.metrics import roc_auc_score

    labels = np.array([p[0] for p in pairs], dtype=int)
    scores = np.array([p[1] for p in pairs], dtype=float)  # few distinct values: many ties
    if labels.min() == labels.max():
        with pytest.raises(ValueError, match="both classes"):
            auroc(labels, scores)
        return
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_atomic_folder_leaves_nothing_on_failure_and_swaps_on_replace(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(FileExistsError, match="already exists"), atomic_folder(target):
        pass
    with atomic_folder(target, replace=True) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary or old folder left


def test_atomic_open_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("new, half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_options_module_needs_no_numpy_and_names_each_choice_once() -> None:
    code = ("import sys, edgevae.runtime.options, edgevae.cli; "
            "assert 'numpy' not in sys.modules and 'onnxruntime' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert options.samples_for("elbo", 3, 7) == 3 and options.samples_for("iwae", 3, 7) == 7
    assert options.samples_for("too_likely", 3, 7) == 3
    assert [options.samples_for(m, 3, 7) for m in options.SCORE_METHODS if m not in options.MONTE_CARLO_METHODS] == [0] * 7
    with pytest.raises(ValueError, match="unknown score method"):
        options.samples_for("nope", 1, 1)
    assert set(options.VARIANTS) == set(options.QUANTIZE_VARIANTS) | set(options.PRECISION_VARIANTS)


def test_atomic_files_get_ordinary_permissions(tmp_path: Path) -> None:
    import stat

    from edgevae.runtime.atomic import write_atomic

    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "out.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode) & 0o044 == 0o044  # readable by others, not 0600
