"""One model from eight threads; hypothesis fuzzing of the loaders, the manifest parser and the score math."""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgevae.runtime import BundleError, InputContract, InputError, read_idx
from edgevae.runtime.inputs import read_array_file
from edgevae.runtime.manifest import Manifest

pytestmark = pytest.mark.runtime

GRAY = InputContract(1, 28, 28)
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_eight_threads_give_sequential_scores(model, test_digits) -> None:  # type: ignore[no-untyped-def]
    x = test_digits[0][:64]
    chunks = [x[i:i + 8] for i in range(0, 64, 8)]
    methods = ["kl", "elbo", "recon", "rel_recon", "smooth_recon", "iwae"]
    expected = {m: [model.raw_scores(c, m) for c in chunks] for m in methods}

    def job(i: int) -> dict[str, np.ndarray]:
        return {m: model.raw_scores(chunks[i], m) for m in methods}

    for _ in range(2):
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(job, range(8)))
        for i, got in enumerate(results):
            for m in methods:
                np.testing.assert_array_equal(got[m], expected[m][i])


@pytest.fixture(scope="module")
def scratch() -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from([".png", ".jpg", ".bmp", ".tif"]))
def test_image_loader_fuzz(scratch: Path, data: bytes, suffix: str) -> None:
    path = scratch / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        out = GRAY.read_image(path)
    except InputError:
        return
    assert out.shape == (1, 28, 28) and out.dtype == np.uint8


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_idx_loader_fuzz(scratch: Path, data: bytes, valid_header: bool) -> None:
    if valid_header and len(data) >= 2:
        data = b"\x00\x00" + data[2:]
    path = scratch / "fuzz-idx3-ubyte"
    path.write_bytes(data)
    try:
        read_idx(path)
    except InputError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_array_loader_fuzz(scratch: Path, data: bytes) -> None:
    path = scratch / "fuzz.npy"
    path.write_bytes(b"\x93NUMPY" + data)
    try:
        arr = read_array_file(path)
        GRAY.prepare(arr)
    except InputError:
        pass


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["format", "schema_version", "input", "latent_dim", "likelihood", "scoring",
                                        "calibration", "files"]), json_values))
def test_manifest_parser_fuzz(data: dict[str, object]) -> None:
    try:
        Manifest.from_json(json.dumps(data))
    except BundleError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_manifest_parser_fuzz_text(text: str) -> None:
    try:
        Manifest.from_json(text)
    except BundleError:
        pass


def test_fuzzed_manifest_mutations_of_a_real_one(bundle: Path) -> None:
    raw = json.loads((bundle / "edgevae.json").read_text())
    rng = np.random.default_rng(0)
    junk = [None, -1, 0, "x", [], {}, 1e308, True]
    for _ in range(300):
        data = json.loads(json.dumps(raw))
        section = data
        keys = list(section)
        key = keys[rng.integers(len(keys))]
        if isinstance(section[key], dict) and section[key] and rng.random() < 0.6:
            section = section[key]
            keys = list(section)
            key = keys[rng.integers(len(keys))]
        section[key] = junk[rng.integers(len(junk))]
        try:
            Manifest.from_json(json.dumps(data))
        except BundleError:
            pass
