"""Sweeps: a grid of models x datasets x seeds (x swept overrides) expanded into predictably named run
directories and executed through submitit — its local executor here (N concurrent processes, each with its
own thread budget), its Slurm executor on clusters.

The sweep decides nothing about training: every run goes through :func:`latentquant.train.loop.train`,
with ``resume=True`` for a run that has a checkpoint. Re-running the same sweep command is how a sweep is
continued: finished runs are skipped, unfinished ones resume from their checkpoints, missing ones start.

Run directory names: ``<out>/<model>-<dataset>[-<key>=<value>...]-seed<seed>``, the ``key=value`` parts
being the swept overrides (those given with several values) in the order given; characters other than
letters, digits and ``._=+-`` are replaced by ``_``.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentquant._openmp import available_cores
from latentquant.train import schema
from latentquant.train.schema import split_sweep_values

SUBMITIT_FOLDER = ".submitit"
SLURM_JOBS_FILE = "slurm_jobs.json"  # in the submitit folder: run name -> the Slurm job last submitted for it
# Slurm states of a job that may still run (anything else has ended, or sacct does not know the job)
_SLURM_ACTIVE = frozenset(
    "PENDING RUNNING REQUEUED REQUEUE_HOLD REQUEUE_FED COMPLETING CONFIGURING SUSPENDED RESIZING SIGNALING "
    "STAGE_OUT STOPPED".split()
)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    Attributes:
        name: the run directory's name (unique within the sweep).
        run_dir: ``<out>/<name>``.
        settings: the training settings (``latentquant.train.loop.train``'s ``settings``).
    """

    name: str
    run_dir: Path
    settings: dict[str, Any]


@dataclass
class SweepReport:
    """What happened to each run of a sweep (run names per outcome; failures with their log paths)."""

    skipped: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_started: list[str] = field(default_factory=list)
    submitted: dict[str, str] = field(default_factory=dict)
    queued: dict[str, str] = field(default_factory=dict)  # Slurm: still in the queue from an earlier sweep


# ------------------------------------------------------------------------------------------- the grid


def parse_seeds(text: str) -> list[int]:
    """``"0-6"`` -> 0..6; ``"0,2,5"``; ``"0-2,7"``. Seeds are non-negative and listed once each.

    Raises:
        ValueError: anything else (the message quotes ``text``).
    """
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"--seeds: expected e.g. '0-6' or '0,1,2', got {text!r}")
        low, high = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if high < low:
            raise ValueError(f"--seeds: range {part.strip()!r} in {text!r} runs backwards")
        seeds += range(low, high + 1)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: {text!r} lists a seed twice")
    return seeds


def parse_names(text: str, option: str, known: Sequence[str] | None) -> list[str]:
    """A comma-separated list of names, each checked against ``known`` (when given).

    Raises:
        ValueError: an empty list, a repeated name, or a name not in ``known`` (all of them listed).
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"{option}: expected a comma-separated list of names, got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{option}: {text!r} lists a name twice")
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{option}: unknown {unknown}; choose from {sorted(known)}")
    return names


GRID_KEYS = {"model": "--models", "dataset": "--datasets", "seed": "--seeds"}


def grid_overrides(items: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Take the grid's own settings out of the overrides: ``model=qlae,ae`` (or ``model.name=...``),
    ``dataset=...`` (``data.name=...``) and ``seed=0,1,2`` (or ``seed=0-6``) are the same as ``--models``,
    ``--datasets`` and ``--seeds``.

    Returns:
        ``(other_items, {"model" | "dataset" | "seed": raw value})``.

    Raises:
        ValueError: a grid setting given twice.
    """
    from latentquant.train.schema import flat_key

    rest: list[str] = []
    grid: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        try:
            flat = flat_key(key.strip()) if sep else ""
        except ValueError:
            flat = ""
        if flat in GRID_KEYS:
            if flat in grid:
                raise ValueError(f"override {item!r}: {flat} is given twice")
            grid[flat] = raw
        else:
            rest.append(item)
    return rest, grid


