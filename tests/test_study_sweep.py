"""latentquant.study.sweep: grid expansion and names, seeds and sweep syntax, thread budget, run states
(skip / resume / new), failure reporting, executor set-up; one real local submitit sweep (heavy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_settings import TINY_RUN

from latentquant.cli import main
from latentquant.study.sweep import (
    expand_grid,
    expand_overrides,
    grid_overrides,
    make_executor,
    parse_names,
    parse_seeds,
    run_state,
    run_sweep,
    split_sweep_values,
    thread_budget,
)

TINY = [*TINY_RUN, "steps=4"]


def test_parse_seeds():
    assert parse_seeds("0-6") == list(range(7))
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("0-2, 7") == [0, 1, 2, 7]
    for bad in ("", "a", "3-1", "0,0", "-1", "1-"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_parse_names_checks_the_registry():
    assert parse_names("qlae, ae", "--models", ["qlae", "ae", "vae"]) == ["qlae", "ae"]
    with pytest.raises(ValueError, match=r"--models: unknown \['gan'\]"):
        parse_names("qlae,gan", "--models", ["qlae", "ae"])
    with pytest.raises(ValueError, match="twice"):
        parse_names("qlae,qlae", "--models", None)


def test_sweep_syntax_splits_outside_brackets():
    assert split_sweep_values("1,2") == ["1", "2"]
    assert split_sweep_values("[1,2]") == ["[1,2]"]
    assert split_sweep_values("[1,2],[3]") == ["[1,2]", "[3]"]
    assert split_sweep_values("'a,b'") == ["'a,b'"]
    fixed, swept = expand_overrides(["steps=10", "lr=0.001,0.0003"])
    assert fixed == ["steps=10"] and swept == [("lr", ["lr=0.001", "lr=0.0003"])]
    for bad, match in (("seed=0,1", "--seeds"), ("lr=1,,2", "empty value"), ("nokey", "key=value")):
        with pytest.raises(ValueError, match=match):
            expand_overrides([bad])
    with pytest.raises(ValueError, match="twice"):
        expand_overrides(["lr=1", "lr=2"])


def test_grid_settings_as_overrides():
    rest, grid = grid_overrides(["model=qlae,ae", "data.name=shapes3d", "seed=0-2", "optim.lr=1,2", "x"])
    assert rest == ["optim.lr=1,2", "x"]
    assert grid == {"model": "qlae,ae", "dataset": "shapes3d", "seed": "0-2"}
    with pytest.raises(ValueError, match="given twice"):
        grid_overrides(["model=qlae", "model.name=ae"])


def test_cli_grid_from_overrides_and_conflicts(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["sweep", "model=qlae", "dataset=shapes3d", "seed=0,1", "--out", str(out), "steps=abc"]
    assert main(args) == 2  # the grid parsed; the bad steps value is refused before anything starts
    assert "run qlae-shapes3d-seed0: setting 'steps' must be an integer" in capsys.readouterr().err
    assert (
        main(
            [
                "sweep",
                "--models",
                "qlae",
                "--datasets",
                "shapes3d",
                "--seeds",
                "0",
                "seed=1",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "--seeds and the override seed=1" in capsys.readouterr().err
    assert main(["sweep", "--datasets", "shapes3d", "--out", str(out)]) == 2
    assert not out.exists()


def test_expand_grid_names_and_settings(tmp_path):
    specs = expand_grid(
        ["qlae", "beta_vae"],
        ["shapes3d"],
        [0, 1],
        tmp_path,
        ["steps=10", "model.args.num_values=8,12"],
        base={"batch_size": 32, "steps": 5},
    )
    names = [s.name for s in specs]
    assert len(specs) == 8
    assert names[:4] == [
        "qlae-shapes3d-model.args.num_values=8-seed0",
        "qlae-shapes3d-model.args.num_values=8-seed1",
        "qlae-shapes3d-model.args.num_values=12-seed0",
        "qlae-shapes3d-model.args.num_values=12-seed1",
    ]
    first = specs[0]
    assert first.run_dir == tmp_path / first.name
    assert first.settings["model"] == "qlae" and first.settings["seed"] == 0
    assert first.settings["steps"] == 10 and first.settings["batch_size"] == 32  # override > base
    assert first.settings["model_args"] == {"num_values": 8}
    plain = expand_grid(["ae"], ["dsprites"], [3], tmp_path)
    assert [s.name for s in plain] == ["ae-dsprites-seed3"]


def test_thread_budget():
    assert thread_budget(1, cores=2) == 2
    assert thread_budget(2, cores=2) == 1
    assert thread_budget(3, cores=2) == 1
    assert thread_budget(2, cores=16) == 8


def _fake_run(run_dir: Path, steps_done: int | None, checkpoint: bool = True) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: qlae\n")
    if checkpoint:
        (run_dir / "checkpoint.safetensors").write_bytes(b"x")
    if steps_done is not None:
        (run_dir / "metrics.json").write_text(json.dumps({"model": "qlae", "steps": steps_done}))


def test_run_state(tmp_path):
    settings = {"model": "qlae", "steps": 100}
    assert run_state(tmp_path / "none", settings) == "new"
    _fake_run(tmp_path / "started", None, checkpoint=False)
    assert run_state(tmp_path / "started", settings) == "new"  # died before its first checkpoint
    _fake_run(tmp_path / "partial", None)
    assert run_state(tmp_path / "partial", settings) == "resume"
    _fake_run(tmp_path / "done", 100)
    assert run_state(tmp_path / "done", settings) == "complete"
    assert run_state(tmp_path / "done", {**settings, "steps": 200}) == "resume"  # extended: continue it


class _Job:
    def __init__(self, fn, args, fail: bool) -> None:
        self.job_id = str(id(self))
        self.fn, self.args, self.fail = fn, args, fail
        self.paths = type("P", (), {"stdout": Path(f"/logs/{self.job_id}.out"), "stderr": Path("/x")})()

    def done(self) -> bool:
        return True

    def result(self):
        if self.fail:
            raise RuntimeError("Job failed\nValueError: boom")
        return {"state": "complete", "step": 4, "metrics": {"infom": 0.5}}


class _Executor:
    """Records submissions instead of running them (the heavy test runs submitit for real)."""

    def __init__(self, folder: Path, fail: set[str]) -> None:
        self.folder, self.fail, self.calls = folder, fail, []

    def submit(self, fn, settings, run_dir, num_threads, pid_file):
        self.calls.append((settings, run_dir, num_threads, pid_file))
        return _Job(fn, (settings, run_dir), Path(run_dir).name in self.fail)


def test_run_sweep_skips_complete_runs_and_reports_failures(tmp_path):
    specs = expand_grid(["qlae", "ae"], ["shapes3d"], [0, 1], tmp_path, ["steps=100"])
    _fake_run(specs[0].run_dir, 100)  # complete
    _fake_run(specs[1].run_dir, None)  # resumable
    executor = _Executor(tmp_path / ".submitit", fail={"ae-shapes3d-seed0"})
    lines: list[str] = []
    report = run_sweep(specs, executor, "local", max_parallel=2, num_threads=1, echo=lines.append)
    assert report.skipped == ["qlae-shapes3d-seed0"]
    assert sorted(report.completed) == ["ae-shapes3d-seed1", "qlae-shapes3d-seed1"]
    assert list(report.failed) == ["ae-shapes3d-seed0"]
    assert "ValueError: boom" in report.failed["ae-shapes3d-seed0"]
    assert "/logs/" in report.failed["ae-shapes3d-seed0"]
    assert [Path(c[1]).name for c in executor.calls] == [s.name for s in specs[1:]]
    assert all(c[0]["num_threads"] == 1 and c[2] == 1 for c in executor.calls)
    assert any(line.startswith("FAILED") and "log:" in line for line in lines)


def test_run_sweep_caps_a_runs_num_threads_at_the_budget(tmp_path):
    # demo.yaml pins num_threads: 2; two such runs at once on 2 cores oversubscribed them (< 0.6 steps/s)
    specs = expand_grid(["qlae"], ["shapes3d"], [0, 1], tmp_path, ["num_threads=3"])
    specs += expand_grid(["ae"], ["shapes3d"], [0], tmp_path, ["run.num_threads=1"])
    executor = _Executor(tmp_path, fail=set())
    run_sweep(specs, executor, "local", max_parallel=2, num_threads=2, echo=lambda _: None)
    threads = {Path(c[1]).name: c[0]["num_threads"] for c in executor.calls}
    assert threads == {"qlae-shapes3d-seed0": 2, "qlae-shapes3d-seed1": 2, "ae-shapes3d-seed0": 1}


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    import submitit.slurm.slurm

    with pytest.raises(ValueError, match="--launcher slurm"):  # no srun on this machine
        make_executor("slurm", tmp_path)
    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", staticmethod(lambda: 1))
    executor = make_executor(
        "slurm",
        tmp_path,
        timeout_min=60,
        partition="gpu",
        gpus_per_node=1,
        cpus_per_task=8,
        max_parallel=4,
        slurm_args={"slurm_account": "proj"},
    )
    params = executor._executor.parameters
    assert params["partition"] == "gpu" and params["time"] == 60 and params["gpus_per_node"] == 1
    assert params["cpus_per_task"] == 8 and params["array_parallelism"] == 4 and params["account"] == "proj"
    with pytest.raises(ValueError, match="--launcher"):
        make_executor("pbs", tmp_path)


def test_cli_refuses_unknown_models_and_bad_settings_before_starting(tmp_path, capsys):
    assert main(["sweep", "--models", "qlae,nope", "--datasets", "shapes3d", "--out", str(tmp_path)]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    args = ["sweep", "--models", "qlae", "--datasets", "shapes3d", "--out", str(tmp_path), "steps=abc"]
    assert main(args) == 2
    assert "steps" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- heavy
def _sweep_command(out: Path, steps: int, seeds: str = "0") -> list[str]:
    overrides = [t for t in TINY if not t.startswith(("steps=", "checkpoint_every="))]
    return [
        sys.executable,
        "-m",
        "latentquant.cli",
        "sweep",
        "--models",
        "qlae,ae",
        "--datasets",
        "shapes3d",
        "--seeds",
        seeds,
        "--out",
        str(out),
        "--max-parallel",
        "2",
        *overrides,
        f"steps={steps}",
        f"checkpoint_every={max(2, steps // 4)}",
    ]


@pytest.mark.heavy
def test_local_sweep_runs_skips_and_resumes(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(_sweep_command(out, 4), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("qlae-shapes3d-seed0", "ae-shapes3d-seed0"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["steps"] == 4 and metrics["model"] == name.split("-")[0]
        assert "num_threads: 1" in (out / name / "config.yaml").read_text()  # 2 cores // 2 runs
    again = subprocess.run(_sweep_command(out, 4), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "2 already complete" in again.stdout
    longer = subprocess.run(_sweep_command(out, 6), capture_output=True, text=True, env=env, timeout=600)
    assert longer.returncode == 0, longer.stdout
    assert "0 already complete, 2 completed now" in longer.stdout
    log = [json.loads(line) for line in (out / "ae-shapes3d-seed0" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [2, 4, 6]  # resumed at 4, not restarted
    assert main(["table", str(out), "--format", "json"]) == 0


@pytest.mark.heavy
def test_local_sweep_sigterm_stops_its_runs_resumable(tmp_path):
    """`kill PID` of the sweep alone (not its process group): its runs stop with a checkpoint instead of
    training on as orphans that hold their directories' locks (fails on the sweep without the handler)."""
    out = tmp_path / "study"
    proc = subprocess.Popen(
        _sweep_command(out, 100_000, seeds="0,1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    names = ("qlae-shapes3d-seed0", "qlae-shapes3d-seed1")
    deadline = time.time() + 300
    while time.time() < deadline and not all(
        (out / n / "log.jsonl").is_file() and (out / n / "log.jsonl").read_text() for n in names
    ):
        time.sleep(0.5)
    pids = [int((out / ".submitit" / f"{n}.task.pid").read_text()) for n in names]
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, text
    assert "2 interrupted" in text and "2 not started" in text, text
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids), "a run kept training after the sweep was terminated"
    from latentquant.train.checkpoint import load_checkpoint

    for name in names:
        assert 0 < load_checkpoint(out / name / "checkpoint.safetensors").step < 100_000
        assert run_state(out / name, {"model": "qlae", "steps": 100_000}) == "resume"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its submitit parent) is not training
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.heavy
def test_local_sweep_ctrl_c_leaves_runs_resumable(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # like a terminal's Ctrl-C: SIGINT to the sweep's whole process group
    proc = subprocess.Popen(
        _sweep_command(out, 100_000, seeds="0,1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
        # Python leaves SIGINT ignored (no KeyboardInterrupt) when it starts with it ignored, as every
        # background job of a non-interactive shell does (`cmd &`, nohup): give the sweep a terminal's default
        restore_signals=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    logs = [out / n / "log.jsonl" for n in ("qlae-shapes3d-seed0", "qlae-shapes3d-seed1")]
    while time.time() < deadline and not all(p.is_file() and p.read_text() for p in logs):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, text
    assert "2 interrupted" in text and "2 not started" in text, text
    from latentquant.train.checkpoint import load_checkpoint

    for name in ("qlae-shapes3d-seed0", "qlae-shapes3d-seed1"):
        step = load_checkpoint(out / name / "checkpoint.safetensors").step
        assert 0 < step < 100_000
        assert run_state(out / name, {"model": "qlae", "steps": 100_000}) == "resume"
    assert not (out / "ae-shapes3d-seed0").exists()


@pytest.mark.heavy
def test_train_run_restarts_a_run_that_died_before_its_first_checkpoint(tmp_path):
    from latentquant.study.sweep import train_run
    from latentquant.train.config import parse_overrides

    run_dir = tmp_path / "qlae-shapes3d-seed0"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model: qlae\nsteps: 999\n")  # left by a start killed early
    (run_dir / "notes.txt").write_text("mine")
    settings = {"model": "qlae", "dataset": "shapes3d", "seed": 0, **parse_overrides(TINY)}
    result = train_run(settings, str(run_dir), 1, None)
    assert result["state"] == "complete" and result["step"] == 4
    assert (run_dir / "notes.txt").read_text() == "mine"  # only the run's own files were replaced
    assert train_run(settings, str(run_dir), 1, None)["step"] is None  # complete now: skipped


@pytest.mark.parametrize("when", ["before the run starts", "while the loop sets up"])
def test_train_run_keeps_a_ctrl_c_that_arrives_before_the_loop_handles_signals(tmp_path, monkeypatch, when):
    """The sweep forwards Ctrl-C while a task may still be setting up (its inherited SIGINT is ignored
    until the loop installs a handler): the request must stop the run (before it starts, or after its
    first step with a checkpoint), not be lost."""
    from latentquant.study import sweep
    from latentquant.train import loop
    from latentquant.train.checkpoint import load_checkpoint
    from latentquant.train.config import parse_overrides
    from latentquant.train.rundir import CHECKPOINT_NAME

    module, name = (sweep, "run_state") if when == "before the run starts" else (loop, "make_model")
    real = getattr(module, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, signalled)
    run_dir = tmp_path / "qlae-shapes3d-seed0"
    settings = {"model": "qlae", "dataset": "shapes3d", "seed": 0, **parse_overrides(TINY), "steps": 40}
    # a submitit task inherits its controller's ignored SIGINT
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = sweep.train_run(settings, str(run_dir), 1, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the caller's handler is back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result["state"] == "interrupted"
    if when == "before the run starts":
        assert result["step"] is None and not run_dir.exists()
    else:
        assert result["step"] == 1
        assert load_checkpoint(run_dir / CHECKPOINT_NAME).step == 1  # the checkpoint of the stop, resumable


def test_train_run_stops_on_slurms_time_limit_signal_with_a_checkpoint_named_for_it(
    tmp_path, monkeypatch, capsys
):
    """submitit's USR2 (Slurm's warning ahead of the time limit), which the training loop does not handle
    itself: the run stops after its step with a checkpoint, and says it was USR2 (it used to say SIGINT)."""
    from latentquant.study import sweep
    from latentquant.train import loop
    from latentquant.train.checkpoint import load_checkpoint
    from latentquant.train.config import parse_overrides
    from latentquant.train.rundir import CHECKPOINT_NAME

    real = loop.make_model

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR2)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "make_model", signalled)
    run_dir = tmp_path / "qlae-shapes3d-seed0"
    settings = {"model": "qlae", "dataset": "shapes3d", "seed": 0, **parse_overrides(TINY), "steps": 40}
    result = sweep.train_run(settings, str(run_dir), 1, None)
    assert result["state"] == "interrupted" and result["step"] == 1
    assert load_checkpoint(run_dir / CHECKPOINT_NAME).step == 1
    err = capsys.readouterr().err
    assert "Interrupted by SIGUSR2 at step 1; checkpoint written" in err and "SIGINT" not in err
