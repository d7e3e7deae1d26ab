"""Training on several processes with PyTorch's DistributedDataParallel, started by ``torchrun``.

``torchrun --nproc-per-node N -m edgevae train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in each process's environment; :func:`setup` reads them and joins the process group (gloo on
the CPU, NCCL on CUDA). Without them training runs in one process, exactly as before.

How a distributed run equals a single-process one:

- The global batch is ``TrainConfig.batch_size`` whatever the number of processes; each of the W processes takes
  ``batch_size / W`` of it, so the learning-rate schedule (per global step) is unchanged.
- Each epoch's order comes from a ``DistributedSampler`` seeded so that its permutation is the single-process
  run's. Process r holds positions r, r + W, r + 2W, ... of that order; the sampler's padding (repeated images
  that make every shard equally long) is dropped, so no image counts twice.
- Augmentation and reparameterisation noise are drawn for the whole global batch on every process from the
  epoch's generator, as one process draws them, and each process keeps its rows.
- Each process's loss is its share of the global batch's sum divided by the global batch size, times W; DDP
  averages gradients over the W processes, which gives the gradient of the global batch mean.
- Validation sums (negative ELBO, reconstruction, KL) and image counts are all-reduced, so the figures are those
  of the whole validation split.

What differs is floating-point summation order (gradients are summed across processes), so weights agree with a
single-process run to within rounding, not bit for bit (tests/scale/test_ddp.py states the tolerance).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.distributed as dist

from edgevae.runtime import options
from edgevae.runtime.errors import DistributedError



@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank among ``world`` processes and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and metrics and reports progress; the others only compute."""
        return self.rank == 0

    def label(self) -> str:
        return f"rank {self.rank}/{self.world}" if self.distributed else "single process"


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by torchrun (``WORLD_SIZE`` > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when it is available (one GPU per local rank), else the CPU; ``cpu``; ``cuda``.

    Raises:
        ValueError: an unknown device name, or ``cuda`` without a CUDA build and GPU.
    """
    if device not in options.DEVICES:
        raise ValueError(f"device must be one of {', '.join(options.DEVICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: this PyTorch build sees no CUDA GPU; use --device cpu (or auto)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto") -> Ranks:
    """Join torchrun's process group when this process was started by it; otherwise a single-process ``Ranks``.

    The backend is NCCL for CUDA devices and gloo on the CPU. Collectives time out after
    ``options.DISTRIBUTED_TIMEOUT_SECONDS``, so a process that stops answering ends the job with an error
    instead of a hang (torchrun also stops the others when one process exits with an error).

    Raises:
        DistributedError: the process group cannot be formed.
    """
    if not launched_by_torchrun():
        return Ranks(device=resolve_device(device))
    # A 1-channel first convolution's weight gradient (C_out, 1, 3, 3) comes with other (equivalent) strides than
    # DDP's buffer; PyTorch warns once per process that this "may impair performance". It is one small tensor.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank)
    backend = "nccl" if where.type == "cuda" else "gloo"
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=options.DISTRIBUTED_TIMEOUT_SECONDS))
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"rank {rank}/{world}: cannot join the {backend} process group ({exc}); start "
                                   "the run with torchrun (docs/scale.md)") from exc
    return Ranks(rank=rank, world=world, local_rank=local_rank, device=where)


def teardown(ranks: Ranks) -> None:
    """Leave the process group (a no-op for a single process)."""
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_size(batch_size: int, ranks: Ranks) -> None:
    """The global batch must split evenly over the processes.

    Raises:
        ValueError: ``batch_size`` is not a multiple of the number of processes.
    """
    if batch_size % ranks.world:
        raise ValueError(f"the batch size {batch_size} is the global batch and must be a multiple of the "
                         f"{ranks.world} processes; pass --batch-size {batch_size - batch_size % ranks.world or ranks.world}")


def epoch_shard(n: int, seed: int, epoch: int, ranks: Ranks) -> torch.Tensor:
    """This process's image indices for one epoch, from a ``DistributedSampler`` (with its padding).

    The sampler's generator is seeded with ``seed + epoch``; ``seed`` is chosen by the caller so that its
    permutation is the single-process order.
    """
    sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
        range(n), num_replicas=ranks.world, rank=ranks.rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(iter(sampler)), dtype=torch.long)


def step_rows(step: int, batch_size: int, n: int, ranks: Ranks) -> tuple[slice, torch.Tensor, int]:
    """For one global step: the slice of this process's shard it takes, the positions those images have in the
    global batch, and the global batch's size; positions past the end of the data (the sampler's padding)
    are left out."""
    local = batch_size // ranks.world
    size = min(batch_size, n - step * batch_size)  # the last global batch may be short
    positions = torch.arange(ranks.rank, batch_size, ranks.world)  # (local,)
    keep = positions < size
    return slice(step * local, step * local + int(keep.sum())), positions[keep], size


def all_reduce_sums(sums: Mapping[str, float], ranks: Ranks) -> dict[str, float]:
    """Sum per-process figures over all processes (float64, exact for counts)."""
    if not ranks.distributed:
        return dict(sums)
    keys = sorted(sums)
    values = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
    with lost_peer(ranks):
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, values.tolist())}


def barrier(ranks: Ranks) -> None:
    """Wait until every process reaches this point."""
    if ranks.distributed:
        with lost_peer(ranks):
            dist.barrier()


@contextlib.contextmanager
def lost_peer(ranks: Ranks) -> Iterator[None]:
    """Turn a collective that failed because another process died or timed out into a ``DistributedError``."""
    try:
        yield
    except (dist.DistBackendError, dist.DistNetworkError) as exc:
        raise DistributedError(
            f"{ranks.label()}: lost contact with the other training processes ({_first_line(exc)}); another "
            "process probably failed first: see its error in torchrun's output. The run can continue from its last "
            "completed epoch with --resume") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
