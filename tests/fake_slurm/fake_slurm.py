"""A fake Slurm for tests: just the commands, arguments and outputs that submitit's Slurm executor uses.

Put ``tests/fake_slurm`` first on ``PATH`` and point ``FAKE_SLURM_DIR`` at an empty folder (the "cluster"'s
state); every command below is a small wrapper that runs this file (with ``$FAKE_SLURM_PYTHON``, default
``python3``; the fake needs only the standard library).

``sbatch [--parsable] SCRIPT``
    Reads the script's ``#SBATCH --key=value`` lines, gives the job the next id, copies the script and its
    parameters to ``$FAKE_SLURM_DIR/jobs/<id>/`` and prints ``Submitted batch job <id>`` (``<id>`` alone
    with ``--parsable``). A detached controller process (its own session, as a real job is no child of the
    submitting shell) then runs the job: each task of ``--array=LOW-HIGH[%P]`` (at most P at once; one task
    without ``--array``) is ``bash SCRIPT`` in the submitting directory with the submitting environment plus
    ``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``, ``SLURM_JOB_NUM_NODES``,
    ``SLURM_NTASKS``, ``SLURM_NODEID``, ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_JOB_NODELIST``,
    ``SLURM_CPUS_PER_TASK``, ``SLURM_JOB_PARTITION``, its stdout/stderr appended to ``--output``/``--error``
    (``%A`` array job id, ``%a`` task index, ``%j`` job id, ``%t`` task rank 0). Task states:
    PENDING -> RUNNING -> COMPLETED (exit 0) / FAILED (other exit) / CANCELLED (``scancel``).
    ``--time`` and the resources are recorded, not enforced. While the file ``$FAKE_SLURM_DIR/hold``
    exists no task starts (a busy cluster: jobs stay PENDING until it is removed).
``srun [--unbuffered] [--output F] [--error F] [other --opts] CMD...``
    Inside a task: records its pid as the task's step (the process ``scancel`` signals), redirects to the
    given files (same patterns) and execs CMD (one task: ``SLURM_PROCID=0``).
``sacct -o FIELDS --parsable2 -j ID [-j ID ...]``
    ``FIELDS``: comma-separated of ``JobID``, ``State``, ``NodeList``, ``ExitCode``. One line per task
    (``<id>_<index>`` for arrays) plus a ``.batch`` step line once it started; the still-pending tasks of an
    array on one line as Slurm prints them, ``<id>_[2-3%2]``. An unknown id prints the header alone.
``squeue [-h] [-j ID]``
    ``JOBID STATE`` for every pending or running task.
``scancel [--signal SIG | -s SIG] ID[_INDEX] ...``
    With a signal: sends it to the running tasks' steps (state unchanged). Without: pending tasks are
    cancelled, running ones get SIGTERM, then SIGKILL after ``$FAKE_SLURM_KILL_WAIT`` seconds (default 5),
    and end CANCELLED.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


def _root() -> Path:
    root = os.environ.get("FAKE_SLURM_DIR")
    if not root:
        sys.exit("fake slurm: set FAKE_SLURM_DIR to the folder that holds the fake cluster's state")
    path = Path(root)
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def _job_dir(job_id: str) -> Path:
    return _root() / "jobs" / job_id


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _task_state(job: Path, index: int) -> dict:
    return _read_json(job / f"task_{index}.json") or {"state": "PENDING"}


def _set_task_state(job: Path, index: int, **fields: object) -> None:
    _write_json(job / f"task_{index}.json", {**_task_state(job, index), **fields})


# ---------------------------------------------------------------------------------------------- sbatch


def _sbatch_options(script: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for line in script.splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?$", line.strip())
        if match:
            value = match[2] if match[2] is not None else "true"
            options[match[1]] = shlex.split(value)[0] if value else ""
    return options


def _next_ids(count: int) -> int:
    """Reserves ``count`` consecutive job ids (an array's tasks each get one, as in Slurm)."""
    counter = _root() / "next_job_id"
    with open(_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        first = int(counter.read_text()) if counter.exists() else 1000
        counter.write_text(str(first + count))
    return first


def _indices(options: dict[str, str]) -> tuple[list[int], int]:
    """The array's task indices and its parallelism (a job without ``--array``: ``[0]``, 1)."""
    array = options.get("array")
    if array is None:
        return [0], 1
    match = re.fullmatch(r"(\d+)-(\d+)(?:%(\d+))?", array)
    if match is None:
        sys.exit(f"sbatch: fake slurm understands --array=LOW-HIGH[%P] only, got {array!r}")
    indices = list(range(int(match[1]), int(match[2]) + 1))
    return indices, int(match[3]) if match[3] else len(indices)


def sbatch(args: list[str]) -> int:
    parsable = "--parsable" in args
    paths = [a for a in args if not a.startswith("-")]
    if len(paths) != 1:
        print("sbatch: fake slurm expects: sbatch [--parsable] SCRIPT", file=sys.stderr)
        return 1
    text = Path(paths[0]).read_text()
    options = _sbatch_options(text)
    indices, _ = _indices(options)
    job_id = str(_next_ids(len(indices)))
    job = _job_dir(job_id)
    job.mkdir()
    (job / "script.sh").write_text(text)
    _write_json(
        job / "job.json",
        {
            "options": options,
            "array": "array" in options,
            "indices": indices,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "submitted": time.time(),
        },
    )
    for index in indices:
        _set_task_state(job, index, state="PENDING")
    with open(os.devnull, "rb") as devnull_in, open(job / "controller.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_controller", job_id],
            stdin=devnull_in,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    print(job_id if parsable else f"Submitted batch job {job_id}")
    return 0


def _expand(pattern: str, env: dict[str, str]) -> str:
    array_job = env.get("SLURM_ARRAY_JOB_ID", env["SLURM_JOB_ID"])
    return (
        pattern.replace("%A", array_job)
        .replace("%a", env.get("SLURM_ARRAY_TASK_ID", "4294967294"))
        .replace("%j", env["SLURM_JOB_ID"])
        .replace("%t", env.get("SLURM_PROCID", "0"))
        .replace("%N", "localhost")
    )


def _start_task(job_id: str, job: Path, info: dict, index: int) -> subprocess.Popen:
    options = info["options"]
    env = dict(info["env"])
    task_job_id = str(int(job_id) + index - info["indices"][0])
    env.update(
        SLURM_JOB_ID=task_job_id,
        SLURM_JOBID=task_job_id,
        SLURM_JOB_NAME=options.get("job-name", "script.sh"),
        SLURM_JOB_NUM_NODES=options.get("nodes", "1"),
        SLURM_NNODES=options.get("nodes", "1"),
        SLURM_NTASKS=str(int(options.get("nodes", "1")) * int(options.get("ntasks-per-node", "1"))),
        SLURM_NODEID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_JOB_NODELIST="localhost",
        SLURM_SUBMIT_DIR=info["cwd"],
        FAKE_SLURM_JOB_DIR=str(job),
        FAKE_SLURM_TASK_INDEX=str(index),
    )
    if "cpus-per-task" in options:
        env["SLURM_CPUS_PER_TASK"] = options["cpus-per-task"]
    if "partition" in options:
        env["SLURM_JOB_PARTITION"] = options["partition"]
    if info["array"]:
        env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=str(index))
    out_path = _expand(options.get("output", "slurm-%A_%a.out" if info["array"] else "slurm-%j.out"), env)
    err_path = _expand(options["error"], env) if "error" in options else out_path
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    out = open(out_path, "ab")
    err = out if err_path == out_path else open(err_path, "ab")
    with open(os.devnull, "rb") as devnull_in:
        proc = subprocess.Popen(
            ["bash", str(job / "script.sh")],
            cwd=info["cwd"],
            env=env,
            stdin=devnull_in,
            stdout=out,
            stderr=err,
        )
    for stream in {out, err}:
        stream.close()
    _set_task_state(job, index, state="RUNNING", batch_pid=proc.pid, start=time.time())
    return proc


def _controller(args: list[str]) -> int:
    """The job's life: start tasks as slots free up, record how each ends."""
    job_id = args[0]
    job = _job_dir(job_id)
    info = _read_json(job / "job.json")
    indices, parallelism = _indices(info["options"])
    pending = list(indices)
    running: dict[int, subprocess.Popen] = {}
    while pending or running:
        pending = [i for i in pending if not (job / f"cancel_{i}").exists()]  # scancel marked them CANCELLED
        while pending and len(running) < parallelism and not (_root() / "hold").exists():
            index = pending.pop(0)
            running[index] = _start_task(job_id, job, info, index)
        for index, proc in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[index]
            if (job / f"cancel_{index}").exists():
                state = "CANCELLED"
            else:
                state = "COMPLETED" if code == 0 else "FAILED"
            exit_code = f"{code}:0" if code >= 0 else f"0:{-code}"
            _set_task_state(job, index, state=state, exit_code=exit_code, end=time.time())
        time.sleep(0.1)
    return 0


# ------------------------------------------------------------------------------------------------ srun


def srun(args: list[str]) -> int:
    files = {"--output": None, "--error": None}
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        name, sep, value = option.partition("=")
        if name in files:
            files[name] = value if sep else rest.pop(0)
        elif name in ("-o", "-e"):
            files["--output" if name == "-o" else "--error"] = rest.pop(0)
        # other options (--unbuffered, --ntasks ...) change nothing for one local task
    if not rest:
        print("srun: no command", file=sys.stderr)
        return 1
    env = os.environ
    if "SLURM_JOB_ID" not in env or "FAKE_SLURM_JOB_DIR" not in env:
        print("srun: fake slurm runs srun inside an sbatch job only", file=sys.stderr)
        return 1
    job, index = Path(env["FAKE_SLURM_JOB_DIR"]), int(env["FAKE_SLURM_TASK_INDEX"])
    _set_task_state(job, index, step_pid=os.getpid())
    os.environ.update(SLURM_STEP_ID="0", SLURM_PROCID="0", SLURM_LOCALID="0")
    out_file = files["--output"]
    err_file = files["--error"] or out_file
    for path, fd in ((out_file, 1), (err_file, 2)):
        if path is not None:
            path = _expand(path, dict(os.environ))
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(target, fd)
            os.close(target)
    os.execvp(rest[0], rest)
    return 127  # not reached


# ------------------------------------------------------------------------------------- sacct and squeue


def _tasks(job_id: str) -> list[tuple[str, int, dict, dict]]:
    """``(job id, index, job info, task state)`` of every task of ``job_id`` (``M`` or ``M_i``)."""
    main, _, wanted = job_id.partition("_")
    job = _job_dir(main)
    info = _read_json(job / "job.json")
    if not info:
        return []
    return [
        (main, index, info, _task_state(job, index))
        for index in info["indices"]
        if not wanted or int(wanted) == index
    ]


def _label(main: str, index: int, info: dict) -> str:
    return f"{main}_{index}" if info["array"] else main


def sacct(args: list[str]) -> int:
    fields, ids, rest = ["JobID", "State", "NodeList"], [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-o", "--format"):
            fields = rest.pop(0).split(",")
        elif arg.startswith("--format="):
            fields = arg.split("=", 1)[1].split(",")
        elif arg in ("-j", "--jobs"):
            ids += rest.pop(0).split(",")
        elif arg.startswith("--jobs="):
            ids += arg.split("=", 1)[1].split(",")
        elif arg not in ("--parsable2", "-P", "-X", "--allocations", "-n", "--noheader"):
            print(f"sacct: fake slurm does not know {arg!r}", file=sys.stderr)
            return 1
    known = {"JobID", "State", "NodeList", "ExitCode"}
    if not set(fields) <= known:
        print(f"sacct: fake slurm knows the fields {sorted(known)}, got {fields}", file=sys.stderr)
        return 1
    rows: list[dict[str, str]] = []
    for job_id in ids:
        tasks = _tasks(job_id)
        pending = [t for t in tasks if t[3]["state"] == "PENDING"]
        for main, index, info, state in tasks:
            if state["state"] == "PENDING" and info["array"] and len(pending) > 1:
                continue
            label = _label(main, index, info)
            node = "None assigned" if state["state"] == "PENDING" else "localhost"
            exit_code = state.get("exit_code", "0:0")
            rows.append({"JobID": label, "State": state["state"], "NodeList": node, "ExitCode": exit_code})
            if state["state"] != "PENDING":
                rows.append(
                    {
                        "JobID": f"{label}.batch",
                        "State": state["state"],
                        "NodeList": node,
                        "ExitCode": exit_code,
                    }
                )
        if len(pending) > 1 and pending[0][2]["array"]:
            main, info = pending[0][0], pending[0][2]
            _, parallelism = _indices(info["options"])
            first, last = pending[0][1], pending[-1][1]
            rows.append(
                {
                    "JobID": f"{main}_[{first}-{last}%{parallelism}]",
                    "State": "PENDING",
                    "NodeList": "None assigned",
                    "ExitCode": "0:0",
                }
            )
    if "-n" not in args and "--noheader" not in args:
        print("|".join(fields))
    for row in rows:
        print("|".join(row[f] for f in fields))
    return 0


def squeue(args: list[str]) -> int:
    rest, ids = list(args), []
    while rest:
        arg = rest.pop(0)
        if arg in ("-j", "--jobs"):
            ids += rest.pop(0).split(",")
    if not ids:
        ids = sorted(p.name for p in (_root() / "jobs").iterdir())
    if "-h" not in args and "--noheader" not in args:
        print("JOBID STATE")
    for job_id in ids:
        for main, index, info, state in _tasks(job_id):
            if state["state"] not in FINISHED:
                print(f"{_label(main, index, info)} {state['state']}")
    return 0


# ---------------------------------------------------------------------------------------------- scancel


def _signal_step(state: dict, signum: int) -> None:
    for key in ("step_pid", "batch_pid"):
        pid = state.get(key)
        if pid is None:
            continue
        try:
            os.kill(int(pid), signum)
        except OSError:
            pass
        return  # the step when there is one, else the batch shell


def scancel(args: list[str]) -> int:
    signame, ids, rest = None, [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("--signal", "-s"):
            signame = rest.pop(0)
        elif arg.startswith("--signal="):
            signame = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            print(f"scancel: fake slurm does not know {arg!r}", file=sys.stderr)
            return 1
        else:
            ids.append(arg)
    for job_id in ids:
        tasks = _tasks(job_id)
        if not tasks:
            print(f"scancel: error: Invalid job id {job_id}", file=sys.stderr)
            return 1
        for main, index, _, state in tasks:
            if state["state"] in FINISHED:
                continue
            if signame is not None:
                name = signame.upper()
                signum = (
                    int(name)
                    if name.isdigit()
                    else getattr(signal, name if name.startswith("SIG") else f"SIG{name}")
                )
                if state["state"] == "RUNNING":
                    _signal_step(state, signum)
                continue
            (_job_dir(main) / f"cancel_{index}").touch()
            if state["state"] == "PENDING":
                _set_task_state(_job_dir(main), index, state="CANCELLED", exit_code="0:0")
            if state["state"] == "RUNNING":
                _signal_step(state, signal.SIGTERM)
                wait = float(os.environ.get("FAKE_SLURM_KILL_WAIT", "5"))
                killer = (  # SIGKILL after the kill wait, unless the task has ended meanwhile
                    "import json, os, signal, sys, time\n"
                    f"time.sleep({wait})\n"
                    f"state = json.load(open({str(_job_dir(main) / f'task_{index}.json')!r}))\n"
                    "if state['state'] == 'RUNNING':\n"
                    "    for key in ('step_pid', 'batch_pid'):\n"
                    "        try: os.kill(state[key], signal.SIGKILL)\n"
                    "        except (KeyError, OSError): pass\n"
                )
                subprocess.Popen([sys.executable, "-c", killer], start_new_session=True)
    return 0


COMMANDS = {
    "sbatch": sbatch,
    "srun": srun,
    "sacct": sacct,
    "squeue": squeue,
    "scancel": scancel,
    "_controller": _controller,
}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