def expand_overrides(items: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Separate fixed overrides (``key=value``) from swept ones (``key=v1,v2,...``).

    Returns:
        ``(fixed, swept)``: ``fixed`` as ``"key=value"`` strings, ``swept`` as ``(key, ["key=v1", ...])``.

    Raises:
        ValueError: an item without ``=``, an empty value in a list, a key given twice, or a grid key
            (``model``, ``dataset``, ``seed``: :func:`grid_overrides` takes those first).
    """
    fixed: list[str] = []
    swept: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value or key=v1,v2,...")
        if key in seen:
            raise ValueError(f"override key {key!r} is given twice")
        seen.add(key)
        if key in GRID_KEYS:
            raise ValueError(f"override {item!r}: the grid's {key}s go to {GRID_KEYS[key]}")
        values = split_sweep_values(raw)
        if len(values) == 1:
            fixed.append(f"{key}={raw}")
            continue
        if any(not v.strip() for v in values):
            raise ValueError(f"override {item!r}: empty value in the list")
        swept.append((key, [f"{key}={v}" for v in values]))
    return fixed, swept


def _safe(text: str) -> str:
    return _NAME_UNSAFE.sub("_", text)


def run_name(model: str, dataset: str, seed: int, swept: Sequence[str] = ()) -> str:
    """The run directory name of one grid point (``swept``: its ``key=value`` strings of swept keys)."""
    parts = [model, dataset, *swept, f"seed{seed}"]
    return "-".join(_safe(p.replace(" ", "")) for p in parts)


def expand_grid(
    models: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> list[RunSpec]:
    """Every run of a sweep, in the order model, dataset, swept overrides, seed.

    Args:
        models, datasets, seeds: the grid (names as the zoo and data registries know them).
        out: the sweep's folder; each run gets ``out/<name>``.
        overrides: ``key=value`` settings for every run and ``key=v1,v2`` sweeps (see
            :func:`expand_overrides`), in the syntax of ``latentquant train``.
        base: settings under the overrides (e.g. from a ``--config`` file).

    Raises:
        ValueError: malformed overrides, or two grid points that would share a directory name.
    """
    from latentquant.train.config import merge_settings, parse_overrides

    fixed, swept = expand_overrides(overrides)
    common = merge_settings(dict(base or {}), parse_overrides(fixed))
    out = Path(out)
    specs: list[RunSpec] = []
    combos = list(itertools.product(*[values for _, values in swept])) if swept else [()]
    for model, dataset in itertools.product(models, datasets):
        for combo in combos:
            for seed in seeds:
                name = run_name(model, dataset, seed, combo)
                settings = merge_settings(
                    common, parse_overrides(list(combo)), {"model": model, "dataset": dataset, "seed": seed}
                )
                specs.append(RunSpec(name, out / name, settings))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"swept values give the same run directory names {clash[:3]}; use distinct values")
    return specs


# ---------------------------------------------------------------------------------------- run states


def run_state(run_dir: str | Path, settings: Mapping[str, Any]) -> str:
    """``"complete"`` (``metrics.json`` of at least the configured steps), ``"resume"`` (a checkpoint to
    continue from) or ``"new"`` (nothing yet, or a start that died before its first checkpoint)."""
    import json

    from latentquant.train.config import resolve_config
    from latentquant.train.rundir import CHECKPOINT_NAME, METRICS_NAME

    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT_NAME).is_file():
        return "new"
    metrics_path = run_dir / METRICS_NAME
    if metrics_path.is_file():
        try:
            done = int(json.loads(metrics_path.read_text()).get("steps", -1))
        except (ValueError, TypeError, AttributeError):
            done = -1
        if done >= resolve_config(settings).steps:
            return "complete"
    return "resume"


def train_run(settings: dict[str, Any], run_dir: str, num_threads: int | None, pid_file: str | None) -> dict:
    """One run, as a submitit job: new, resumed or (found complete meanwhile) skipped.

    Starts a session of its own, so that a Ctrl-C typed at the sweep's terminal reaches the run only
    through the sweep (one SIGINT: finish the step, write a checkpoint, return). Its pid goes to
    ``pid_file`` for the sweep to signal it.

    Returns:
        ``{"state": "complete" | "interrupted", "step": int, "metrics": {...}}``.
    """
    # The task inherits an ignored SIGINT from its controller, and the training loop installs its own stop
    # handler only once the run is set up: a Ctrl-C forwarded in between would be lost and the run would go
    # on to its last step. Record such an early request here and turn it into a stop after the first step.
    # On Slurm, the job's time limit is announced by submitit's signal (``#SBATCH --signal=USR2@90``: 90 s
    # ahead). submitit's own handler would raise out of the training step (train_run is not checkpointable
    # in submitit's sense) and lose the steps since the last periodic checkpoint: the signal stops the run
    # after its current step with a checkpoint instead, and the next sweep resumes it.
    early_stop: list[int] = []
    stop_signals = (signal.SIGINT, _submitit_signal())
    previous = {s: signal.signal(s, lambda signum, frame: early_stop.append(signum)) for s in stop_signals}
    try:
        return _train_run(settings, run_dir, num_threads, pid_file, early_stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _submitit_signal() -> int:
    """The signal submitit's Slurm jobs get ahead of their time limit (``SUBMITIT_PREEMPT_SIGNAL``, USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


def _train_run(
    settings: dict[str, Any],
    run_dir: str,
    num_threads: int | None,
    pid_file: str | None,
    early_stop: list[int],
) -> dict:
    if pid_file is not None:
        if os.getpid() != os.getsid(0):
            os.setsid()
        Path(pid_file).write_text(str(os.getpid()))
    if num_threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(num_threads)
    from latentquant.train.loop import StopAfterStep, train
    from latentquant.train.rundir import holds_run

    state = run_state(run_dir, settings)
    if state == "complete":
        return {"state": "complete", "step": None, "metrics": {}}
    if state == "new" and holds_run(Path(run_dir)):
        # a start that died before its first checkpoint: nothing to keep; train replaces it under its lock
        settings = {**settings, "overwrite": True}

    def stop_if_requested_early(step: int, losses: dict[str, float]) -> None:
        if early_stop:  # a stop after this step, with a checkpoint, named for the signal that asked for it
            raise StopAfterStep(early_stop[0])

    if early_stop:  # asked to stop before the run started: leave it as it is
        return {"state": "interrupted", "step": None, "metrics": {}}
    result = train(
        settings, run_dir, resume=state == "resume", progress=False, on_step=stop_if_requested_early
    )
    metrics = {k: (result.metrics or {}).get(k) for k in ("infom", "infoe", "infoc", "psnr")}
    return {
        "state": "interrupted" if result.interrupted else "complete",
        "step": result.step,
        "metrics": metrics,
    }


# ------------------------------------------------------------------------------------------ executing


def thread_budget(max_parallel: int, cores: int | None = None) -> int:
    """CPU threads per concurrent local run: ``cores // max_parallel``, at least 1."""
    if cores is None:
        cores = available_cores()
    return max(1, cores // max(1, max_parallel))


def cap_threads(settings: dict[str, Any], num_threads: int | None) -> dict[str, Any]:
    """A run's settings under the sweep's per-run thread budget ``num_threads`` (``None``: no budget).

    The run's ``num_threads`` becomes the budget when it is unset or larger: a configuration written for
    one process (``configs/demo.yaml`` pins 2 threads) must not oversubscribe the cores when the sweep runs
    several at once (2 runs x 2 threads on 2 cores trained at < 0.6 steps/s, against ~5 each with 1
    thread). A smaller ``num_threads`` is kept. The thread count is a resumable setting: it changes the
    order of torch's float reductions (so the numbers of a seed), not what the run is; ``config.yaml``
    records the value used.
    """
    flat = schema.flatten(settings)
    if num_threads is None:
        return flat
    current = flat.get("num_threads")
    if current is not None and int(current) <= num_threads:
        return flat
    return {**flat, "num_threads": num_threads}


@contextmanager
def _child_environment(num_threads: int | None) -> Iterator[None]:
    """While submitting local jobs: their controllers ignore SIGINT (inherited), and thread caps are set."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if num_threads is not None:
        for name in saved:
            os.environ[name] = str(num_threads)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_executor(
    launcher: str,
    folder: str | Path,
    *,
    timeout_min: int | None = None,
    partition: str | None = None,
    gpus_per_node: int = 0,
    cpus_per_task: int | None = None,
    mem_gb: float | None = None,
    max_parallel: int | None = None,
    slurm_args: Mapping[str, Any] | None = None,
) -> Any:
    """The submitit executor of a sweep: ``LocalExecutor`` or ``AutoExecutor(cluster="slurm")``.

    Args:
        launcher: ``"local"`` or ``"slurm"``.
        folder: where submitit keeps its job files and logs.
        timeout_min: job time limit in minutes (local default: none, i.e. one year; Slurm: 3 days).
        partition, gpus_per_node, cpus_per_task, mem_gb: Slurm resources per run.
        max_parallel: Slurm array parallelism (how many runs at once).
        slurm_args: further ``slurm_*`` parameters for submitit (e.g. ``{"slurm_account": "x"}``).

    Raises:
        ValueError: an unknown launcher, or ``slurm`` where Slurm's ``srun`` is not installed.
    """
    import submitit

    folder = Path(folder)
    if launcher == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout_min or 60 * 24 * 365, stderr_to_stdout=True)
        return executor
    if launcher != "slurm":
        raise ValueError(f"--launcher must be 'local' or 'slurm', got {launcher!r}")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as err:  # submitit's check for srun
        raise ValueError(f"--launcher slurm: {err}") from err
    params: dict[str, Any] = {
        "name": "latentquant",
        "timeout_min": timeout_min or 3 * 24 * 60,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": gpus_per_node,
    }
    if cpus_per_task is not None:
        params["cpus_per_task"] = cpus_per_task
    if mem_gb is not None:
        params["mem_gb"] = mem_gb
    if partition is not None:
        params["slurm_partition"] = partition
    if max_parallel is not None:
        params["slurm_array_parallelism"] = max_parallel
    params.update(dict(slurm_args or {}))
    executor.update_parameters(**params)
    return executor


def _log_path(job: Any) -> str:
    """The log holding a job's traceback: its stderr file where it has one (Slurm), else its stdout
    (the local executor writes both streams there)."""
    stderr = Path(job.paths.stderr)
    if stderr.is_file() and stderr.stat().st_size > 0:
        return str(stderr)
    return str(job.paths.stdout)


_TRACE = re.compile(r"\n-{22}\n(.*)\n-{22}\n", re.DOTALL)


def _failure_reason(err: BaseException) -> str:
    """One line on why a job failed: the exception line of the run's traceback (submitit's
    ``FailedJobError`` wraps it between dashed lines, followed by lines naming the log files), or, for a
    job that ended without a result (killed, cancelled, out of memory), submitit's first line and the
    job's final state."""
    text = str(err).strip()
    trace = _TRACE.search(text)
    if trace is not None:
        text = trace[1]
    elif "has not produced any output" in text:
        state = re.search(r"\(state: ([^)]*)\)", text)
        return f"the job ended without a result (state: {state[1] if state else 'unknown'})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _signal_task(pid_file: Path) -> None:
    try:
        os.kill(int(pid_file.read_text()), signal.SIGINT)
    except (OSError, ValueError):
        pass


def run_sweep(
    specs: Sequence[RunSpec],
    executor: Any,
    launcher: str,
    max_parallel: int = 1,
    num_threads: int | None = None,
    wait: bool = True,
    echo: Callable[[str], None] = print,
) -> SweepReport:
    """Skip the complete runs of ``specs`` and execute the others through ``executor``.

    Locally at most ``max_parallel`` runs go at once; each gets ``num_threads`` (the ``num_threads``
    setting unless the run sets its own, and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``). On Slurm all runs
    are submitted as one job array (the executor's array parallelism limits them); with ``wait=False`` the
    sweep returns after submitting.

    Ctrl-C (local): no further runs start; each running run gets one SIGINT, finishes its step, writes a
    checkpoint and stops; the sweep waits for them and reports them as interrupted. A second Ctrl-C stops
    waiting (the runs keep their last checkpoints). Either way, running the sweep again resumes every run.
    On Slurm, Ctrl-C only stops the waiting: submitted jobs keep running.

    A run that raises is reported with its log path (``failed``), and the other runs go on.
    """
    report = SweepReport()
    todo: list[RunSpec] = []
    for spec in specs:
        if run_state(spec.run_dir, spec.settings) == "complete":
            report.skipped.append(spec.name)
        else:
            todo.append(spec)
    for spec in todo:
        spec.run_dir.parent.mkdir(parents=True, exist_ok=True)

    def settings_of(spec: RunSpec) -> dict[str, Any]:
        return cap_threads(spec.settings, num_threads)

    def collect(spec: RunSpec, job: Any) -> None:
        try:
            result = job.result()
        except Exception as err:  # noqa: BLE001  (a failed run must not stop the others)
            reason = _failure_reason(err)
            report.failed[spec.name] = f"{reason} (log: {_log_path(job)})"
            echo(f"FAILED   {spec.name}: {reason}\n         log: {_log_path(job)}")
            return
        if result["state"] == "interrupted":
            report.interrupted.append(spec.name)
            where = "before its first step" if result["step"] is None else f"at step {result['step']}"
            echo(f"stopped  {spec.name} {where} (resumable)")
        else:
            report.completed.append(spec.name)
            shown = " ".join(f"{k}={v:.3f}" for k, v in result["metrics"].items() if v is not None)
            echo(f"done     {spec.name} {shown}")

    if launcher != "local":
        folder = Path(executor.folder)
        queued = _queued_slurm_jobs(folder, todo, echo)
        jobs = [(spec, queued[spec.name]) for spec in todo if spec.name in queued]
        for spec, job in jobs:
            report.queued[spec.name] = str(job.job_id)
            echo(
                f"queued   {spec.name}: job {job.job_id} of an earlier sweep is {job.state}, not submitted again"
            )
        to_submit = [spec for spec in todo if spec.name not in queued]
        if to_submit:
            with executor.batch():
                new = [
                    (spec, executor.submit(train_run, settings_of(spec), str(spec.run_dir), None, None))
                    for spec in to_submit
                ]
            _record_slurm_jobs(folder, {spec.name: str(job.job_id) for spec, job in new})
            for spec, job in new:
                report.submitted[spec.name] = str(job.job_id)
                echo(f"submitted {spec.name} as job {job.job_id} (log: {job.paths.stdout})")
            jobs += new
        if wait:
            try:
                for spec, job in jobs:
                    collect(spec, job)
            except KeyboardInterrupt:
                echo(
                    "Stopped waiting; the Slurm jobs keep running. Run the same sweep again later to "
                    "collect, resume or restart them."
                )
        return report

    with _terminate_as_interrupt():
        return _run_local(todo, executor, max_parallel, num_threads, settings_of, collect, report, echo)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a local sweep runs, SIGTERM (``kill PID``, a scheduler ending the job that runs the sweep) acts
    as Ctrl-C: the runs are told to stop after their step with a checkpoint, and the sweep waits for them.
    Without it the sweep died at once and left its runs training as orphans that hold their directories'
    locks (seen: two runs went on after ``kill``, and a new sweep on the folder could not start them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_local(
    todo: list[RunSpec],
    executor: Any,
    max_parallel: int,
    num_threads: int | None,
    settings_of: Callable[[RunSpec], dict[str, Any]],
    collect: Callable[[RunSpec, Any], None],
    report: SweepReport,
    echo: Callable[[str], None],
) -> SweepReport:
    folder = Path(executor.folder)
    queue = list(todo)
    running: list[tuple[RunSpec, Any, Path]] = []
    stopping = 0
    while queue or running:
        try:
            while queue and len(running) < max_parallel and not stopping:
                spec = queue.pop(0)
                pid_file = folder / f"{spec.name}.task.pid"
                pid_file.unlink(missing_ok=True)
                with _child_environment(num_threads):
                    job = executor.submit(
                        train_run, settings_of(spec), str(spec.run_dir), num_threads, str(pid_file)
                    )
                echo(f"started  {spec.name} (job {job.job_id}, log: {job.paths.stdout})")
                running.append((spec, job, pid_file))
            for entry in [r for r in running if r[1].done()]:
                running.remove(entry)
                collect(entry[0], entry[1])
                entry[2].unlink(missing_ok=True)
            if running:
                time.sleep(_POLL_SECONDS)
        except KeyboardInterrupt:
            stopping += 1
            if stopping == 1:
                echo(
                    "Ctrl-C (or SIGTERM): stopping the running runs at their next step (checkpoint written); "
                    "Ctrl-C again to stop waiting."
                )
            for _, _, pid_file in running:
                _signal_task(pid_file)
            if stopping > 1:
                report.interrupted += [spec.name for spec, _, _ in running]
                break
            report.not_started += [s.name for s in queue]
            queue = []
    return report


def _read_slurm_jobs(folder: Path) -> dict[str, str]:
    import json

    try:
        data = json.loads((folder / SLURM_JOBS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_slurm_jobs(folder: Path, jobs: Mapping[str, str]) -> None:
    """Adds ``run name -> job id`` to the sweep's record of submitted Slurm jobs (written atomically)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    record = {**_read_slurm_jobs(folder), **jobs}
    tmp = folder / f".{SLURM_JOBS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, folder / SLURM_JOBS_FILE)


def _queued_slurm_jobs(folder: Path, specs: Sequence[RunSpec], echo: Callable[[str], None]) -> dict[str, Any]:
    """The runs of ``specs`` whose Slurm job from an earlier sweep (``--no-wait``, or a sweep that stopped
    waiting) is still pending or running, as submitit jobs to wait for instead of submitting them again
    (a second job would train the same run directory). One ``sacct`` call for all of them."""
    recorded = _read_slurm_jobs(folder)
    candidates = {spec.name: recorded[spec.name] for spec in specs if spec.name in recorded}
    if not candidates:
        return {}
    from submitit.slurm.slurm import SlurmJob

    jobs = {name: SlurmJob(folder=folder, job_id=job_id) for name, job_id in candidates.items()}
    SlurmJob.watcher.update()
    queued: dict[str, Any] = {}
    for name, job in jobs.items():
        state = SlurmJob.watcher.get_state(job.job_id, mode="cache")
        if state.split()[0].upper() in _SLURM_ACTIVE:
            queued[name] = job
        elif state != "UNKNOWN":
            echo(f"earlier  {name}: job {job.job_id} ended {state} (log: {_log_path(job)})")
    return queued


def summarize(report: SweepReport, total: int, command: str) -> str:
    """The closing lines of ``latentquant sweep``."""
    lines = [
        f"{total} runs: {len(report.skipped)} already complete, {len(report.completed)} completed now, "
        f"{len(report.interrupted)} interrupted, {len(report.failed)} failed, {len(report.not_started)} not started"
        + (f", {len(report.submitted)} submitted" if report.submitted else "")
        + (f", {len(report.queued)} already queued by an earlier sweep" if report.queued else "")
    ]
    for name, reason in report.failed.items():
        lines.append(f"  failed: {name}: {reason}")
    if report.interrupted or report.not_started or report.failed:
        lines.append(f"Run the same command again to resume or retry them: {command}")
    return "\n".join(lines)


def command_line() -> str:
    """The current command line, for 'run this again' hints."""
    import shlex

    return " ".join(shlex.quote(a) for a in ["latentquant", *sys.argv[1:]])
