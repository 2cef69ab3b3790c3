"""Data-parallel training on 2 gloo ranks (CPU): the VQ EMA codebook stays identical on every rank and equals
one process on the global batch; batch sharding; (heavy) training 2 ranks x B = 1 rank x 2B, resumed 2-rank
run = uninterrupted, the `--nproc-per-node` launcher."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from latentquant.data import get_dataset
from latentquant.nn import VectorQuantizer
from latentquant.train.distributed import Distributed, batch_shard


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _vq_worker(rank: int, world: int, port: int, out: str, restarts: bool) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    layer = VectorQuantizer(4, 16, ema=True, dead_code_threshold=0.5 if restarts else 0.0)
    torch.manual_seed(100 + rank)  # different restart draws on each rank: rank 0's must win
    data = torch.Generator().manual_seed(1)
    for _ in range(5):
        z = torch.randn(2 * 32, 4, generator=data) * 2.0
        layer(z[rank * 32 : (rank + 1) * 32])  # each rank its half of the global batch
    torch.save({k: v.clone() for k, v in layer.state_dict().items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _run_vq(tmp_path, restarts: bool) -> list[dict[str, torch.Tensor]]:
    mp.spawn(_vq_worker, args=(2, _free_port(), str(tmp_path), restarts), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.heavy
def test_vq_ema_codebook_identical_on_ranks_and_equal_to_one_process(tmp_path):
    states = _run_vq(tmp_path, restarts=False)
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    torch.manual_seed(0)
    single = VectorQuantizer(4, 16, ema=True)
    data = torch.Generator().manual_seed(1)
    for _ in range(5):
        single(torch.randn(64, 4, generator=data) * 2.0)
    # the same statistics summed in another order: float32 rounding only
    torch.testing.assert_close(states[0]["codebook"], single.codebook, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(states[0]["ema_cluster_size"], single.ema_cluster_size, rtol=1e-5, atol=1e-6)


@pytest.mark.heavy
def test_vq_dead_code_restarts_identical_on_ranks(tmp_path):
    states = _run_vq(tmp_path, restarts=True)
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_batch_shards_are_disjoint_and_cover_the_global_batch():
    dataset = get_dataset("dsprites")
    shards = []
    for rank in range(3):
        generator = torch.Generator().manual_seed(5)
        shards.append(batch_shard(dataset, 4, generator, Distributed(rank=rank, world_size=3)))
    whole, _ = dataset.sample_batch(12, torch.Generator().manual_seed(5))
    assert torch.equal(torch.cat(shards), whole)
    one = batch_shard(dataset, 12, torch.Generator().manual_seed(5), Distributed())
    assert torch.equal(one, whole)
