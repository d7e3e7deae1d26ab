"""Batch scoring on Ray Data: a bundle scores a ``ray.data.Dataset`` on a pool of actors.

    >>> import ray
    >>> from edgevae.runtime.ray_data import from_paths, read_files, score_dataset
    >>> ds = from_paths(paths)                  # files every node can read; or read_files("s3://frames/") for bytes
    >>> scored = score_dataset(ds, "/shared/bundle", workers=8)               # + score, p_value, is_outlier, ...
    >>> scored.write_parquet("s3://scores/")

Each actor holds one :class:`~edgevae.runtime.batch.BatchScorer` and loads the bundle once. Ray is imported only
here and only when these functions run (``pip install 'edgevae[scale]'``); ``import edgevae.runtime`` never
imports it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .batch import BatchScorer
from .errors import MissingExtraError

# Columns holding the images, in the order they are looked for: read_binary_files' encoded bytes, read_images'
# decoded arrays, from_numpy's arrays, then file paths to read on the worker.
IMAGE_COLUMNS = ("bytes", "image", "data", "path")


class RayScorer:
    """A callable class for ``Dataset.map_batches``: scores each batch (numpy format) with a ``BatchScorer``.

    The image column is dropped from the output (it is the heavy one), except a path column, which names the rows;
    every other input column is kept, and the ``BatchScorer.COLUMNS`` are added.

    Args:
        bundle: the bundle directory, readable by every worker.
        column: the image column (default: the first of ``IMAGE_COLUMNS`` the batch has).
        **settings: the other ``BatchScorer`` settings (method, fpr, threshold, strict, variant, ...).
    """

    def __init__(self, bundle: str, column: str | None = None, **settings: Any) -> None:
        self.scorer = BatchScorer(bundle, **settings)
        self.scorer.model  # noqa: B018 - load once, when the actor starts, so a bad bundle fails early
        self.column = column

    def __call__(self, batch: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        column = self.column or next((c for c in IMAGE_COLUMNS if c in batch), None)
        if column is None or column not in batch:
            raise ValueError(f"no image column in the batch (columns: {', '.join(batch)}); pass column= one of them")
        names = batch["path"] if "path" in batch else None
        items = list(batch[column])
        scored = self.scorer.score_items(items, None if names is None else list(names))
        out = {k: v for k, v in batch.items() if k != column or column == "path"}
        out.update(scored)
        return out


def score_dataset(ds: Any, bundle: str | os.PathLike[str], *, workers: int = 2, batch_size: int = 256,
                  column: str | None = None, **settings: Any) -> Any:
    """Score a Ray ``Dataset`` of images with a pool of ``workers`` actors (one CPU each).

    Args:
        ds: a ``ray.data.Dataset`` with an image column (``IMAGE_COLUMNS``).
        bundle: the bundle directory, readable by every worker.
        workers: actors in the pool (``ActorPoolStrategy(size=workers)``).
        batch_size: images per call.
        column: the image column (default: found by name).
        **settings: ``BatchScorer`` settings.

    Returns:
        A lazy ``Dataset`` with the score columns; nothing runs until it is consumed or written.
    """
    ray_data = _ray_data()
    kwargs = {"bundle": os.fspath(bundle), "column": column, **settings}
    BatchScorer(**{k: v for k, v in kwargs.items() if k != "column"})  # validate the settings here, not in actors
    return ds.map_batches(RayScorer, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                          compute=ray_data.ActorPoolStrategy(size=workers), num_cpus=1)


def from_paths(paths: list[str], *, blocks: int | None = None) -> Any:
    """A Ray ``Dataset`` of image file paths (column ``path``) in ``blocks`` blocks (default: one per 2,000
    paths, at least 8); the scoring actors read the files themselves.

    The fastest way to score files every node can read (a local disk, NFS, a mounted bucket): reading runs in
    parallel in the actors, with no read tasks besides (benchmarks/scale.py measures both ways).
    """
    ray_data = _ray_data()
    paths = [os.fspath(p) for p in paths]
    blocks = blocks or max(8, len(paths) // 2000)
    return ray_data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, min(len(paths), blocks)))


def read_files(paths: str | list[str], *, blocks: int | None = None, concurrency: int | None = None) -> Any:
    """A Ray ``Dataset`` of image files as encoded bytes (columns ``bytes`` and ``path``) read by Ray's
    ``read_binary_files`` (any filesystem pyarrow knows: s3://, gs://, ...), decoded later by the scoring actors,
    so an unreadable file is a row with an error rather than a failed job.

    The read tasks reserve no CPU (``num_cpus=0``): with reads that reserved one, actors holding every CPU of a
    node would leave them none, and the job would wait forever. They are capped at ``concurrency`` tasks at a
    time (default: the cluster's CPU count); uncapped, Ray starts a process per block and they crowd the
    actors out.
    """
    ray_data = _ray_data()
    concurrency = concurrency or _cluster_cpus()
    return ray_data.read_binary_files(paths, include_paths=True, num_cpus=0, concurrency=concurrency,
                                      override_num_blocks=blocks)


def from_arrays(images: NDArray[Any], *, blocks: int | None = None) -> Any:
    """A Ray ``Dataset`` of in-memory images (N, ...) in ``blocks`` blocks (default: 8 per CPU, at most one per
    image), column ``data``; ``ray.data.from_numpy`` of one array makes a single block, which one actor would
    score alone."""
    ray_data = _ray_data()
    images = np.asarray(images)
    blocks = blocks or 8 * _cluster_cpus()
    return ray_data.from_numpy(np.array_split(images, max(1, min(images.shape[0], blocks))))


def _cluster_cpus() -> int:
    import ray

    resources: Any = ray.cluster_resources  # untyped in Ray
    return max(1, int(resources().get("CPU", 1)))


def _ray_data() -> Any:
    try:
        import ray.data
    except ImportError as exc:
        raise MissingExtraError("scoring on Ray needs the scale extra: pip install 'edgevae[scale]'") from exc
    return ray.data


__all__ = ["IMAGE_COLUMNS", "RayScorer", "from_arrays", "from_paths", "read_files", "score_dataset"]
