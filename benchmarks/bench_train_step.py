"""The CPU training step of `make demo` (issue 14, item 2): one QLAE step of configs/demo.yaml (procedural
shapes3d, "cpu" encoder/decoder, batch 32, 2 threads) timed phase by phase, and the same step under each
speed-up that keeps the math: channels-last memory format, AdamW's ``foreach`` and ``fused``
implementations, ``torch.compile`` of the whole model or of its decoder alone (the ``compile`` setting's
"model" and "decoder"; compile time reported apart), and the next batch rendered in a background thread while
the current step runs.

Every variant starts from the same seed. Two checks of "the same math": the first step's gradients against
float64 eager ones (``grad_err``: the largest relative error over the parameters; eager float32 is ~3e-6),
and the losses over the first steps against the default's (``max_rel_loss_diff``: other float order, so small
but not zero differences are expected and they grow over many steps). steps/s is the median over the timed
steps after a warm-up. Target (issue 14): >= 1.5x the default's steps/s at eager precision (``grad_err``
within 10x of the default's); reported as met or missed.

The procedural renderer caches the 480 geometries' weight maps: training reaches that state in its first few
hundred steps (data ~1 ms per batch after, ~10 ms before), so the benchmark fills the cache before timing
anything: every variant sees the steady state.

Run: `pytest -s benchmarks/bench_train_step.py` (part of `make bench`) or `python benchmarks/bench_train_step.py`.
Times are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import copy
import statistics
import threading
import time
from pathlib import Path

import torch
import yaml
from timing import print_table, quick_mode, sized

from latentquant.data.shapes3d import _geometry_cache
from latentquant.train.config import resolve_config
from latentquant.train.loop import compile_for_training
from latentquant.train.optim import clip_gradients
from latentquant.train.run import load_dataset, make_model

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
PHASES = ("data", "forward", "backward", "optimizer")


class _Prefetcher:
    """Renders batch i + 1 in a thread while step i runs (the same batches, in the same order)."""

    def __init__(self, dataset, batch_size: int, generator: torch.Generator) -> None:
        self.dataset, self.batch_size, self.generator = dataset, batch_size, generator
        self._result: torch.Tensor | None = None
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        def work() -> None:
            self._result = self.dataset.sample_batch(self.batch_size, self.generator)[0]

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread

    def next(self) -> torch.Tensor:
        self._thread.join()
        batch = self._result
        self._thread = self._start()
        return batch


def run_variant(name: str, steps: int, warmup: int, threads: int = 2) -> dict[str, object]:
    torch.set_num_threads(threads)
    settings = yaml.safe_load(DEMO_CONFIG.read_text())
    channels_last = "channels_last" in name
    dataset = load_dataset(resolve_config(settings))
    config = resolve_config(settings, num_factors=dataset.num_factors)
    torch.manual_seed(config.seed)
    model = make_model(config, dataset)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = model.configure_optimizers(config)["model"]
    for group in optimizer.param_groups:
        if "fused" in name:
            group["fused"] = True
        if "foreach" in name:
            group["foreach"] = True
    mode = "decoder" if "compile decoder" in name else "model" if "compile" in name else "off"
    exact = copy.deepcopy(model).double()  # before any compile
    forward = compile_for_training(model, model, mode)
    compile_seconds = None
    generator = torch.Generator().manual_seed(config.seed)
    grad_err = _gradient_error(model, forward, exact, dataset, config, channels_last)
    prefetch = _Prefetcher(dataset, config.batch_size, generator) if "prefetch" in name else None
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    totals: list[float] = []
    losses: list[float] = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        if prefetch is not None:
            images = prefetch.next()
        else:
            images = dataset.sample_batch(config.batch_size, generator)[0]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        outputs = forward(images)
        loss = model.losses(images, outputs)["loss"]
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        clip_gradients(optimizer, config.grad_clip)
        optimizer.step()
        t4 = time.perf_counter()
        losses.append(float(loss.detach()))
        if i == 0 and compile_seconds is None and "compile" in name:
            compile_seconds = t4 - t0
        if i >= warmup:
            for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[phase].append(seconds)
            totals.append(t4 - t0)
    row: dict[str, object] = {"variant": name, "steps_s": 1.0 / statistics.median(totals)}
    row.update({f"{p}_ms": 1e3 * statistics.median(v) for p, v in phases.items()})
    row["compile_s"] = compile_seconds
    row["grad_err"] = grad_err
    row["losses"] = losses[:5]
    return row


def _gradient_error(model, forward, exact, dataset, config, channels_last: bool) -> float:
    """Largest relative error (norm of the difference / norm) over the parameters of one batch's gradients
    through ``forward``, against ``exact`` (the same model in float64, run eagerly)."""
    images = dataset.sample_batch(config.batch_size, torch.Generator().manual_seed(12345))[0]
    grads = []
    for net, f, x in ((model, forward, images), (exact, exact, images.double())):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net.zero_grad(set_to_none=True)
        net.losses(x, f(x))["loss"].backward()
        grads.append([p.grad.double() for p in net.parameters()])
        net.zero_grad(set_to_none=True)
    return max(float((g - e).norm() / e.norm()) for g, e in zip(*grads) if float(e.norm()) > 0)


VARIANTS = (
    "default",
    "channels_last",
    "fused AdamW",
    "prefetch",
    "compile",
    "compile decoder",
    "compile decoder + channels_last",
)


def measure(steps: int, warmup: int) -> list[dict[str, object]]:
    variants = VARIANTS[:2] if quick_mode() else VARIANTS
    # The renderer's cache filled (see the module docstring), then a discarded pass: the first variant of a
    # process otherwise pays the process's one-time costs (oneDNN primitive creation, the allocator's growth,
    # the cache: data 15 ms/step in the first variant, < 1 ms after), which inflated every later variant's
    # speed-up by ~1.2x in the first run.
    _geometry_cache().get(torch.arange(8 * 4 * 15))
    run_variant("default", warmup, warmup)
    rows = [run_variant(name, steps, warmup) for name in variants]
    reference = rows[0]["losses"]
    for row in rows:
        row["speedup"] = row["steps_s"] / rows[0]["steps_s"]
        row["max_rel_loss_diff"] = max(abs(a - b) / abs(b) for a, b in zip(row.pop("losses"), reference))
    return rows


def test_training_step(benchmark, target) -> None:
    steps, warmup = sized(60, 4), sized(8, 2)
    rows: list[dict[str, object]] = []
    benchmark.pedantic(lambda: rows.extend(measure(steps, warmup)), rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    print_table(f"demo QLAE training step, 2 threads ({steps} timed steps after {warmup})", rows)
    precise = [r for r in rows if r["grad_err"] <= 10 * rows[0]["grad_err"]]
    best = max(precise, key=lambda r: r["speedup"])
    target(
        "a training step >= 1.5x faster than the default at eager precision",
        best["speedup"] >= 1.5,
        f"best {best['variant']}: {best['speedup']:.2f}x ({best['steps_s']:.2f} steps/s)",
    )


if __name__ == "__main__":
    steps, warmup = sized(60, 4), sized(8, 2)
    print_table(
        f"demo QLAE training step, 2 threads ({steps} timed steps after {warmup})", measure(steps, warmup)
    )
