"""The training loop: data, devices, periodic logging, evaluation and atomic checkpoints, Ctrl-C to a
resumable checkpoint, and exact resumption (same weights as an uninterrupted run).

The loop knows no model family: the model names its optimizers (``configure_optimizers``) and takes each
step itself (``train_step``); the loop checkpoints every optimizer's state under its name."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from latentquant.train import distributed, schema
from latentquant.train.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_model,
    restore_optimizers,
    restore_rng,
    save_checkpoint,
)
from latentquant.train.config import TrainConfig, merge_settings, resolve_config
from latentquant.train.cpu_hint import PaperSizeOnCPU
from latentquant.train.evaluate import Evaluation, evaluate_model, evaluation_factors
from latentquant.train.run import load_dataset, make_model, select_device, write_outputs
from latentquant.train.rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    LogWriter,
    check_run_dir_path,
    config_differences,
    holds_run,
    lock_run,
    read_config_file,
    read_log,
    remove_run_files,
    rewrite_log,
    write_config,
)
from latentquant.train.sinks import Sinks
from latentquant.zoo import Autoencoder

# Settings that may change when a run is resumed: they do not change what the model learns.
RESUMABLE_SETTINGS = frozenset(
    {
        "steps",
        "eval_every",
        "eval_samples",
        "log_every",
        "checkpoint_every",
        "device",
        "compile",
        "num_threads",
        "logger",
    }
)
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT; a run stopped by another signal exits 128 + that signal


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        out_dir: the run directory.
        step: steps completed.
        interrupted: the run stopped early on a signal (a checkpoint to resume from was written).
        metrics: the final ``metrics.json`` contents (``None`` when interrupted).
        report: path of ``report.html`` (``None`` when interrupted).
        signal: the signal that stopped the run (``signal.SIGINT`` also for a ``KeyboardInterrupt`` raised
            by ``on_step``); ``None`` when it ran to the end.
    """

    out_dir: Path
    step: int
    interrupted: bool
    metrics: dict[str, Any] | None
    report: Path | None
    signal: int | None = None


# SIGINT (Ctrl-C), SIGTERM (what schedulers and `kill` send) and SIGUSR1 (Slurm's warning before the time limit).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class _SignalStop(KeyboardInterrupt):
    """A stop asked for by signal ``signum`` (the run reports it, and exits with 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalInterrupt(_SignalStop):
    """Raised by a stop signal that must take effect at once (a second signal, or one after training)."""


class StopAfterStep(_SignalStop):
    """Raised by an ``on_step`` hook for a stop signal the loop does not handle itself (the sweep's submitit
    signal): the run stops after the step with a checkpoint, as for its own stop signals."""


class _StopRequest:
    """Turns the first stop signal into a request to stop after the current step (the loop then writes a
    checkpoint); a second one, or any once ``immediate`` is set, raises :class:`SignalInterrupt` at once.
    Checkpoint writes are atomic, so an exception in the middle of one leaves the previous checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.immediate = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None or self.immediate:
            raise SignalInterrupt(signum)
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _configure_torch(config: TrainConfig) -> None:
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.use_deterministic_algorithms(config.deterministic)


def _model_optimizers(model: torch.nn.Module, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """The model's named optimizers (``configure_optimizers``), checked to be a non-empty name -> optimizer map."""
    optimizers = model.configure_optimizers(config)
    if not isinstance(optimizers, dict) or not optimizers:
        raise ValueError(
            f"{type(model).__name__}.configure_optimizers must return a non-empty dict of name -> optimizer, "
            f"got {optimizers!r}"
        )
    for name, optimizer in optimizers.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"optimizer names must be non-empty strings without '.', got {name!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer {name!r} is a {type(optimizer).__name__}, not a torch.optim.Optimizer"
            )
    return optimizers


