"""Batch scoring on Apache Spark: a bundle scores a DataFrame of image bytes or paths with ``mapInPandas``.

    >>> from edgevae.runtime.spark import score_dataframe
    >>> frames = spark.read.format("binaryFile").load("hdfs:///frames/*.png")   # path, ..., content
    >>> scored = score_dataframe(frames, "/shared/bundle")                      # + score, p_value, is_outlier, ...
    >>> scored.write.parquet("hdfs:///scores/")

Each Python worker loads the bundle once (:class:`~edgevae.runtime.batch.BatchScorer` keeps it per process, and
Spark reuses its Python workers across tasks). pyspark is imported only here and only when these functions run
(``pip install 'edgevae[scale]'``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterator

from .batch import BatchScorer
from .errors import MissingExtraError

# Columns holding the images, in the order they are looked for: binaryFile's encoded bytes, then paths.
IMAGE_COLUMNS = ("content", "path")


def ship_bundle(spark: Any, bundle: str | os.PathLike[str]) -> str:
    """Send a bundle directory from the driver to every executor (``SparkContext.addFile``, recursive).

    Returns the name to pass as ``score_dataframe(..., bundle=name, shipped=True)``; each executor then reads its
    own copy (``SparkFiles.get(name)``), so no shared storage is needed.
    """
    path = os.path.abspath(os.fspath(bundle))
    if not os.path.isdir(path):
        raise ValueError(f"{bundle}: not a bundle directory")
    spark.sparkContext.addFile(path, recursive=True)
    return os.path.basename(path)


def score_dataframe(df: Any, bundle: str | os.PathLike[str], *, column: str | None = None, batch_size: int = 256,
                    shipped: bool = False, **settings: Any) -> Any:
    """Score a Spark DataFrame of images with ``mapInPandas``.

    Args:
        df: a DataFrame with a column of encoded image bytes (``spark.read.format("binaryFile")`` gives
            ``content``) or of file paths every executor can read.
        bundle: the bundle directory, readable on every executor (shared storage); or, with ``shipped``, the name
            :func:`ship_bundle` returned.
        column: the image column (default: ``content`` if present, else ``path``).
        batch_size: images per call to the scorer (Arrow batches are cut to this size).
        shipped: the bundle was sent with :func:`ship_bundle`; each executor scores with its local copy.
        **settings: ``BatchScorer`` settings (method, fpr, threshold, strict, variant, threads, ...).

    Returns:
        A lazy DataFrame: the input columns except a bytes column, plus score (double), p_value (double),
        is_outlier (boolean, null where the row failed), error and warning (string, null when none). A row whose
        image cannot be scored carries its error; the rest of its batch is scored.
    """
    types = _sql_types()
    column = column or next((c for c in IMAGE_COLUMNS if c in df.columns), None)
    if column is None or column not in df.columns:
        raise ValueError(f"no image column in the DataFrame (columns: {', '.join(df.columns)}); pass column=")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scorer = BatchScorer(os.fspath(bundle), **settings)  # checks the settings on the driver
    kept = [f for f in df.schema.fields if f.name != column or column == "path"]
    schema = types.StructType(kept + [
        types.StructField("score", types.DoubleType()), types.StructField("p_value", types.DoubleType()),
        types.StructField("is_outlier", types.BooleanType()), types.StructField("error", types.StringType()),
        types.StructField("warning", types.StringType())])
    names = [f.name for f in kept]
    has_path = "path" in df.columns

    def score_partition(frames: Iterator[Any]) -> Iterator[Any]:
        local = replace(scorer, bundle=_shipped_path(scorer.bundle)) if shipped else scorer
        for frame in frames:
            for start in range(0, len(frame), batch_size):
                part = frame.iloc[start:start + batch_size]
                paths = list(part["path"]) if has_path else None
                scored = local.score_items(list(part[column]), paths)
                out = part[names].reset_index(drop=True)
                for key, values in scored.items():
                    out[key] = values
                yield out

    return df.mapInPandas(score_partition, schema)


def _shipped_path(name: str) -> str:
    from pyspark import SparkFiles

    return str(SparkFiles.get(name))


def _sql_types() -> Any:
    try:
        from pyspark.sql import types
    except ImportError as exc:
        raise MissingExtraError("scoring on Spark needs the scale extra: pip install 'edgevae[scale]'") from exc
    return types


__all__ = ["IMAGE_COLUMNS", "score_dataframe", "ship_bundle"]
