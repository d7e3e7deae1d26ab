"""Run a bundle's two graphs: the sessions, and the machinery that splits large batches over the cores.

:class:`GraphRunner` owns the encoder and decoder sessions and, on the CPU provider, one-thread twins of them
that run slices of a large batch side by side in a small thread pool. It knows nothing of scores: a
:class:`~edgevae.runtime.model.Model` hands it work and gets arrays back. :func:`thread_plan` is the thread
policy of the streaming commands (decode image files while the graphs run).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from .sessions import Providers, create_session, resolve_providers

if TYPE_CHECKING:
    import onnxruntime as ort

F32 = NDArray[np.float32]
# Smallest slice of a batch a worker gets: batches under twice this run in one call.
MIN_SLICE = 32
# Slices per worker a large batch is cut into (see GraphRunner.map_slices).
SLICES_PER_WORKER = 4


@dataclass(frozen=True)
class GraphInfo:
    """Names, shapes and types of a session's inputs and outputs, for ``edgevae info``."""

    inputs: list[tuple[str, list[Any], str]]
    outputs: list[tuple[str, list[Any], str]]

    @classmethod
    def of(cls, session: ort.InferenceSession) -> "GraphInfo":
        return cls(
            inputs=[(a.name, list(a.shape), a.type) for a in session.get_inputs()],
            outputs=[(a.name, list(a.shape), a.type) for a in session.get_outputs()],
        )


