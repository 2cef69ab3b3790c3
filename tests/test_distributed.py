"""Data-parallel training on 2 gloo ranks (CPU): the VQ EMA codebook stays identical on every rank and equals
one process on the global batch; batch sharding; (heavy) training 2 ranks x B = 1 rank x 2B (eager and with the
compiled decoder), resumed 2-rank run = uninterrupted, the `--nproc-per-node` launcher."""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_utils import tiny_run

from latentquant.data import get_dataset
from latentquant.nn import VectorQuantizer
from latentquant.train.distributed import Distributed, batch_shard


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _vq_worker(rank: int, world: int, port: int, out: str, restarts: bool) -> None:
    faulthandler.enable(all_threads=True)  # a rank that aborts prints every thread's Python stack
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


# ------------------------------------------------------------------------------------------ training
TINY = tiny_run(steps=6, batch_size=None, eval_samples=200, num_threads=1)


def _train_worker(
    rank: int, world: int, port: int, settings: dict, out: str, resume: bool, fail_writing_on: int = -1
) -> None:
    faulthandler.enable(all_threads=True)  # a rank that aborts prints every thread's Python stack
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from latentquant.train import loop

    if rank == fail_writing_on:

        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device (injected)")

        loop.write_outputs = full_disk
    started, error = time.monotonic(), None
    try:
        loop.train(settings, out, resume=resume, progress=False)
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:  # how this rank ended, and when
        outcome = {"seconds": time.monotonic() - started, "error": error}
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump(outcome, f)


def _train_ranks(world: int, settings: dict, out, resume: bool = False) -> None:
    mp.spawn(_train_worker, args=(world, _free_port(), settings, str(out), resume), nprocs=world, join=True)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    from latentquant.train.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoint.safetensors").model_state


def _two_ranks_and_one_process(settings: dict, tmp_path) -> None:
    """Train 2 ranks x batch 4 (tmp_path/ddp) and one process x batch 8 (tmp_path/one) and compare weights."""
    _train_ranks(2, {**settings, "batch_size": 4}, tmp_path / "ddp")
    from latentquant.train.loop import train

    train({**settings, "batch_size": 8}, tmp_path / "one", progress=False)
    ddp, one = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    assert ddp.keys() == one.keys()
    # The same batches and the same averaged gradient; only the summation order of the gradient differs
    # (two half-batch means averaged vs one mean): float32 rounding, measured max |difference| 9.6e-7 after 6 steps.
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.heavy
def test_two_ranks_of_batch_b_train_like_one_process_of_batch_2b(tmp_path):
    _two_ranks_and_one_process(TINY, tmp_path)

    ddp_log = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    one_log = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    ddp_loss = [r["losses"]["loss"] for r in ddp_log if r["kind"] == "train"]
    one_loss = [r["losses"]["loss"] for r in one_log if r["kind"] == "train"]
    assert ddp_loss == pytest.approx(one_loss, rel=1e-5)  # logged: the mean over the global batch
    assert (tmp_path / "ddp" / "metrics.json").is_file() and (tmp_path / "ddp" / "report.html").is_file()


@pytest.mark.heavy
def test_two_ranks_with_a_compiled_decoder_train_like_one_process(tmp_path):
    """``compile: decoder`` (make demo's setting) under DistributedDataParallel: the decoder compiled in place
    inside the DDP module trains 2 ranks x B like one compiled process of 2B (the same tolerance as eager)."""
    _two_ranks_and_one_process({**TINY, "compile": "decoder"}, tmp_path)

    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["provenance"]["compile"] == "decoder"


@pytest.mark.heavy
def test_resumed_two_rank_run_equals_uninterrupted_and_resumes_on_one_rank(tmp_path):
    settings = {**TINY, "batch_size": 4}
    _train_ranks(2, settings, tmp_path / "straight")
    _train_ranks(2, {**settings, "steps": 4}, tmp_path / "resumed")
    _train_ranks(2, {**settings, "steps": 6}, tmp_path / "resumed", resume=True)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    from latentquant.train.checkpoint import load_checkpoint
    from latentquant.train.loop import train

    result = train({"steps": 8}, tmp_path / "resumed", resume=True, progress=False)  # now 1 rank
    assert result.step == 8 and load_checkpoint(tmp_path / "resumed" / "checkpoint.safetensors").step == 8


@pytest.mark.heavy
def test_a_rank_0_failure_after_training_fails_every_rank_promptly(tmp_path):
    """The ranks meet once more after rank 0 has written the outputs (distributed.teardown): when rank 0 fails
    writing them, rank 1's final wait fails on the closed connection (it does not wait out gloo's 30-minute
    timeout), and the job reports rank 0's error."""
    out = tmp_path / "run"
    args = (2, _free_port(), {**TINY, "batch_size": 4}, str(out), False, 0)
    # Not mp.spawn(join=True): it would SIGTERM rank 1 as soon as rank 0 fails, before we see how rank 1 ends.
    context = mp.start_processes(_train_worker, args=args, nprocs=2, join=False, start_method="spawn")
    for process in context.processes:
        process.join(timeout=600)
    hung = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
    for rank in hung:
        context.processes[rank].kill()
    assert not hung, f"ranks {hung} still running after 10 minutes"
    ends = {r: json.loads((tmp_path / f"run.rank{r}.json").read_text()) for r in range(2)}
    assert [p.exitcode for p in context.processes] == [1, 1], ends
    assert "No space left on device" in ends[0]["error"]
    assert "RuntimeError" in ends[1]["error"], ends[1]  # gloo: connection closed by peer
    assert ends[1]["seconds"] < 300, ends  # well before gloo's 30-minute timeout
    from latentquant.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.safetensors").step == TINY["steps"]  # the final checkpoint stays


@pytest.mark.heavy
def test_gan_models_are_refused_under_ddp(tmp_path):
    with pytest.raises(Exception, match="does not run its forward pass through the DistributedDataParallel"):
        _train_ranks(2, {**TINY, "model": "qlinfowgan", "batch_size": 4}, tmp_path / "gan")


@pytest.mark.heavy
def test_cli_nproc_per_node_launches_torchrun(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in {**TINY, "batch_size": 4}.items()]
    command = [sys.executable, "-m", "latentquant.cli", "train", "--nproc-per-node", "2", "--out", str(out)]
    done = subprocess.run(
        [*command, "--no-progress", *overrides], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("qlae on shapes3d") == 1  # rank 0 alone reports
    assert (out / "metrics.json").is_file()