def _rng_states(data_generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _prepare_settings(
    settings: Mapping[str, Any], out_dir: Path, resume: bool
) -> tuple[dict[str, Any], Checkpoint | None]:
    """The settings of the run: the given ones for a new run; for a resume, the stored ones plus the
    resumable changes in ``settings``. Refuses to replace a run without ``overwrite``. Call with the run's
    lock held.

    Raises:
        ValueError: a new run in a directory that holds one (without ``overwrite``); on resume, a setting that
            may not change, ``steps`` below the steps completed, a checkpoint that belongs to another run, or
            a damaged checkpoint.
        FileNotFoundError: ``resume`` on a directory that holds no run.
    """
    if not resume:
        if holds_run(out_dir):
            if not settings.get("overwrite", False):
                raise ValueError(
                    f"{out_dir} already holds a training run; continue it with --resume {out_dir}, "
                    "choose another --out directory, or set overwrite=true to replace it"
                )
            remove_run_files(out_dir)
        return dict(settings), None
    checkpoint = load_checkpoint(out_dir / CHECKPOINT_NAME) if (out_dir / CHECKPOINT_NAME).is_file() else None
    stored = _stored_settings(out_dir, checkpoint)
    changed = sorted(k for k, v in settings.items() if k not in RESUMABLE_SETTINGS and stored.get(k) != v)
    if changed:
        raise ValueError(
            f"cannot change {changed} when resuming {out_dir}; only {sorted(RESUMABLE_SETTINGS)} may change"
        )
    merged = merge_settings(stored, {k: v for k, v in settings.items() if k in RESUMABLE_SETTINGS})
    steps = resolve_config(merged).steps
    if checkpoint is not None and checkpoint.step > steps:
        raise ValueError(
            f"steps={steps} is smaller than the {checkpoint.step} steps the run in {out_dir} has completed "
            f"(its checkpoint's step); give steps >= {checkpoint.step}"
        )
    return merged, checkpoint


def _stored_settings(out_dir: Path, checkpoint: Checkpoint | None) -> dict[str, Any]:
    """A run's stored settings: ``config.yaml``, checked against the checkpoint's copy of the configuration.

    A missing or damaged ``config.yaml`` (invalid YAML, settings missing or invalid) is recovered from the
    checkpoint's copy, with a message; a ``config.yaml`` that differs from the checkpoint's copy in a setting
    that changes what the model learns means the checkpoint belongs to another run: refused, naming each
    difference. A run that stopped before its first checkpoint restarts from step 0.
    """
    from_file: dict[str, Any] | None = None
    problem = f"{CONFIG_NAME} is missing"
    if (out_dir / CONFIG_NAME).exists():
        try:
            from_file = read_config_file(out_dir)
            resolve_config(from_file)
        except ValueError as err:
            from_file, problem = None, f"{CONFIG_NAME} is damaged ({err})"
    copy = checkpoint.config if checkpoint is not None else None
    if from_file is not None and copy is not None and set(from_file) != set(copy):
        missing = sorted(set(copy) - set(from_file))
        from_file, problem = None, f"{CONFIG_NAME} is damaged (settings {missing} are missing)"
    if from_file is None:
        if copy is None:
            if checkpoint is None and not (out_dir / CONFIG_NAME).exists():
                raise FileNotFoundError(
                    f"{out_dir} is not a training run directory (no {CONFIG_NAME} or {CHECKPOINT_NAME} in it)"
                )
            raise ValueError(f"{out_dir}: {problem} and no checkpoint holds a copy of the configuration")
        print(
            f"latentquant: {out_dir}: {problem}; recovered the configuration from {CHECKPOINT_NAME} "
            f"(step {checkpoint.step}) and rewriting {CONFIG_NAME}",
            file=sys.stderr,
        )
        return dict(copy)
    if checkpoint is None:
        if any(r.get("kind") == "train" for r in read_log(out_dir)):
            raise ValueError(
                f"{out_dir}: {CHECKPOINT_NAME} is missing although the log records training steps; the run "
                "cannot resume (start it again with overwrite=true)"
            )
        print(
            f"latentquant: {out_dir}: the run stopped before its first checkpoint; starting it from step 0",
            file=sys.stderr,
        )
        return from_file
    if copy is not None:
        differences = config_differences(from_file, copy, RESUMABLE_SETTINGS)
        if differences:
            raise ValueError(
                f"{out_dir}: {CHECKPOINT_NAME} belongs to another run: its configuration differs from "
                f"{CONFIG_NAME} in {'; '.join(f'{d} ({CONFIG_NAME} != checkpoint)' for d in differences)}"
            )
    elif checkpoint.extra.get("model", from_file.get("model")) != from_file.get("model"):
        raise ValueError(
            f"{out_dir}: {CHECKPOINT_NAME} holds a {checkpoint.extra.get('model')!r} model but {CONFIG_NAME} "
            f"says model {from_file.get('model')!r}"
        )
    return from_file


def train(
    settings: Mapping[str, Any],
    out_dir: str | Path,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a zoo model, evaluate it and write the run directory.

    The directory is locked for the whole run (a second process is refused); the settings are validated
    before any file is touched; a new run writes a step-0 checkpoint first, so that from then on the
    directory always resumes. SIGINT, SIGTERM and SIGUSR1 stop the run after the current step with a
    checkpoint; a second signal stops it at once (the last checkpoint is kept intact).

    Args:
        settings: :class:`TrainConfig` keys (unspecified ones take the paper defaults). On resume, only
            :data:`RESUMABLE_SETTINGS` may differ from the stored configuration.
        out_dir: the run directory: ``config.yaml``, ``log.jsonl``, ``checkpoint.safetensors``,
            ``metrics.json``, the PNG figures and ``report.html``.
        resume: continue the run in ``out_dir`` from its checkpoint.
        on_step: called after every completed step with ``(step, losses)``; raising ``KeyboardInterrupt``
            there stops the run like Ctrl-C does (:class:`StopAfterStep` names the signal that asked).
        progress: show a progress bar (loss and steps/s) on stderr.

    Returns:
        A :class:`TrainResult`; ``interrupted`` is true when a signal stopped the run (a resumable
        checkpoint was written and how to resume was printed).

    Raises:
        ValueError: invalid settings, ``out_dir`` is a file, a directory that already holds a run (without
            ``resume``) or is locked by another process, or a damaged or foreign checkpoint.
        FileNotFoundError: ``resume`` on a directory without a run.
        SignalInterrupt: a second stop signal, or one during the final evaluation (the checkpoint is intact).
        latentquant.train.rundir.OutputWriteError: a run file could not be written (the previous one is kept).
    """
    out_dir = Path(out_dir)
    settings = schema.flatten(settings)
    check_run_dir_path(out_dir)
    if not resume:
        select_device(resolve_config(settings).device)  # every setting checked before a file is touched
    info = distributed.setup(_device_setting(settings, out_dir, resume))
    finished = False
    try:
        if not info.is_main:  # rank 0 owns the directory: it prepares the run and shares what it found
            settings, checkpoint = distributed.receive_from_main(info)
            result = _train_locked(settings, out_dir, checkpoint, on_step, False, info)
        else:
            with distributed.share_from_main(info) as share, lock_run(out_dir, "train", create=not resume):
                settings, checkpoint = _prepare_settings(settings, out_dir, resume)
                share((settings, checkpoint))
                result = _train_locked(settings, out_dir, checkpoint, on_step, progress, info)
        finished = True
        return result
    finally:
        distributed.teardown(info, together=finished)


def _device_setting(settings: Mapping[str, Any], out_dir: Path, resume: bool) -> str:
    """The run's ``device`` before the run is prepared (to choose the process group's backend)."""
    if "device" in settings:
        return str(settings["device"])
    if resume:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return str(read_config_file(out_dir).get("device", "auto"))
    return "auto"


def _train_locked(
    settings: dict[str, Any],
    out_dir: Path,
    checkpoint: Checkpoint | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
    progress: bool,
    info: distributed.Distributed,
) -> TrainResult:
    started = time.perf_counter()
    probe = resolve_config(settings)
    select_device(probe.device)
    dataset = load_dataset(probe)
    config = resolve_config(settings, num_factors=dataset.num_factors)
    if config.num_latents is None:
        raise ValueError("num_latents could not be determined from the dataset")
    _configure_torch(config)
    device = info.device if info.enabled else select_device(config.device)
    checkpoint_path = out_dir / CHECKPOINT_NAME

    torch.manual_seed(config.seed)
    model = make_model(config, dataset).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if info.enabled and type(model).train_step is not Autoencoder.train_step:
        raise ValueError(
            f"model {config.model!r} trains with its own train_step, which does not run its forward pass through "
            "the DistributedDataParallel module; data-parallel training (WORLD_SIZE > 1) supports the models "
            "that use Autoencoder.train_step"
        )
    optimizers = _model_optimizers(model, config)
    data_generator = torch.Generator().manual_seed(config.seed)
    step = 0
    train_seconds = 0.0
    if checkpoint is not None:
        restore_model(model, checkpoint.model_state, checkpoint_path)
        restore_optimizers(optimizers, checkpoint.optimizer_states, checkpoint_path)
        restore_rng(checkpoint.rng, data_generator, device, checkpoint_path)
        step = checkpoint.step
        train_seconds = float(checkpoint.extra.get("train_seconds", 0.0))
        records = read_log(out_dir, up_to_step=step)
        if step >= config.steps:  # a finished run's final evaluation is redone: drop its earlier record
            records = [r for r in records if not (r.get("kind") == "eval" and r.get("step") == step)]
        rewrite_log(out_dir, records)

    distributed.reseed_rank(config.seed, step, info)
    forward = distributed.wrap_model(model, info)
    forward = compile_for_training(model, forward, config.compile)
    eval_factors = evaluation_factors(dataset, config.eval_samples, config.eval_seed)

    def save(at_step: int) -> None:
        if not info.is_main:  # rank 0 alone writes; every rank holds the same state
            return
        extra = {
            "model": config.model,
            "dataset": config.dataset,
            "train_seconds": train_seconds,
            "image_shape": list(dataset.image_shape),
            "dataset_size": len(dataset),
        }
        optimizer_states = {name: optimizer.state_dict() for name, optimizer in optimizers.items()}
        state = Checkpoint(
            at_step,
            model.state_dict(),
            optimizer_states,
            _rng_states(data_generator, device),
            extra,
            config.to_dict(),
        )
        save_checkpoint(checkpoint_path, state)

    if checkpoint is None:
        save(0)  # from here on the directory holds a resumable run, whatever happens next
    if info.is_main:
        write_config(out_dir, config)

    stop = _StopRequest()
    log_writer = (
        LogWriter(out_dir, Sinks.for_run(out_dir, config, step))
        if info.is_main
        else contextlib.nullcontext(distributed.DISCARD)
    )
    with stop.installed(), log_writer as log_file:
        log = log_file.write

        def run_evaluation(at_step: int) -> Evaluation | None:
            if not info.is_main:  # rank 0 evaluates; the others wait for it
                distributed.barrier(info)
                return None
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), eager():
                evaluation = evaluate_model(
                    model, dataset, eval_factors, device, config.infomec_convention, config.channels_last
                )
            log({"kind": "eval", "step": at_step, "metrics": evaluation.metrics})
            distributed.barrier(info)
            return evaluation

        # Each logged term is its mean over the steps of the window that returned it (a GAN's generator terms
        # come every 5th step only).
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        window_steps, window_start = 0, time.perf_counter()
        bar = tqdm(
            total=config.steps,
            initial=step,
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
            desc=config.model,
        )
        interrupted = in_step = at_once = False
        stop_signal: int | None = None
        cpu_hint = PaperSizeOnCPU(device.type, config.encoder, config.decoder, config.steps - step)
        model.train()
        try:
            while step < config.steps:
                if stop.signum is not None and not info.enabled:  # a signal during start-up
                    raise KeyboardInterrupt
                tick = time.perf_counter()
                in_step = True
                images = distributed.batch_shard(dataset, config.batch_size, data_generator, info)
                images = images.to(device, non_blocking=True)
                if config.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                losses = model.train_step(images, step, optimizers, config, forward=forward)
                losses = distributed.mean_losses(losses, info)
                if "loss" not in losses:
                    raise ValueError(
                        f"{type(model).__name__}.train_step must return a 'loss' entry, got {sorted(losses)}"
                    )
                step += 1
                in_step = False
                train_seconds += time.perf_counter() - tick
                cpu_hint.observe(time.perf_counter() - tick)

                values = {k: float(v) for k, v in losses.items()}
                if not all(math.isfinite(v) for v in values.values()):
                    raise FloatingPointError(f"non-finite loss at step {step}: {values}")
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
                window_steps += 1
                bar.update(1)
                if step % 10 == 0 or step == config.steps:
                    bar.set_postfix(loss=f"{values['loss']:.4f}")
                if step % config.log_every == 0 or step == config.steps:
                    now = time.perf_counter()
                    log(
                        {
                            "kind": "train",
                            "step": step,
                            "losses": {k: v / counts[k] for k, v in sums.items()},
                            "steps_per_second": window_steps / max(now - window_start, 1e-9),
                            "time": time.time(),
                        }
                    )
                    sums, counts, window_steps, window_start = {}, {}, 0, now
                if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                    run_evaluation(step)
                if step % config.checkpoint_every == 0 and step < config.steps:
                    save(step)
                if on_step is not None:
                    on_step(step, values)
                if distributed.any_rank(stop.signum is not None, info):  # all ranks stop after the same step
                    raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            interrupted = True
            at_once = isinstance(err, SignalInterrupt)  # a second signal: no new checkpoint
            stop_signal = getattr(err, "signum", None) or stop.signum or signal.SIGINT
        finally:
            bar.close()

        if interrupted and not info.is_main:
            return TrainResult(out_dir, step, True, None, None, stop_signal)
        if interrupted:
            name = signal.Signals(stop_signal).name
            if in_step or at_once:
                print(
                    f"\nInterrupted by {name} at step {step + (1 if in_step else 0)}; the last checkpoint in "
                    f"{out_dir} is kept.",
                    file=sys.stderr,
                )
            else:
                save(step)
                print(
                    f"\nInterrupted by {name} at step {step}; checkpoint written to {checkpoint_path}.",
                    file=sys.stderr,
                )
            print(f"Resume with: latentquant train --resume {out_dir}", file=sys.stderr)
            return TrainResult(out_dir, step, True, None, None, stop_signal)

        save(step)
        stop.immediate = True  # the final checkpoint is written: a signal now stops at once
        if not info.is_main:
            run_evaluation(step)
            return TrainResult(out_dir, step, False, None, None)
        print(f"Evaluating on {config.eval_samples} samples ...", file=sys.stderr)
        evaluation = run_evaluation(step)

        extra = {
            "steps": step,
            "num_latents": config.num_latents,
            "train_seconds": round(train_seconds, 2),
            "steps_per_second": round(step / train_seconds, 3) if train_seconds > 0 else None,
            "final_losses": _last_train_losses(out_dir),
        }
        with eager():
            report = write_outputs(
                out_dir, model, dataset, evaluation, config, extra, device, time.perf_counter() - started
            )
    metrics = json.loads((out_dir / METRICS_NAME).read_text())
    return TrainResult(out_dir, step, False, metrics, report)


def compile_for_training(model: Autoencoder, forward: Callable, mode: str) -> Callable:
    """Apply the ``compile`` setting (:data:`latentquant.train.config.COMPILE_MODES`); returns the callable the
    training step runs its forward pass through.

    "model" compiles ``forward`` (the model, or its DistributedDataParallel wrapper); "decoder" compiles
    ``model.decoder`` in place (``nn.Module.compile``: parameters and state-dict keys unchanged) and returns
    ``forward`` as it is. Evaluation and the report run eagerly in both modes (:func:`eager`), so a new batch
    size or ``torch.no_grad`` never recompiles, and the scores do not depend on the setting. Models with
    their own ``train_step`` (the GANs: the gradient penalty differentiates twice) train eagerly: the setting
    does not apply to them.
    """
    if mode == "off" or type(model).train_step is not Autoencoder.train_step:
        return forward
    if mode == "decoder":
        model.decoder.compile()
        return forward
    return torch.compile(forward)


def eager() -> contextlib.AbstractContextManager:
    """Run every ``torch.compile``'d module or function eagerly inside the block (evaluation, report)."""
    return torch.compiler.set_stance("force_eager")


def _last_train_losses(out_dir: Path) -> dict[str, float]:
    train_records = [r for r in read_log(out_dir) if r.get("kind") == "train"]
    return train_records[-1]["losses"] if train_records else {}