class GraphRunner:
    """The encoder and decoder sessions (and the defect head's, when a bundle has one), and concurrent slices of
    large batches.

    On the CPU provider, one-thread sessions running slices of a batch side by side use the cores better than
    one call with several intra-op threads: onnxruntime's ConvTranspose kernel uses a single thread, and a
    session's spinning thread pool would compete with the other graph's calls (docs/benchmarks.md measures
    it). Every row is computed as it would be in a single call, so results do not depend on the slicing.
    Safe to share between threads. ``close()`` (or ``with``) shuts the slice pool down.

    Args:
        encoder, decoder: the sessions that run whole (small) batches.
        sliced_encoder, sliced_decoder: one-thread twins that run slices (default: the sessions themselves).
        slice_workers: concurrent slices a large batch (>= 2 * MIN_SLICE rows) is split into.
        defect, sliced_defect: the defect head's session and its one-thread twin (None: no defect head).
    """

    def __init__(self, encoder: ort.InferenceSession, decoder: ort.InferenceSession, *,
                 sliced_encoder: ort.InferenceSession | None = None,
                 sliced_decoder: ort.InferenceSession | None = None, slice_workers: int = 1,
                 defect: ort.InferenceSession | None = None,
                 sliced_defect: ort.InferenceSession | None = None) -> None:
        if not isinstance(slice_workers, int) or isinstance(slice_workers, bool) or slice_workers < 1:
            raise ValueError(f"slice_workers must be a positive integer, got {slice_workers!r}")
        self.encoder, self.decoder, self.defect = encoder, decoder, defect
        self._sliced = (sliced_encoder or encoder, sliced_decoder or decoder)
        self._sliced_defect = sliced_defect or defect
        self._slice_workers = slice_workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def slice_workers(self) -> int:
        return self._slice_workers

    def sessions(self, in_slice: bool) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        """(encoder, decoder) to run a slice of a large batch (``in_slice``) or a whole small batch."""
        return self._sliced if in_slice else (self.encoder, self.decoder)

    def all_sessions(self) -> dict[str, list[ort.InferenceSession]]:
        """Every distinct session per graph (the twins too), for checks."""
        out = {"encoder": list(dict.fromkeys([self.encoder, self._sliced[0]])),
               "decoder": list(dict.fromkeys([self.decoder, self._sliced[1]]))}
        if self.defect is not None:
            out["defect"] = list(dict.fromkeys([self.defect, self._sliced_defect]))
        return out

    def _graphs(self) -> dict[str, ort.InferenceSession]:
        out = {"encoder": self.encoder, "decoder": self.decoder}
        if self.defect is not None:
            out["defect"] = self.defect
        return out

    @property
    def providers(self) -> dict[str, list[str]]:
        """Providers each graph actually runs on."""
        return {name: s.get_providers() for name, s in self._graphs().items()}

    def graph_info(self) -> dict[str, GraphInfo]:
        return {name: GraphInfo.of(s) for name, s in self._graphs().items()}

    def defect_session(self, in_slice: bool) -> ort.InferenceSession:
        """The defect head's session for a slice of a large batch (``in_slice``) or a whole small batch.

        Raises:
            ValueError: the bundle has no defect head.
        """
        session = self._sliced_defect if in_slice else self.defect
        if session is None:
            raise ValueError("this bundle has no defect head (defect.onnx); train with the defect head (the default) "
                             "and export again for the defect map and the defect score")
        return session

    def run_encoder(self, names: list[str], feed: str, x: F32) -> list[F32]:
        """The encoder alone, in slices like the decoder: slices on one-thread sessions keep pace with one call on
        onnxruntime's own threads on quiet cores, hold up better beside other work, and help int8 graphs most,
        whose quantize and dequantize steps parallelise poorly inside onnxruntime (figures: docs/benchmarks.md)."""
        return self._run_graph(0, names, feed, x)

    def run_decoder(self, names: list[str], feed: str, t: F32) -> list[F32]:
        return self._run_graph(1, names, feed, t)

    def _run_graph(self, graph: int, names: list[str], feed: str, x: F32) -> list[F32]:
        """Graph 0 (encoder) or 1 (decoder) on ``x``, in slices when the batch is large."""
        return self.map_slices(lambda part, in_slice: self.sessions(in_slice)[graph].run(names, {feed: part}), x)

    def map_slices(self, work: Callable[[F32, bool], list[F32]], x: F32) -> list[F32]:
        """``work(x, False)``, or for a large batch ``work(slice, True)`` on concurrent slices, concatenated.

        A large batch is cut into up to ``SLICES_PER_WORKER`` slices per worker, which the workers (the calling
        thread and the pool's) take in turn: a worker slowed down by another thread on its core (an image
        decoding thread, another process) takes fewer slices, instead of the others waiting for its one.
        """
        n = x.shape[0]
        pieces = min(self._slice_workers * SLICES_PER_WORKER, n // MIN_SLICE)
        workers = min(self._slice_workers, pieces)
        if workers <= 1:
            return work(x, False)
        pool = self._slice_pool()
        bounds = [n * i // pieces for i in range(pieces + 1)]
        results: list[list[F32]] = [[] for _ in range(pieces)]
        turns = iter(range(pieces))
        lock = threading.Lock()

        def take_turns() -> None:
            while True:
                with lock:
                    i = next(turns, None)
                if i is None:
                    return
                results[i] = work(x[bounds[i]:bounds[i + 1]], True)

        helpers = [pool.submit(take_turns) for _ in range(workers - 1)]
        take_turns()
        for h in helpers:
            h.result()
        return [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]

    def _slice_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._slice_workers - 1, thread_name_prefix="edgevae-run")
            return self._pool

    def close(self) -> None:
        """Shut the slice pool down (the sessions stay usable for batches that need no slicing)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def build_runner(encoder: bytes, decoder: bytes, providers: Providers = "auto", *, threads: int | None = None,
                 strict: bool = False, slice_workers: int | None = None, defect: bytes | None = None) -> GraphRunner:
    """Create the sessions of a bundle's serialized graphs and a runner over them.

    Args:
        encoder, decoder: serialized ONNX (or ORT) graphs.
        defect: the defect head's graph, when the bundle has one.
        providers, threads, strict: as :func:`~edgevae.runtime.sessions.create_session`.
        slice_workers: concurrent slices of a large batch. None: on the CPU provider ``threads`` (or one per
            core); elsewhere 1. With more than one, each graph is loaded twice: with ``threads`` intra-op
            threads for small batches (lowest latency) and with one thread for the slices.

    Raises:
        ValueError: bad ``slice_workers``.
        ProviderError: as :func:`~edgevae.runtime.sessions.create_session`.
    """
    if slice_workers is not None and (not isinstance(slice_workers, int) or slice_workers < 1):
        raise ValueError(f"slice_workers must be a positive integer, got {slice_workers!r}")
    cpu_only = resolve_providers(providers) == ["CPUExecutionProvider"]
    workers = slice_workers or ((threads or os.cpu_count() or 1) if cpu_only else 1)
    graphs = {"encoder": encoder, "decoder": decoder, **({"defect": defect} if defect is not None else {})}
    whole = {role: create_session(data, providers, threads=threads, strict=strict, name=role)
             for role, data in graphs.items()}
    sliced: dict[str, ort.InferenceSession | None] = {"encoder": None, "decoder": None, "defect": None}
    if cpu_only and workers > 1 and threads != 1:  # with threads=1 the sessions are one-thread already
        sliced = {role: create_session(data, providers, threads=1, strict=strict, name=role)
                  for role, data in graphs.items()}
    return GraphRunner(whole["encoder"], whole["decoder"], sliced_encoder=sliced["encoder"],
                       sliced_decoder=sliced["decoder"], slice_workers=workers, defect=whole.get("defect"),
                       sliced_defect=sliced.get("defect"))


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for a command that reads inputs while the graphs run: arguments for :func:`load`."""

    threads: int | None
    slice_workers: int | None


def thread_plan(paths: Sequence[str], method: str | None, *, threads: int | None = None,
                decode_threads: int = 1) -> ThreadPlan:
    """How to share the cores between decoding image files and running the graphs.

    Image files decode in ``decode_threads`` threads while onnxruntime runs the previous batch; giving
    onnxruntime every core as well makes the two fight over them, so its sessions get the cores the decode
    threads leave free. Inputs that are only array or IDX files need no decoding and keep onnxruntime's
    default. Methods that run the decoder (anything but ``kl``; None: encoder only) still gain from slicing
    batches over every core beside the decode thread. An explicit ``threads`` is taken as it is.
    """
    if threads is not None:
        return ThreadPlan(threads=threads, slice_workers=None)
    from .inputs import is_array_path, is_idx_path

    cores = os.cpu_count() or 1
    arrays_only = all(os.path.isfile(p) and (is_array_path(p) or is_idx_path(p)) for p in paths)
    session_threads = None if arrays_only else max(1, cores - decode_threads)
    uses_decoder = method is not None and method != "kl"
    return ThreadPlan(threads=session_threads, slice_workers=cores if uses_decoder else None)
