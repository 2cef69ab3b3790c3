"""Data-parallel training with ``torch.distributed``: one model, N processes started by torchrun
(``torchrun --nproc-per-node N -m latentquant.cli train ...`` or ``latentquant train --nproc-per-node N``,
which calls torchrun's own launcher), DistributedDataParallel over gloo (CPU) or NCCL (GPU).

The contract the training loop keeps with it:

- every rank draws the same *global* batch of ``batch_size x world_size`` factor tuples from the shared,
  seeded data generator and renders (or reads) only its own contiguous share (:func:`batch_shard`), so
  the ranks' shares are disjoint and a run with N ranks of batch B sees exactly the batches of one process
  with batch N x B (procedural and file datasets alike);
- DDP averages the gradients over the ranks before the model's own clipping and optimizer step, so the
  update is that of the mean loss over the global batch; logged losses are averaged too (:func:`mean_losses`);
- rank 0 alone writes (lock, checkpoints, config, logs, metrics, report) and evaluates; the checkpoint holds
  the one model / optimizer / data-generator state all ranks share, so a run resumes with any world size
  (with another world size the global batch changes accordingly);
- a stop request (Ctrl-C, SIGTERM) seen by any rank stops every rank after the same step (:func:`any_rank`).

``batch_size`` is the per-rank batch. The per-rank torch random streams (noise that models such as the VAEs
draw) are seeded by rank; on resume with N > 1 ranks 1..N-1 restart theirs from ``(seed, rank, step)``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job.

    Attributes:
        rank, world_size, local_rank: as torchrun sets them (0, 1, 0 without torchrun).
        device: the device this rank trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def setup(device_setting: str) -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or describe a single process.

    Args:
        device_setting: the run's ``device``: ``auto`` (each rank its own GPU ``cuda:LOCAL_RANK`` when CUDA is
            available, else CPU), ``cpu``, or ``cuda`` (``cuda:LOCAL_RANK``; a fixed ``cuda:i`` is refused
            with more than one rank, as all ranks would share one GPU).

    Raises:
        ValueError: a fixed CUDA index with several ranks, CUDA asked for but missing, or more ranks per node
            than GPUs.
    """
    from latentquant.train.run import select_device

    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Distributed(device=select_device(device_setting))
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device_setting.startswith("cuda:"):
        raise ValueError(
            f"device {device_setting!r} names one GPU, but {world_size} ranks train: use device=cuda or auto "
            "(each rank takes cuda:LOCAL_RANK)"
        )
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"rank {rank} has LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank, device)


def teardown(info: Distributed, together: bool = False) -> None:
    """Leave the process group (after the last collective).

    ``together`` (the run finished on this rank): first wait until every rank has finished, so that all ranks
    close their connections at the same point, after rank 0 has written the outputs. Before, ranks 1..N-1 left
    right after the last collective and tore their gloo connections down while rank 0 was still writing; a
    rank 1 once died at about that point in CI (SIGABRT, "terminate called without an active exception"; not
    reproduced in some 170 2-rank runs since, so the cause inside torch/gloo is not pinned down). A rank that failed
    leaves at once; the others' final wait then fails on the closed connection instead of hanging.
    """
    if not (info.enabled and dist.is_initialized()):
        return
    try:
        if together:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def batch_shard(dataset: Any, batch_size: int, generator: torch.Generator, info: Distributed) -> torch.Tensor:
    """This rank's ``batch_size`` images of a global batch of ``batch_size x world_size``.

    Every rank draws the same global factor tuples from ``generator`` (which therefore stays identical on
    all ranks) and renders rows ``[rank x B, (rank + 1) x B)``. One process takes
    ``dataset.sample_batch(batch_size, generator)``, which is ``images_for(sample_factors(...))`` for every
    dataset of ``latentquant.data``: the same images the shards of N ranks of batch B / N put together.

    Shapes:
        returns ``(batch_size, C, H, W)`` float32 in [0, 1].
    """
    if not info.enabled:
        images, _ = dataset.sample_batch(batch_size, generator)
        return images
    factors = dataset.sample_factors(batch_size * info.world_size, generator)
    return dataset.images_for(factors[info.rank * batch_size : (info.rank + 1) * batch_size])


def wrap_model(model: torch.nn.Module, info: Distributed) -> torch.nn.Module:
    """``model`` under DistributedDataParallel with several ranks (else ``model`` itself): the module to run
    the forward pass through, so that backward averages the gradients over the ranks. Buffers are not
    broadcast from rank 0: layers that keep statistics (the VQ EMA) all-reduce them themselves."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def mean_losses(losses: dict[str, torch.Tensor], info: Distributed) -> dict[str, torch.Tensor]:
    """The losses averaged over the ranks (each rank's are means over its equal share of the batch, so this
    is the mean over the global batch). Every rank must pass the same names."""
    if not info.enabled or not losses:
        return losses
    names = sorted(losses)
    stacked = torch.stack([losses[name].detach().float().reshape(()) for name in names])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= info.world_size
    return dict(zip(names, stacked.unbind(), strict=True))


def any_rank(flag: bool, info: Distributed) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a stop request that reached one rank)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier(info: Distributed) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def reseed_rank(seed: int, step: int, info: Distributed) -> None:
    """Give ranks 1..N-1 their own torch random stream, derived from ``(seed, rank, step)``; rank 0 keeps the
    stream it has (the one the checkpoint saves and restores)."""
    if info.enabled and info.rank > 0:
        torch.manual_seed((seed * 1_000_003 + info.rank * 7_919 + step) % (2**63 - 1))


def world_is_distributed() -> bool:
    """A process group of more than one rank is running (layers use this to synchronize their statistics)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def launch(nproc_per_node: int, argv: list[str]) -> int:
    """Run ``latentquant <argv>`` in ``nproc_per_node`` processes through torchrun's launcher
    (``torch.distributed.run``, single node, a free rendezvous port); returns 0 when every rank succeeded.

    Raises:
        ValueError: ``nproc_per_node`` < 1.
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: a rank failed (torchrun's report).
    """
    if nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc_per_node}", "-m", "latentquant.cli", *argv]
    )
    run(args)
    return 0


class _Discard:
    """A log writer that writes nothing (ranks other than 0)."""

    def write(self, record: dict[str, Any]) -> None:
        del record


DISCARD = _Discard()


@contextlib.contextmanager
def share_from_main(info: Distributed) -> Iterator[Callable[[Any], None]]:
    """On rank 0: ``with share_from_main(info) as share: ... share(obj)`` sends ``obj`` to the other ranks
    (:func:`receive_from_main`); if the block fails before sharing, they receive the error instead of
    waiting forever."""
    shared = False

    def share(obj: Any) -> None:
        nonlocal shared
        if info.enabled:
            dist.broadcast_object_list([("ok", obj)], src=0)
        shared = True

    try:
        yield share
    except BaseException as err:
        if info.enabled and not shared:
            dist.broadcast_object_list([("error", f"{type(err).__name__}: {err}")], src=0)
        raise


def receive_from_main(info: Distributed) -> Any:
    """On ranks 1..N-1: what rank 0 shared with :func:`share_from_main`.

    Raises:
        ValueError: rank 0 failed before sharing (its error in the message).
    """
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    kind, payload = box[0]
    if kind == "error":
        raise ValueError(f"rank 0 could not prepare the run: {payload}")
    return payload
