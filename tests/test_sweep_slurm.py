"""``latentquant sweep --launcher slurm`` end to end against the fake Slurm of ``tests/fake_slurm`` (sbatch,
srun, sacct, squeue, scancel running jobs as local processes): the sbatch script's parameters, submission
as one job array, waiting, skipping complete runs, failures with their logs, ``--no-wait`` and a later
sweep that waits for the queued jobs instead of submitting them again, and the time-limit signal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_settings import TINY_RUN

from latentquant.cli import main

FAKE_SLURM = Path(__file__).parent / "fake_slurm"
TINY = TINY_RUN


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """The fake Slurm on PATH (for this process and its children), its state in ``tmp_path/cluster``;
    every job still queued or running is cancelled afterwards."""
    state = tmp_path / "cluster"
    state.mkdir()
    env = {
        "PATH": f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SLURM_DIR": str(state),
        "FAKE_SLURM_PYTHON": sys.executable,
        "FAKE_SLURM_KILL_WAIT": "2",
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield state
    (state / "hold").unlink(missing_ok=True)
    for job in (state / "jobs").iterdir():
        subprocess.run([str(FAKE_SLURM / "scancel"), job.name], capture_output=True)


def _jobs(state: Path) -> list[str]:
    return sorted(p.name for p in (state / "jobs").iterdir())


def _sacct(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("|")[0]: line.split("|")[1] for line in out.splitlines()[1:] if "." not in line}


def _settled(job_id: str, timeout: float = 60) -> dict[str, str]:
    """sacct's states once no task is pending or running (a task's result is written before its process
    has exited, as on Slurm, where a job that returned still shows RUNNING or COMPLETING for a moment)."""
    deadline = time.time() + timeout
    while True:
        states = _sacct(job_id)
        if time.time() > deadline or not {"PENDING", "RUNNING"} & set(states.values()):
            return states
        time.sleep(0.2)


def _sweep_args(out: Path, models: str = "qlae,ae", seeds: str = "0", steps: int = 4) -> list[str]:
    return [
        "sweep",
        "--launcher",
        "slurm",
        "--partition",
        "x",
        "--cpus-per-task",
        "1",
        "--models",
        models,
        "--datasets",
        "shapes3d",
        "--seeds",
        seeds,
        "--out",
        str(out),
        *TINY,
        f"steps={steps}",
    ]


def _cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "latentquant.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
    )


# ------------------------------------------------------------------------------------ fast: no training


def test_slurm_parameters_reach_the_sbatch_script_and_queued_jobs_are_not_submitted_twice(
    cluster, tmp_path, capsys
):
    (cluster / "hold").touch()  # a busy cluster: the jobs stay PENDING, nothing trains
    out = tmp_path / "study"
    args = _sweep_args(out) + [
        "--timeout-min",
        "30",
        "--mem-gb",
        "2.5",
        "--gpus-per-node",
        "1",
        "--max-parallel",
        "1",
        "--slurm",
        "account:proj",
        "--slurm",
        "qos:high",
        "--slurm",
        "signal_delay_s:120",
        "--no-wait",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "2 submitted" in text, text
    [job_id] = _jobs(cluster)
    script = (out / ".submitit" / f"{job_id}_submission.sh").read_text()
    sbatch = set(re.findall(r"^#SBATCH (\S+)$", script, re.MULTILINE))
    for line in (
        "--partition=x",
        "--cpus-per-task=1",
        "--time=30",
        "--mem=2560MB",
        "--gpus-per-node=1",
        "--account=proj",
        "--qos=high",
        "--signal=USR2@120",
        "--array=0-1%1",
        "--job-name=latentquant",
        "--nodes=1",
        "--ntasks-per-node=1",
    ):
        assert line in sbatch, (line, sorted(sbatch))
    assert json.loads((out / ".submitit" / "slurm_jobs.json").read_text()) == {
        "qlae-shapes3d-seed0": f"{job_id}_0",
        "ae-shapes3d-seed0": f"{job_id}_1",
    }
    # the pending tasks as sacct prints them (one bracketed line): submitit reads both as PENDING
    assert _sacct(job_id) == {f"{job_id}_[0-1%1]": "PENDING"}

    # again while they are queued: they are waited for (here: not, --no-wait), not submitted a second time
    assert main(args) == 0
    text = capsys.readouterr().out
    assert _jobs(cluster) == [job_id], text
    assert text.count("not submitted again") == 2 and "2 already queued by an earlier sweep" in text, text
    assert not re.search(r"^submitted ", text, re.MULTILINE), text

    # once the jobs are gone (cancelled), the runs are submitted again
    subprocess.run(["scancel", job_id], check=True)
    assert _sacct(job_id) == {f"{job_id}_0": "CANCELLED", f"{job_id}_1": "CANCELLED"}
    assert main(args) == 0
    text = capsys.readouterr().out
    assert len(_jobs(cluster)) == 2 and "2 submitted" in text, text
    assert re.search(rf"earlier  qlae-shapes3d-seed0: job {job_id}_0 ended CANCELLED", text), text


def test_slurm_launcher_needs_srun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun: not a Slurm machine
    assert main(_sweep_args(tmp_path / "study")) == 2
    assert "--launcher slurm" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


# ------------------------------------------------------------------------------------------- heavy


@pytest.mark.heavy
def test_slurm_sweep_runs_a_grid_to_completion_and_skips_it_next_time(cluster, tmp_path, capsys):
    out = tmp_path / "study"
    args = _sweep_args(out, seeds="0,1") + ["--max-parallel", "2"]
    done = _cli(args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 completed now" in done.stdout and done.stdout.count("\ndone     ") == 4, done.stdout
    [job_id] = _jobs(cluster)  # one job array
    script = (out / ".submitit" / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%2" in script
    names = [f"{m}-shapes3d-seed{s}" for m in ("qlae", "ae") for s in (0, 1)]
    for name in names:
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["steps"] == 4 and metrics["model"] == name.split("-")[0]
        assert "num_threads: 1" in (out / name / "config.yaml").read_text()  # --cpus-per-task 1
    assert _settled(job_id) == {f"{job_id}_{i}": "COMPLETED" for i in range(4)}
    # the array's %2: never more than 2 tasks at once
    spans = [json.loads((cluster / "jobs" / job_id / f"task_{i}.json").read_text()) for i in range(4)]
    for span in spans:  # the tasks running when each one started
        running = [s for s in spans if s["start"] <= span["start"] < s["end"]]
        assert len(running) <= 2, spans
    assert max(len([s for s in spans if s["start"] <= t["start"] < s["end"]]) for t in spans) == 2, spans
    # each task ran in its own Slurm environment (array ids, rank 0)
    log = (out / ".submitit" / f"{job_id}_3_0_log.out").read_text()
    assert f"job_id={job_id}_3" in log and "global_rank=0(1)" in log, log

    assert main(["table", str(out), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    shapes = {(r["model"], r["metric"]): r["n"] for r in records if r["dataset"] == "shapes3d"}
    assert shapes[("qlae", "infom")] == 2 and shapes[("ae", "infom")] == 2, records

    again = _cli(args)
    assert again.returncode == 0 and "4 already complete, 0 completed now" in again.stdout, again.stdout
    assert _jobs(cluster) == [job_id]  # nothing submitted


@pytest.mark.heavy
def test_slurm_no_wait_then_a_later_sweep_waits_and_a_failed_run_is_reported_with_its_log(cluster, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "ae-shapes3d-seed0").write_text("not a directory")  # this run fails at train time
    (cluster / "hold").touch()
    started = time.time()
    submitted = _cli(_sweep_args(out) + ["--no-wait"])
    assert submitted.returncode == 0 and "2 submitted" in submitted.stdout, (
        submitted.stdout + submitted.stderr
    )
    [job_id] = _jobs(cluster)
    assert _sacct(job_id) == {f"{job_id}_[0-1%2]": "PENDING"}
    assert time.time() - started < 120  # returned without waiting for anything

    (cluster / "hold").unlink()
    waited = _cli(_sweep_args(out))
    text = waited.stdout
    assert waited.returncode == 1, text + waited.stderr
    assert _jobs(cluster) == [job_id], text  # the queued jobs were waited for, not submitted again
    assert "1 completed now" in text and "1 failed" in text, text
    assert (out / "qlae-shapes3d-seed0" / "metrics.json").is_file()
    failed = re.search(r"^FAILED   ae-shapes3d-seed0: (.*)\n\s+log: (\S+)$", text, re.MULTILINE)
    assert failed is not None, text
    reason, log = failed[1], Path(failed[2])
    assert re.match(r"\w+(Error|Exception)\b", reason), reason  # the exception, not a path or a dashed line
    assert log == out / ".submitit" / f"{job_id}_1_0_log.err"
    assert reason in log.read_text() and "Traceback" in log.read_text()
    assert _settled(job_id) == {f"{job_id}_0": "COMPLETED", f"{job_id}_1": "FAILED"}

    (out / "ae-shapes3d-seed0").unlink()  # fixed: the next sweep retries the failed run only
    retried = _cli(_sweep_args(out))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "1 already complete, 1 completed now" in retried.stdout, retried.stdout
    assert f"job {job_id}_1 ended FAILED" in retried.stdout, retried.stdout
    assert len(_jobs(cluster)) == 2
    assert json.loads((out / "ae-shapes3d-seed0" / "metrics.json").read_text())["steps"] == 4


@pytest.mark.heavy
def test_slurm_time_limit_signal_stops_a_run_with_a_checkpoint_that_the_next_sweep_resumes(cluster, tmp_path):
    from latentquant.train.checkpoint import load_checkpoint

    out = tmp_path / "study"
    run = out / "qlae-shapes3d-seed0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentquant.cli", *_sweep_args(out, models="qlae", steps=100_000)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (
            (run / "log.jsonl").is_file() and (run / "log.jsonl").read_text()
        ):
            time.sleep(0.5)
        [job_id] = _jobs(cluster)
        # what Slurm does --signal=USR2@90 ahead of the time limit (submitit's job._interrupt(timeout=True))
        subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
        text, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, text
    stopped = re.search(r"stopped  qlae-shapes3d-seed0 at step (\d+) \(resumable\)", text)
    assert stopped is not None, text
    step = int(stopped[1])
    assert 0 < step < 100_000
    assert load_checkpoint(run / "checkpoint.safetensors").step == step  # written at the stop
    assert _settled(job_id) == {job_id: "COMPLETED"}

    resumed = _cli(_sweep_args(out, models="qlae", steps=step + 3))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["steps"] == step + 3
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in log if r["kind"] == "train"]
    assert train_steps[-1] == step + 3 and train_steps == sorted(train_steps)  # resumed, not restarted
