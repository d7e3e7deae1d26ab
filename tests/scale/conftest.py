"""The scale tier: skipped with a reason where Ray, pyspark or Java are missing, required in CI
(EDGEVAE_REQUIRE_SCALE=1, set by .ci/run), where a missing piece fails the tier instead."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def need_engine(module: str, java: bool = False) -> None:
    """Skip (or, where the tier is required, fail) when ``module`` or a Java runtime is not installed."""
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
