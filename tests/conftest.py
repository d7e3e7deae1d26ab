"""Shared fixtures: one tiny model trained and exported once per test session."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest

TINY_EPOCHS = 10
GRAPH_CACHE_ENV = "EDGEVAE_EXPORT_CACHE_DIR"  # edgevae.export.graphs.CACHE_DIR_ENV, without importing torch here
_GRAPHS = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """One folder of exported graphs for the session (edgevae.export.graphs' cache across processes): the
    command-line runs the tests start trace each architecture once, not once per process. Every reuse is still
    checked against the module, and export's parity check runs as always."""
    if GRAPH_CACHE_ENV not in os.environ:
        folder = tempfile.mkdtemp(prefix="edgevae-test-graphs-")
        os.environ[GRAPH_CACHE_ENV] = folder
        config.stash[_GRAPHS] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_GRAPHS, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(GRAPH_CACHE_ENV, None)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VAE trained on embedded digits 0 and 1 (800 images, a few seconds)."""
    pytest.importorskip("torch")
    from edgevae.training import DataSpec, ModelConfig, TrainConfig, train

    run = tmp_path_factory.mktemp("tiny_run")
    # the defect head by steps, not by the VAE's wall time: the same head whatever else loads the machine
    train(DataSpec(classes=(0, 1)), run, ModelConfig(latent_dim=4, widths=(8, 16), hidden=32),
          TrainConfig(epochs=TINY_EPOCHS, batch_size=64, seed=0, defect_steps=60, defect_time_cap=False))
    return run


@pytest.fixture(scope="session")
def bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported to a bundle."""
    from edgevae.export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(tiny_run, out, ExportConfig(elbo_samples=8, iwae_samples=64))
    return out


@pytest.fixture(scope="session")
def model(bundle: Path):  # type: ignore[no-untyped-def]
    from edgevae.runtime import load

    return load(bundle, ["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """The embedded test split: uint8 (1000, 28, 28) and labels."""
    from edgevae.training.data import embedded_split

    return embedded_split("test")


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PNG files: 10 test digits under normal/, 6 synthetic outliers under outliers/."""
    from edgevae.training.samples import write_samples

    folder = tmp_path_factory.mktemp("samples")
    write_samples(folder, per_class=1)
    return folder


def _need_engine(module: str, java: bool = False) -> None:
    """Skip when ``module`` (or, with ``java``, a Java runtime) is missing; fail instead where the scale tier is
    required (CI sets EDGEVAE_REQUIRE_SCALE=1)."""
    import importlib.util
    import os
    import shutil

    missing = []
    if importlib.util.find_spec(module) is None:
        missing.append(f"{module} is not installed (pip install 'edgevae[scale]')")
    if java and shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        missing.append("pyspark needs a Java 17+ runtime (java is not on PATH)")
    if not missing:
        return
    if os.environ.get("EDGEVAE_REQUIRE_SCALE") == "1":
        pytest.fail(f"the scale tier is required here but {'; '.join(missing)}")
    pytest.skip("; ".join(missing))


@pytest.fixture
def need_engine():  # type: ignore[no-untyped-def]
    """``need_engine("ray")`` / ``need_engine("pyspark", java=True)``: skip or fail as the scale tier says."""
    return _need_engine


@pytest.fixture
def benchmark_script() -> Callable[[str], ModuleType]:
    """Load a benchmark script (benchmarks/*.py) as a module, without putting benchmarks/ on the import path."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
        spec.loader.exec_module(module)
        return module

    return load
