"""Batch scoring on Ray Data and Apache Spark (local mode, 2 workers) against edgevae.runtime on the same files."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgevae.runtime import iter_batches, load
from edgevae.runtime.batch import COLUMNS, BatchScorer

pytestmark = [pytest.mark.scale, pytest.mark.runtime, pytest.mark.slow]

BAD_INPUTS = Path(__file__).parents[1] / "data" / "bad_inputs"
# image files that fail (corrupt, truncated, empty, not an image, a decompression bomb) and some that are converted
MIXED_IN = ("corrupt.jpg", "truncated.png", "zero_bytes.png", "not_an_image.png", "bomb.png", "mode_rgba.png",
            "mode_palette.png", "good_large_resized.png")


@pytest.fixture(scope="module")
def images(sample_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 PNG digits and outliers with the bad files mixed in, in one folder."""
    from edgevae.training.samples import write_samples

    folder = tmp_path_factory.mktemp("engine_images")
    write_samples(folder / "s", per_class=3)
    for name in MIXED_IN:
        shutil.copy(BAD_INPUTS / name, folder / name)
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def expected(bundle: Path, images: Path) -> dict[str, tuple[Any, ...]]:
    """What edgevae.runtime (the path `edgevae score` takes) gives each file: (score, p, flag, error)."""
    model = load(bundle)
    rows: dict[str, tuple[Any, ...]] = {}
    for batch in iter_batches(_files(images), model.contract, batch_size=7):
        for name, err in batch.failures:
            rows[name] = (None, None, None, str(err))
        if batch.images is not None:
            result = model.score(batch.images)
            for i, name in enumerate(batch.names):
                rows[name] = (float(result.scores[i]), float(result.p_values[i]), bool(result.is_outlier[i]), None)
    assert sum(r[3] is not None for r in rows.values()) == 5  # the five broken files fail, the rest score
    return rows


def _same(got: dict[str, tuple[Any, ...]], expected: dict[str, tuple[Any, ...]]) -> None:
    assert got.keys() == expected.keys()
    for name, (score, p, flag, error) in expected.items():
        g = got[name]
        assert g[3] == error, name
        if error is None:
            assert g[0] == pytest.approx(score, rel=1e-6, abs=1e-6), name
            assert g[1] == pytest.approx(p, rel=1e-6, abs=1e-9), name
            assert g[2] == flag, name
        else:
            assert g[0] is None or math.isnan(g[0])
            assert g[2] is None


def _rows(table: Any, name_column: str = "path") -> dict[str, tuple[Any, ...]]:
    """{name: (score, p, flag, error)} from a pandas DataFrame; missing values (None, NaN, NA) as None."""
    import pandas as pd

    def value(v: Any) -> Any:
        return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v

    return {str(r[name_column]).removeprefix("file:"): (value(r["score"]), value(r["p_value"]),
                                                        value(r["is_outlier"]), value(r["error"]))
            for _, r in table.iterrows()}


def test_batch_scorer_matches_the_runtime_for_paths_bytes_and_arrays(bundle: Path, images: Path,
                                                                     expected: dict[str, tuple[Any, ...]]) -> None:
    scorer = BatchScorer(str(bundle))
    files = _files(images)
    by_path = scorer.score_items(files)
    assert list(by_path) == list(COLUMNS)
    _same({f: (by_path["score"][i], by_path["p_value"][i], by_path["is_outlier"][i], by_path["error"][i])
           for i, f in enumerate(files)}, expected)
    by_bytes = scorer.score_items([Path(f).read_bytes() for f in files], names=files)
    assert all(np.array_equal(by_path[c], by_bytes[c], equal_nan=True) if c in ("score", "p_value")
               else list(by_path[c]) == list(by_bytes[c]) for c in COLUMNS)
    # decoded arrays score as the files do; a wrong-shaped array fails alone
    model = load(bundle)
    good = [f for f in files if expected[f][3] is None]
    arrays = [model.contract.read_image(f) for f in good] + [np.zeros((5, 5), np.uint8)]
    by_array = scorer.score_items(arrays)
    np.testing.assert_allclose(by_array["score"][:-1], [expected[f][0] for f in good], rtol=1e-6)
    assert by_array["error"][-1].startswith("row %d: images must be 28x28" % len(good))
    assert pickle.loads(pickle.dumps(scorer)) == scorer  # small to ship: settings only


def test_ray_data_with_two_workers_matches_the_runtime(bundle: Path, images: Path, expected: dict[str, tuple[Any, ...]],
                                                       need_engine: Any) -> None:
    need_engine("ray")
    import ray

    from edgevae.runtime.ray_data import from_arrays, read_files, score_dataset

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        files = read_files(_files(images), blocks=4)
        table = score_dataset(files, bundle, workers=2, batch_size=8).to_pandas()
        assert "bytes" not in table.columns
        _same(_rows(table), expected)
        model = load(bundle)
        good = [f for f in _files(images) if expected[f][3] is None]
        arrays = np.stack([model.contract.read_image(f)[0] for f in good])  # (N, 28, 28)
        scored = score_dataset(from_arrays(arrays), bundle, workers=2, batch_size=8).to_pandas()
        np.testing.assert_allclose(np.sort(scored["score"]), np.sort([expected[f][0] for f in good]), rtol=1e-6)
    finally:
        ray.shutdown()


def test_spark_with_two_workers_matches_the_runtime(bundle: Path, images: Path, expected: dict[str, tuple[Any, ...]],
                                                    monkeypatch: pytest.MonkeyPatch, need_engine: Any) -> None:
    need_engine("pyspark", java=True)
    from pyspark.sql import SparkSession

    from edgevae.runtime.spark import score_dataframe, ship_bundle

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # the workers' Python: the one edgevae is installed in
    spark = (SparkSession.builder.master("local[2]").appName("edgevae-test")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        frames = spark.read.format("binaryFile").load(_files(images)).repartition(2)
        table = score_dataframe(frames, bundle, batch_size=8).toPandas()
        assert "content" not in table.columns
        # Spark's file sources skip empty files: the zero-byte file has no row (a DataFrame of paths has one)
        _same(_rows(table), {k: v for k, v in expected.items() if not k.endswith("zero_bytes.png")})
        # a DataFrame of paths, with the bundle shipped to the executors instead of read from shared storage
        paths = spark.createDataFrame([(f,) for f in _files(images)], "path string").repartition(2)
        name = ship_bundle(spark, bundle)
        _same(_rows(score_dataframe(paths, name, shipped=True).toPandas()), expected)
    finally:
        spark.stop()
