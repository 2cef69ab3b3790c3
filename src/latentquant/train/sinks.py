"""Logging sinks next to ``log.jsonl``: CSV files, TensorBoard, and Weights & Biases when installed and asked for.

``log.jsonl`` stays the record of a run (every record, always written; reports and resumes read it). The
``logger`` setting adds views of the same records, comma-separated: ``csv`` (``train.csv`` and ``eval.csv``, one
column per value, extended when a new value appears), ``tensorboard`` (event files under ``tensorboard/``:
``tensorboard --logdir RUN_DIR``), ``wandb`` (needs the ``wandb`` package, which latentquant never requires; runs
``offline`` unless the ``WANDB_MODE`` environment variable says otherwise, so nothing is sent by default).
``jsonl`` (the default) adds nothing.

On resume from step S, every sink drops what it holds after S (as ``log.jsonl`` is rewritten), so a resumed run's
CSV and TensorBoard curves have no doubled or orphaned points.

Records are the training loop's: ``{"kind": "train", "step", "losses": {...}, "steps_per_second", "time"}`` and
``{"kind": "eval", "step", "metrics": {...}}``; numbers are logged, everything else skipped.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

LOGGERS = ("jsonl", "csv", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"


def parse_logger(logger: str) -> tuple[str, ...]:
    """``"csv,tensorboard"`` -> ``("csv", "tensorboard")``; unknown names, or a sink whose package is not installed,
    are a ValueError naming them (checked when the configuration is resolved, before a run starts)."""
    names = tuple(dict.fromkeys(n.strip() for n in str(logger).split(",") if n.strip()))
    unknown = [n for n in names if n not in LOGGERS]
    if unknown or not names:
        raise ValueError(
            f"logger: expected a comma-separated list from {', '.join(LOGGERS)} (e.g. logger=csv,tensorboard), "
            f"got {logger!r}"
        )
    for name, install in (("tensorboard", "tensorboard (or latentquant[tracking])"), ("wandb", "wandb")):
        if name in names and importlib.util.find_spec(name) is None:
            raise ValueError(
                f"logger={name} needs the {name} package: pip install {install}; it is never required"
            )
    return names


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record, flat: ``losses``/``metrics`` entries by their name, then the record's own."""
    out: dict[str, float] = {}
    for group in ("losses", "metrics"):
        for key, value in (record.get(group) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = float(value)
    for key, value in record.items():
        if key not in ("kind", "step", "losses", "metrics") and isinstance(value, (int, float)):
            if not isinstance(value, bool):
                out[key] = float(value)
    return out


class CSVSink:
    """``<kind>.csv`` per record kind: a ``step`` column then one column per value, in first-seen order."""

    def __init__(self, out_dir: Path, start_step: int) -> None:
        self.out_dir = out_dir
        self.columns: dict[str, list[str]] = {}
        self.rows: dict[str, list[dict[str, str]]] = {}
        for path in sorted(out_dir.glob("*.csv")):
            kind = path.stem
            if kind not in ("train", "eval"):
                continue
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns[kind] = [c for c in (reader.fieldnames or []) if c != "step"]
                self.rows[kind] = [
                    r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= start_step
                ]
            self._rewrite(kind)

    def _path(self, kind: str) -> Path:
        return self.out_dir / f"{kind}.csv"

    def _rewrite(self, kind: str) -> None:
        tmp = self._path(kind).with_name(f".{kind}.csv.tmp-{os.getpid()}")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["step", *self.columns[kind]])
            writer.writeheader()
            writer.writerows(self.rows[kind])
        os.replace(tmp, self._path(kind))

    def write(self, record: dict[str, Any]) -> None:
        kind = str(record.get("kind", "train"))
        values = _scalars(record)
        row = {"step": str(int(record["step"])), **{k: repr(v) for k, v in values.items()}}
        columns = self.columns.setdefault(kind, [])
        rows = self.rows.setdefault(kind, [])
        rows.append(row)
        new = [k for k in values if k not in columns]
        if new or not self._path(kind).exists():
            columns.extend(new)
            self._rewrite(kind)  # a new column: the header changes, rewrite the (small) file
            return
        with self._path(kind).open("a", newline="") as f:
            csv.DictWriter(f, ["step", *columns]).writerow(row)

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Scalars ``<kind>/<name>`` (``train/loss``, ``eval/infom``) under ``RUN_DIR/tensorboard``."""

    def __init__(self, out_dir: Path, start_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError(
                "logger=tensorboard needs the tensorboard package: pip install tensorboard "
                "(or latentquant[tracking])"
            ) from err
        # purge_step drops the events a resumed run is about to write again
        self.writer = SummaryWriter(
            str(out_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None
        )

    def write(self, record: dict[str, Any]) -> None:
        kind = str(record.get("kind", "train"))
        step = int(record["step"])
        for key, value in _scalars(record).items():
            if key != "time" and math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Weights & Biases, offline unless ``WANDB_MODE`` is set; one W&B run per run directory (resumed by id)."""

    def __init__(self, out_dir: Path, start_step: int, config: dict[str, Any] | None) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ValueError(
                "logger=wandb needs the wandb package (pip install wandb); it is never required"
            ) from err
        self.run = wandb.init(
            dir=str(out_dir),
            id="latentquant-" + hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:16],
            name=out_dir.name,
            resume="allow",
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=config or {},
        )

    def write(self, record: dict[str, Any]) -> None:
        kind = str(record.get("kind", "train"))
        values = {f"{kind}/{k}": v for k, v in _scalars(record).items() if k != "time"}
        self.run.log(values, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """The sinks the ``logger`` setting names (``jsonl`` alone: none), fed each record the log gets.

    Args:
        out_dir: the run directory.
        logger: the setting, e.g. ``"jsonl"``, ``"csv,tensorboard"``.
        start_step: the step training starts from (0 for a new run); sinks drop anything logged after it.
        config: the run's settings, for W&B.

    Use as a context manager (closes every sink), calling :meth:`write` with each record.
    """

    def __init__(
        self,
        out_dir: str | Path,
        logger: str = "jsonl",
        start_step: int = 0,
        config: dict[str, Any] | None = None,
    ) -> None:
        out_dir = Path(out_dir)
        names = parse_logger(logger)
        self.sinks: list[Any] = []
        try:
            if "csv" in names:
                self.sinks.append(CSVSink(out_dir, start_step))
            if "tensorboard" in names:
                self.sinks.append(TensorBoardSink(out_dir, start_step))
            if "wandb" in names:
                self.sinks.append(WandbSink(out_dir, start_step, config))
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_run(cls, out_dir: str | Path, config: Any, start_step: int) -> Sinks:
        """The sinks of a training run: its ``logger`` setting, starting at ``start_step``.

        Args:
            config: a :class:`latentquant.train.config.TrainConfig`.
        """
        return cls(out_dir, config.logger, start_step, config.to_dict())

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> Sinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
