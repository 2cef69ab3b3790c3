"""The run directory: its lock (train, resume, overwrite and evaluate refused while another process holds it;
stale locks taken over), atomic outputs (a failed write exits 2 and keeps the last good files; stale
temporary files removed), resume identity (config.yaml vs the checkpoint's copy; recovery of a damaged
config.yaml; steps below the completed ones), runs that fail mid-training, configuration errors found before
any work, signals, and reading runs back (load_run, load_model, export)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from train_utils import tiny_run

import latentquant
from latentquant.cli import main
from latentquant.train import rundir
from latentquant.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from latentquant.train.loop import SignalInterrupt, train
from latentquant.train.run import evaluate_run

TINY = tiny_run()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "run"
    train(TINY, out, progress=False)
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
    out = {f"model.{k}": v for k, v in checkpoint.model_state.items()}
    for name, state in checkpoint.optimizer_states.items():
        for index, entries in state["state"].items():
            out.update({f"optimizer.{name}.{index}.{k}": v for k, v in entries.items()})
    out.update({f"rng.{k}": v for k, v in checkpoint.rng.items()})
    return out


def _assert_same_tensors(a: Path, b: Path) -> None:
    first, second = _tensors(a), _tensors(b)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0, msg=key)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# ------------------------------------------------------------------------------------------ the lock
def test_lock_refuses_a_second_holder_naming_it(tmp_path):
    with rundir.lock_run(tmp_path, "train"):
        holder = json.loads((tmp_path / rundir.LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(ValueError, match=rf"in use by pid {os.getpid()} on host .* \(train since"):
            with rundir.lock_run(tmp_path, "evaluate"):
                pass
    assert not (tmp_path / rundir.LOCK_NAME).exists()  # released
    with rundir.lock_run(tmp_path, "evaluate"):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    pid = _dead_pid()
    (tmp_path / rundir.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    with rundir.lock_run(tmp_path, "train"):
        assert json.loads((tmp_path / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"pid {pid} had stopped" in capsys.readouterr().err
    # A dead owner whose flock survives in a process that inherited the descriptor: broken, not obeyed.
    path = tmp_path / rundir.LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "purpose": "train"}))
    inherited = os.open(path, os.O_RDWR)
    import fcntl

    fcntl.flock(inherited, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with rundir.lock_run(tmp_path, "train"):
            assert json.loads(path.read_text())["pid"] == os.getpid()
        assert f"from pid {pid} (no longer running)" in capsys.readouterr().err
    finally:
        os.close(inherited)


def test_train_resume_overwrite_and_evaluate_are_refused_while_locked(run_copy):
    before = _files(run_copy)
    lock = rundir.acquire_lock(run_copy, "train")
    try:
        for attempt in (
            lambda: train({**TINY, "seed": 1}, run_copy, progress=False),
            lambda: train({**TINY, "overwrite": True}, run_copy, progress=False),
            lambda: train({}, run_copy, resume=True, progress=False),
            lambda: evaluate_run(run_copy),
        ):
            with pytest.raises(ValueError, match=rf"{run_copy} is in use by pid {os.getpid()}"):
                attempt()
    finally:
        lock.release()
    after = _files(run_copy)
    assert after == before  # nothing deleted, rewritten or appended


# ------------------------------------------------------------------------------------------ atomic outputs
def test_stale_temporary_files_are_removed_at_start(run_copy):
    (run_copy / ".checkpoint.safetensors.tmp-4242").write_bytes(b"partial")
    (run_copy / ".outputs.tmp-4242").mkdir()
    (run_copy / ".outputs.tmp-4242" / "report.html").write_text("<html")
    (run_copy / "notes.tmp-1").write_text("a user's file")
    evaluate_run(run_copy, eval_samples=100)
    names = sorted(p.name for p in run_copy.iterdir())
    assert ".checkpoint.safetensors.tmp-4242" not in names and ".outputs.tmp-4242" not in names
    assert "notes.tmp-1" in names
    assert not any(n.startswith(".") and ".tmp-" in n for n in names)


def test_disk_full_while_writing_the_report_exits_2_and_keeps_the_last_outputs(run_copy, monkeypatch, capsys):
    import latentquant.train.run as run_module

    before = _files(run_copy)
    real_write_html = run_module.write_html

    def full_disk(out_dir, *args, **kwargs):
        (out_dir / "report.html").write_text("<!DOCTYPE html><html><head>")  # a truncated page
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "report.html"))

    monkeypatch.setattr(run_module, "write_html", full_disk)
    code, err = _cli(["evaluate", run_copy, "--samples", "100"], capsys)
    assert code == 2
    assert f"could not write {run_copy / 'report.html'}: No space left on device" in err
    after = _files(run_copy)
    for name in [
        "report.html",
        "metrics.json",
        "nmi.png",
        "losses.png",
        "traversals.png",
        "reconstructions.png",
    ]:
        assert after[name] == before[name], name
    assert not [p.name for p in run_copy.iterdir() if ".tmp-" in p.name]
    monkeypatch.setattr(run_module, "write_html", real_write_html)


def test_failed_config_write_keeps_the_old_config(tmp_path, monkeypatch):
    rundir.write_config(tmp_path, {"model": "qlae", "steps": 5})
    monkeypatch.setattr(
        os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left"))
    )
    with pytest.raises(rundir.OutputWriteError, match=r"could not write .*config.yaml: No space left"):
        rundir.write_config(tmp_path, {"model": "ae", "steps": 7})
    monkeypatch.undo()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"model": "qlae", "steps": 5}
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


# ------------------------------------------------------------------------------------------ resume identity
def test_tampered_checkpoint_is_refused_by_resume_and_evaluate(run_copy, capsys):
    path = run_copy / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    data[-5000:-4984] = bytes(16)
    path.write_bytes(bytes(data))
    for argv in (["train", "--resume", run_copy], ["evaluate", run_copy]):
        code, err = _cli(argv, capsys)
        assert code == 2 and "tensors_sha256" in err and str(path) in err


def test_checkpoint_of_another_run_is_refused_naming_the_differences(run_copy, tmp_path):
    other = tmp_path / "other"
    train({**TINY, "seed": 1, "steps": 2}, other, progress=False)
    shutil.copy(other / CHECKPOINT_NAME, run_copy / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=r"belongs to another run.*seed: 0 != 1"):
        train({}, run_copy, resume=True, progress=False)


def test_damaged_config_yaml_is_recovered_from_the_checkpoint(run_copy, capsys):
    config_path = run_copy / "config.yaml"
    config_path.write_text(config_path.read_text()[:60])  # truncated mid-write (old non-atomic rewrite)
    train({"steps": 5}, run_copy, resume=True, progress=False)
    assert "config.yaml is damaged" in capsys.readouterr().err
    config = yaml.safe_load(config_path.read_text())
    assert config["batch_size"] == 8 and config["steps"] == 5 and config["encoder"] == "tiny"
    assert load_checkpoint(run_copy / CHECKPOINT_NAME).step == 5
    config_path.write_text("model: [unclosed\n")
    train({}, run_copy, resume=True, progress=False)
    assert yaml.safe_load(config_path.read_text())["batch_size"] == 8


def test_resume_with_fewer_steps_than_completed_is_refused(run_copy):
    before = _files(run_copy)
    with pytest.raises(ValueError, match=r"steps=2 is smaller than the 4 steps .* give steps >= 4"):
        train({"steps": 2}, run_copy, resume=True, progress=False)
    assert _files(run_copy) == before


def test_failure_before_the_first_checkpoint_leaves_a_resumable_directory(finished, tmp_path, monkeypatch):
    from latentquant.data.shapes3d import Shapes3D

    real = Shapes3D.sample_batch
    calls = {"n": 0}

    def corrupt_chunk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("data file: corrupt gzip chunk at byte 1234")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Shapes3D, "sample_batch", corrupt_chunk)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="corrupt gzip chunk"):
        train(TINY, out, progress=False)
    with pytest.raises(ValueError, match="already holds a training run; continue it with --resume"):
        train(TINY, out, progress=False)
    result = train({}, out, resume=True, progress=False)
    assert result.step == 4 and not (out / rundir.LOCK_NAME).exists()
    _assert_same_tensors(finished, out)


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{file}"], "is a file, not a directory"),
        (["--out", "{file}/sub"], "is a file, not a directory"),
        (["--out", "{tmp}/a", "device=cudafoo"], "setting 'device': 'cudafoo' is not a device"),
        (["--out", "{tmp}/a", "device=mps"], "type 'mps' is not supported"),
        (["--out", "{tmp}/a", "eval_samples=1"], "'eval_samples' must be >= 100"),
        (["--out", "{tmp}/a", "model_args.num_values=abc"], "'model_args.num_values' must be an integer"),
        (
            ["--out", "{tmp}/a", "model_args.quantization_weight=x"],
            "'model_args.quantization_weight' must be",
        ),
    ],
)
def test_configuration_errors_exit_2_before_any_work(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(tmp_path / "file")) for a in argv]
    code, err = _cli(["train", "--model", "qlae", *argv, "encoder=tiny", "decoder=tiny"], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "a").exists()  # nothing was created
    assert (tmp_path / "file").read_text() == "not a directory"


def test_cuda_device_without_cuda_is_refused_before_training(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    code, err = _cli(["train", "--out", tmp_path / "a", "device=cuda:0", "encoder=tiny"], capsys)
    assert code == 2 and "no CUDA device is available" in err and not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------ signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_and_sigusr1_checkpoint_like_sigint(signum, finished, tmp_path, capsys):
    def send_at_three(step, losses):
        if step == 3:
            os.kill(os.getpid(), signum)

    out = tmp_path / "run"
    result = train(TINY, out, on_step=send_at_three, progress=False)
    assert result.interrupted and result.step == 3 and result.signal == signum
    err = capsys.readouterr().err
    assert f"Interrupted by {signal.Signals(signum).name} at step 3" in err
    assert f"Resume with: latentquant train --resume {out}" in err
    assert load_checkpoint(out / CHECKPOINT_NAME).step == 3
    train({}, out, resume=True, progress=False)
    _assert_same_tensors(finished, out)


def test_second_signal_during_the_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import latentquant.train.loop as loop

    real_save = loop.save_checkpoint

    def send_at_three(step, losses):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    def save_then_signal(path, state):
        if state.step == 3:  # the checkpoint written because of the first signal: a second one arrives
            os.kill(os.getpid(), signal.SIGTERM)
        real_save(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_signal)
    out = tmp_path / "run"
    with pytest.raises(SignalInterrupt):
        train(TINY, out, on_step=send_at_three, progress=False)
    assert load_checkpoint(out / CHECKPOINT_NAME).step == 2
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or p.name == rundir.LOCK_NAME]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_second_signal_stops_at_once_without_a_new_checkpoint(tmp_path, capsys):
    def twice_at_three(step, losses):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR1)

    out = tmp_path / "run"
    result = train(TINY, out, on_step=twice_at_three, progress=False)
    assert result.interrupted and result.signal == signal.SIGUSR1
    assert load_checkpoint(out / CHECKPOINT_NAME).step == 2
    assert f"the last checkpoint in {out} is kept" in capsys.readouterr().err


def test_cli_exit_status_is_128_plus_the_signal(tmp_path, monkeypatch, capsys):
    import latentquant.train.loop as loop

    monkeypatch.setattr(
        loop, "train", lambda *a, **k: loop.TrainResult(tmp_path, 3, True, None, None, signal.SIGTERM)
    )
    assert _cli(["train", "--out", tmp_path], capsys)[0] == 128 + signal.SIGTERM


# ------------------------------------------------------------------------------------------ reading runs back
def test_load_run_and_load_model_give_the_trained_model_in_eval_mode(finished):
    model, config = latentquant.load_run(finished)
    assert not model.training and config.steps == 4 and config.encoder == "tiny"
    checkpoint = load_checkpoint(finished / CHECKPOINT_NAME)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, checkpoint.model_state[key], rtol=0, atol=0)
    again = latentquant.load_model(finished / CHECKPOINT_NAME, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x)["x_hat_logits"], model(x)["x_hat_logits"], rtol=0, atol=0)


def test_export_writes_weights_only_and_load_model_reads_it(finished, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    code, _ = _cli(["export", finished, out], capsys)
    assert code == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    model, config = latentquant.load_run(finished)
    assert sorted(keys) == sorted(model.state_dict())  # no "model." prefix, no optimizer or RNG state
    assert metadata["format"] == "latentquant-model" and json.loads(metadata["config"]) == config.to_dict()
    assert len(metadata["tensors_sha256"]) == 64 and metadata["step"] == "4"
    loaded = latentquant.load_model(out)
    assert not loaded.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    code, err = _cli(["export", finished, out], capsys)
    assert code == 2 and "already exists" in err
    code, err = _cli(["export", finished, finished / CHECKPOINT_NAME, "--overwrite"], capsys)
    assert code == 2 and "the run's own checkpoint" in err
    data = bytearray(out.read_bytes())
    data[-100] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tensors_sha256"):
        latentquant.load_model(out)
