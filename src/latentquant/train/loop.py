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

from latentquant.train.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    restore_model,
    restore_optimizers,
    save_checkpoint,
)
from latentquant.train.config import TrainConfig, merge_settings, resolve_config
from latentquant.train.evaluate import Evaluation, evaluate_model, evaluation_factors
from latentquant.train.run import (
    CONFIG_NAME,
    LOG_NAME,
    METRICS_NAME,
    load_dataset,
    make_model,
    read_log,
    read_run_config,
    remove_run_files,
    rewrite_log,
    select_device,
    write_config,
    write_outputs,
)

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
    }
)
INTERRUPTED_EXIT_CODE = 130


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        out_dir: the run directory.
        step: steps completed.
        interrupted: the run stopped early on Ctrl-C (a checkpoint to resume from was written).
        metrics: the final ``metrics.json`` contents (``None`` when interrupted).
        report: path of ``report.html`` (``None`` when interrupted).
    """

    out_dir: Path
    step: int
    interrupted: bool
    metrics: dict[str, Any] | None
    report: Path | None


class _StopRequest:
    """Turns the first SIGINT into a request to stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


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


def _restore_rng(
    states: Mapping[str, torch.Tensor], data_generator: torch.Generator, device: torch.device
) -> None:
    torch.set_rng_state(states["torch"])
    data_generator.set_state(states["data"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _prepare_settings(
    settings: Mapping[str, Any], out_dir: Path, resume: bool
) -> tuple[dict[str, Any], Checkpoint | None]:
    """The settings of the run: the given ones for a new run; for a resume, the stored ones plus the
    resumable changes in ``settings``. Also refuses to overwrite a finished or running directory."""
    if not resume:
        if (out_dir / CHECKPOINT_NAME).exists() or (out_dir / CONFIG_NAME).exists():
            if not settings.get("overwrite", False):
                raise ValueError(
                    f"{out_dir} already holds a training run; continue it with --resume {out_dir}, "
                    "choose another --out directory, or set overwrite=true to replace it"
                )
            remove_run_files(out_dir)
        return dict(settings), None
    stored = read_run_config(out_dir)
    changed = sorted(k for k, v in settings.items() if k not in RESUMABLE_SETTINGS and stored.get(k) != v)
    if changed:
        raise ValueError(
            f"cannot change {changed} when resuming {out_dir}; only {sorted(RESUMABLE_SETTINGS)} may change"
        )
    checkpoint = load_checkpoint(out_dir / CHECKPOINT_NAME)
    return merge_settings(stored, {k: v for k, v in settings.items() if k in RESUMABLE_SETTINGS}), checkpoint


def train(
    settings: Mapping[str, Any],
    out_dir: str | Path,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a zoo model, evaluate it and write the run directory.

    Args:
        settings: :class:`TrainConfig` keys (unspecified ones take the paper defaults). On resume, only
            :data:`RESUMABLE_SETTINGS` may differ from the stored configuration.
        out_dir: the run directory: ``config.yaml``, ``log.jsonl``, ``checkpoint.safetensors``,
            ``metrics.json``, the PNG figures and ``report.html``.
        resume: continue the run in ``out_dir`` from its checkpoint.
        on_step: called after every completed step with ``(step, losses)``; raising ``KeyboardInterrupt``
            there stops the run like Ctrl-C does.
        progress: show a progress bar (loss and steps/s) on stderr.

    Returns:
        A :class:`TrainResult`; ``interrupted`` is true when Ctrl-C stopped the run (a resumable checkpoint
        was written and how to resume was printed).

    Raises:
        ValueError: invalid settings, a directory that already holds a run (without ``resume``), or a
            corrupt or incompatible checkpoint.
        FileNotFoundError: ``resume`` on a directory without a run.
    """
    out_dir = Path(out_dir)
    settings, checkpoint = _prepare_settings(settings, out_dir, resume)
    probe = resolve_config(settings)
    dataset = load_dataset(probe)
    config = resolve_config(settings, num_factors=dataset.num_factors)
    if config.num_latents is None:
        raise ValueError("num_latents could not be determined from the dataset")
    _configure_torch(config)
    device = select_device(config.device)

    torch.manual_seed(config.seed)
    model = make_model(config, dataset).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizers = _model_optimizers(model, config)
    data_generator = torch.Generator().manual_seed(config.seed)
    step = 0
    train_seconds = 0.0
    if checkpoint is not None:
        restore_model(model, checkpoint.model_state, out_dir / CHECKPOINT_NAME)
        restore_optimizers(optimizers, checkpoint.optimizer_states, out_dir / CHECKPOINT_NAME)
        _restore_rng(checkpoint.rng, data_generator, device)
        step = checkpoint.step
        train_seconds = float(checkpoint.extra.get("train_seconds", 0.0))
        rewrite_log(out_dir, read_log(out_dir, up_to_step=step))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir, config)

    forward = torch.compile(model) if config.compile else model
    eval_factors = evaluation_factors(dataset, config.eval_samples, config.eval_seed)

    def save(at_step: int) -> None:
        extra = {"model": config.model, "dataset": config.dataset, "train_seconds": train_seconds}
        optimizer_states = {name: optimizer.state_dict() for name, optimizer in optimizers.items()}
        state = Checkpoint(
            at_step, model.state_dict(), optimizer_states, _rng_states(data_generator, device), extra
        )
        save_checkpoint(out_dir / CHECKPOINT_NAME, state)

    with open(out_dir / LOG_NAME, "a") as log_file:

        def log(record: dict[str, Any]) -> None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

        def run_evaluation(at_step: int) -> Evaluation:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                evaluation = evaluate_model(
                    model, dataset, eval_factors, device, config.infomec_convention, config.channels_last
                )
            log({"kind": "eval", "step": at_step, "metrics": evaluation.metrics})
            return evaluation

        # Each logged term is its mean over the steps of the window that returned it (a GAN's generator terms
        # come every 5th step only).
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        window_steps, window_start = 0, time.perf_counter()
        stop = _StopRequest()
        bar = tqdm(
            total=config.steps,
            initial=step,
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
            desc=config.model,
        )
        interrupted = in_step = False
        model.train()
        try:
            with stop.installed():
                while step < config.steps:
                    tick = time.perf_counter()
                    in_step = True
                    images, _ = dataset.sample_batch(config.batch_size, data_generator)
                    images = images.to(device, non_blocking=True)
                    if config.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    losses = model.train_step(images, step, optimizers, config, forward=forward)
                    if "loss" not in losses:
                        raise ValueError(
                            f"{type(model).__name__}.train_step must return a 'loss' entry, got {sorted(losses)}"
                        )
                    step += 1
                    in_step = False
                    train_seconds += time.perf_counter() - tick

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
                    if stop.requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()

        if interrupted:
            if in_step:
                print(
                    f"\nInterrupted during step {step + 1}; the last checkpoint in {out_dir} is kept.",
                    file=sys.stderr,
                )
            else:
                save(step)
                print(
                    f"\nInterrupted at step {step}; checkpoint written to {out_dir / CHECKPOINT_NAME}.",
                    file=sys.stderr,
                )
            print(f"Resume with: latentquant train --resume {out_dir}", file=sys.stderr)
            return TrainResult(out_dir, step, True, None, None)

        save(step)
        print(f"Evaluating on {config.eval_samples} samples ...", file=sys.stderr)
        evaluation = run_evaluation(step)

    extra = {
        "steps": step,
        "num_latents": config.num_latents,
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(step / train_seconds, 3) if train_seconds > 0 else None,
        "final_losses": _last_train_losses(out_dir),
    }
    report = write_outputs(out_dir, model, dataset, evaluation, config, extra, device)
    metrics = json.loads((out_dir / METRICS_NAME).read_text())
    return TrainResult(out_dir, step, False, metrics, report)


def _last_train_losses(out_dir: Path) -> dict[str, float]:
    train_records = [r for r in read_log(out_dir) if r.get("kind") == "train"]
    return train_records[-1]["losses"] if train_records else {}
