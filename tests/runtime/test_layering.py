"""The renovation's promises: one registry, one schema that writes what it reads, a light runtime package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime


def test_numpy_only_parts_of_the_runtime_do_not_load_onnxruntime() -> None:
    code = ("import sys; import edgevae.runtime as r; from edgevae.runtime import InputContract, options, methods; "
            "from edgevae.runtime.inputs import read_idx; from edgevae.runtime import load; "
            "assert 'onnxruntime' not in sys.modules, 'onnxruntime loaded before a session was built'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_runtime_name_resolves() -> None:
    import edgevae.runtime as runtime

    assert sorted(runtime.__all__) == sorted(runtime._HOMES)
    for name in runtime.__all__:
        assert getattr(runtime, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        runtime.nope  # noqa: B018


def test_the_manifest_writes_what_it_reads(bundle: Path) -> None:
    from edgevae.runtime.manifest import Manifest

    raw = json.loads((bundle / "edgevae.json").read_text())
    parsed = Manifest.from_dict(raw)
    assert parsed.to_dict() == raw  # every typed section writes back exactly what was read
    assert Manifest.from_dict(parsed.to_dict()) == parsed


def test_the_bundle_says_what_each_method_needs(model) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime.methods import METHODS

    specs = model.manifest.raw["scoring"]["method_specs"]
    assert list(specs) == list(METHODS)
    assert specs["kl"]["graphs"] == ["encoder"] and specs["elbo"]["noise"] == "noise.elbo.f32"
    assert specs["elbo"]["samples"] == model.spec.elbo_samples and specs["local"]["map"] is True
    assert specs["combined"]["parts"] == list(model.spec.combined_parts)
    assert specs["combined"]["part_samples"]["elbo"] == model.spec.part_elbo_samples


def test_an_unknown_method_is_refused_by_the_registry(model) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    with pytest.raises(ValueError, match="unknown score method 'nope'; choose one of kl, elbo"):
        model.raw_scores(np.zeros((1, 28, 28), np.uint8), "nope")
