"""The paper's results tables from a folder of run directories: per model and dataset the mean of each
metric over seeds with a 95% Student-t confidence interval, an aggregate column over all datasets, and the
paper's bolding rule.

Statistics (as the authors' ``scripts/tables_old.py`` computes them, with the t quantile taken for the
actual number of runs instead of a hard-coded table):

- per (model, dataset, metric) over its n runs: ``se = std / sqrt(n)`` with the population std (``ddof=0``,
  the authors' ``np.std``; ``ddof=1`` gives the textbook sample std), ``ci = t(0.975, n - 1) * se``
  (n = 7: t = 2.447);
- aggregate per (model, metric): the mean over all the model's runs of every dataset, and
  ``ci = t(0.975, N - 1) * mean(se over datasets)`` with N the model's number of runs (N = 28: t = 2.052);
- bolding, per column (dataset, metric): the best entry is the one with the highest ``mean + ci``; every
  entry whose ``mean + ci`` reaches the best entry's ``mean - ci`` is bold (all metrics: higher is better).

With a single run (n = 1) no interval exists: ``ci``, ``std`` and ``se`` are ``NaN`` (``null`` in JSON),
the cell shows the mean alone, and the bolding rule counts its interval as zero width.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import stats

from latentquant.train.rundir import CONFIG_NAME, METRICS_NAME

METRICS = ("infom", "infoe", "infoc", "psnr")
MAIN_METRICS = ("infom", "infoe", "infoc")
METRIC_LABELS = {"infom": "InfoM", "infoe": "InfoE", "infoc": "InfoC", "psnr": "PSNR (dB)"}
AGGREGATE = "aggregate"
FORMATS = ("markdown", "latex", "html", "csv", "json")
# Row and column order of the paper's tables; names not listed follow in alphabetical order.
MODEL_ORDER = (
    "ae",
    "beta_vae",
    "beta_tcvae",
    "bioae",
    "qlae",
    "qlae_global",
    "qlae_no_wd",
    "vqvae",
    "vqvae_no_wd",
    "wgan",
    "infowgan",
    "qlinfowgan",
    "qlinfowgan_no_wd",
)
DATASET_ORDER = ("shapes3d", "mpi3d", "falcor3d", "isaac3d", "dsprites")
# Settings that do not change what a run computes (where, how fast, what it logs): runs that differ only in
# these (and the seed) belong to one table entry. Every other setting that differs between the runs of a
# model and dataset (a swept lr, another number of steps) splits the row: "qlae (lr=0.0003)".
INCIDENTAL_SETTINGS = frozenset(
    {
        "seed",
        "log_every",
        "checkpoint_every",
        "eval_every",
        "device",
        "compile",
        "num_threads",
        "logger",
        "overwrite",
    }
)


@dataclass(frozen=True)
class RunMetrics:
    """One finished run: where it is, what it trained, and its final metrics (``NaN`` where missing).

    ``model`` is the table row: the model's name, followed by the settings that set this run apart from
    other runs of the model in the folder (``"qlae (lr=0.0003)"``); ``seed`` and ``settings`` come from
    the run's ``config.yaml`` (``None`` / empty without one).
    """

    path: Path
    model: str
    dataset: str
    values: dict[str, float]
    seed: int | None = None
    settings: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """A run directory that does not contribute (fully) to the table, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Cell:
    """One table entry (a JSON record of ``latentquant table --format json``).

    Attributes:
        model, dataset, metric: the entry's row, column (``"aggregate"`` for the aggregate) and metric.
        mean: mean over the runs.
        ci: half-width of the 95% confidence interval (``NaN`` with fewer than two runs).
        n: number of runs.
        std: standard deviation of the runs (``ddof`` as asked; for the aggregate, of all the model's runs).
        se: standard error behind ``ci`` (for the aggregate, the mean of the per-dataset standard errors).
        bold: the entry is bold under the paper's rule.
    """

    model: str
    dataset: str
    metric: str
    mean: float
    ci: float
    n: int
    std: float
    se: float
    bold: bool = False


def t_quantile(n: int) -> float:
    """The two-sided 95% Student-t quantile ``t(0.975, n - 1)`` for ``n`` samples (``NaN`` for n < 2)."""
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.975, n - 1))


def _order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """``names`` in the order of ``preferred`` (a row label ``"qlae (lr=...)"`` by its model ``qlae``), the
    others after them, alphabetically."""
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(set(names), key=lambda n: (rank.get(n.split(" (", 1)[0], len(rank)), n))


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def collect_runs(root: str | Path) -> tuple[list[RunMetrics], list[Problem]]:
    """Every run under ``root`` (any depth): finished runs (with ``metrics.json``) and the problems found.

    A directory holding ``config.yaml`` but no ``metrics.json`` is an unfinished run; a ``metrics.json``
    that cannot be read, lacks ``model``/``dataset``, or lacks a metric (or holds a non-finite value) is
    reported too. Runs missing only some metrics still count for the metrics they have.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist or is not a directory")
    runs: list[RunMetrics] = []
    problems: list[Problem] = []
    for config_path in sorted(root.rglob(CONFIG_NAME)):
        if not (config_path.parent / METRICS_NAME).is_file():
            problems.append(Problem(config_path.parent, f"unfinished: no {METRICS_NAME}"))
    for path in sorted(root.rglob(METRICS_NAME)):
        run_dir = path.parent
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(Problem(run_dir, f"unreadable {METRICS_NAME}: {err}"))
            continue
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("model", "dataset")):
            problems.append(Problem(run_dir, f"{METRICS_NAME} does not name its model and dataset"))
            continue
        values = {metric: _as_float(data.get(metric)) for metric in METRICS}
        missing = [metric for metric, value in values.items() if not math.isfinite(value)]
        if missing:
            problems.append(Problem(run_dir, f"missing or non-finite metric(s) {missing}"))
        settings = _run_settings(run_dir, problems)
        seed = settings.get("seed")
        runs.append(
            RunMetrics(
                run_dir,
                data["model"],
                data["dataset"],
                values,
                seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                settings,
            )
        )
    runs = _label_rows(runs)
    return _without_duplicates(runs, problems), problems


def _run_settings(run_dir: Path, problems: list[Problem]) -> dict[str, object]:
    """The flat settings in ``run_dir/config.yaml`` (empty, with a problem listed, when it is unreadable)."""
    if not (run_dir / CONFIG_NAME).is_file():
        return {}
    from latentquant.train import schema
    from latentquant.train.config import load_yaml_config

    try:
        return schema.flatten(load_yaml_config(run_dir / CONFIG_NAME))
    except ValueError as err:
        problems.append(
            Problem(run_dir, f"unreadable {CONFIG_NAME} ({err}): its seed and settings are unknown")
        )
        return {}


def _setting_text(value: object) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={_setting_text(v)}" for k, v in sorted(value.items()))
    return str(value)


def _label_rows(runs: list[RunMetrics]) -> list[RunMetrics]:
    """Give each run its row label: the model's name plus every setting (other than
    :data:`INCIDENTAL_SETTINGS`) whose value differs between the runs of that model on one dataset, so
    that runs of different settings never pool into one entry. A setting a run's ``config.yaml`` lacks
    counts as a value of its own (``<unset>``)."""
    groups: dict[tuple[str, str], list[RunMetrics]] = {}
    for run in runs:
        groups.setdefault((run.model, run.dataset), []).append(run)
    varying: dict[str, set[str]] = {}
    for (model, _), members in groups.items():
        keys = set().union(*(m.settings for m in members)) - INCIDENTAL_SETTINGS
        for key in keys:
            if len({_setting_text(m.settings.get(key, "<unset>")) for m in members}) > 1:
                varying.setdefault(model, set()).add(key)
    labelled = []
    for run in runs:
        keys = sorted(varying.get(run.model, ()))
        if keys:
            parts = ", ".join(f"{k}={_setting_text(run.settings.get(k, '<unset>'))}" for k in keys)
            run = replace(run, model=f"{run.model} ({parts})")
        labelled.append(run)
    return labelled


def _without_duplicates(runs: list[RunMetrics], problems: list[Problem]) -> list[RunMetrics]:
    """Drop a run whose row, dataset and seed repeat an earlier run's (a copied run directory, the same run
    trained twice into two folders): one seed must count once. The first in path order is kept; each
    dropped run is listed as a problem naming the run it repeats."""
    first: dict[tuple[str, str, int], Path] = {}
    kept = []
    for run in runs:
        if run.seed is not None:
            key = (run.model, run.dataset, run.seed)
            if key in first:
                problems.append(
                    Problem(
                        run.path,
                        f"duplicate: same model, dataset, settings and seed {run.seed} as {first[key]}; "
                        "counted once",
                    )
                )
                continue
            first[key] = run.path
        kept.append(run)
    return kept


def _summary(values: np.ndarray, ddof: int) -> tuple[float, float, float]:
    """(mean, std, se) of ``values``; std and se are ``NaN`` with fewer than two values."""
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan
    std = float(np.std(values, ddof=ddof))
    return mean, std, std / math.sqrt(n)


def compute_table(runs: Sequence[RunMetrics], ddof: int = 0) -> list[Cell]:
    """Every entry of the table: per (model, dataset, metric) and per (model, ``"aggregate"``, metric).

    Args:
        runs: finished runs (:func:`collect_runs`); a run's ``NaN`` metrics are left out of that metric.
        ddof: 0 for the population std (the authors' choice, the default), 1 for the sample std.

    Returns:
        Cells ordered by model, then dataset (aggregate first), then metric, with ``bold`` set.

    Raises:
        ValueError: ``ddof`` is not 0 or 1.
    """
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    groups: dict[tuple[str, str, str], list[float]] = {}
    for run in runs:
        for metric, value in run.values.items():
            if math.isfinite(value):
                groups.setdefault((run.model, run.dataset, metric), []).append(value)
    models = _order({m for m, _, _ in groups}, MODEL_ORDER)
    datasets = _order({d for _, d, _ in groups}, DATASET_ORDER)
    cells: list[Cell] = []
    for model in models:
        for metric in METRICS:
            per_dataset: list[Cell] = []
            for dataset in datasets:
                values = groups.get((model, dataset, metric))
                if not values:
                    continue
                mean, std, se = _summary(np.asarray(values, dtype=np.float64), ddof)
                n = len(values)
                per_dataset.append(Cell(model, dataset, metric, mean, t_quantile(n) * se, n, std, se))
            if not per_dataset:
                continue
            pooled = np.concatenate(
                [np.asarray(groups[(model, c.dataset, metric)], dtype=np.float64) for c in per_dataset]
            )
            total = len(pooled)
            mean, std, _ = _summary(pooled, ddof)
            se = float(np.mean([c.se for c in per_dataset]))
            cells.append(Cell(model, AGGREGATE, metric, mean, t_quantile(total) * se, total, std, se))
            cells.extend(per_dataset)
    order = {name: i for i, name in enumerate([AGGREGATE, *datasets])}
    cells.sort(key=lambda c: (models.index(c.model), order[c.dataset], METRICS.index(c.metric)))
    return _bolded(cells)


def _bolded(cells: list[Cell]) -> list[Cell]:
    """Apply the bolding rule within each (dataset, metric) column."""

    def width(cell: Cell) -> float:
        return cell.ci if math.isfinite(cell.ci) else 0.0

    columns: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        columns.setdefault((cell.dataset, cell.metric), []).append(cell)
    bold: set[int] = set()
    for column in columns.values():
        best = max(column, key=lambda c: c.mean + width(c))
        threshold = best.mean - width(best)
        bold |= {id(c) for c in column if c.mean + width(c) >= threshold}
    return [Cell(**{**asdict(c), "bold": id(c) in bold}) for c in cells]


# ----------------------------------------------------------------------------------------------- rendering


def _digits(metric: str) -> int:
    return 1 if metric == "psnr" else 2


def _entry(cell: Cell | None, style: str) -> str:
    if cell is None:
        return "–" if style != "latex" else "--"
    digits = _digits(cell.metric)
    pm = {"markdown": " ± ", "html": " ± ", "latex": r" \pm "}[style]
    text = f"{cell.mean:.{digits}f}"
    if math.isfinite(cell.ci):
        text += f"{pm}{cell.ci:.{digits}f}"
    else:
        text += " (n=1)" if style != "latex" else r"\ (n{=}1)"
    if cell.bold:
        text = {"markdown": f"**{text}**", "html": f"<b>{text}</b>", "latex": rf"\mathbf{{{text}}}"}[style]
    return f"${text}$" if style == "latex" else text


def _grids(cells: Sequence[Cell]) -> list[tuple[str, list[str], list[tuple[str, str]]]]:
    """The tables to print: (title, models, [(dataset, metric) columns])."""
    models = list(dict.fromkeys(c.model for c in cells))
    datasets = list(dict.fromkeys(c.dataset for c in cells if c.dataset != AGGREGATE))
    present = {(c.dataset, c.metric) for c in cells}
    main = [(d, m) for d in [AGGREGATE, *datasets] for m in MAIN_METRICS if (d, m) in present]
    grids = [("InfoM / InfoE / InfoC (mean ± 95% CI over seeds)", models, main)]
    for dataset in [*datasets, AGGREGATE]:
        columns = [(dataset, m) for m in METRICS if (dataset, m) in present]
        grid_models = [m for m in models if any((m, dataset) == (c.model, c.dataset) for c in cells)]
        grids.append((f"{dataset}", grid_models, columns))
    return grids


def _header(dataset: str, metric: str, with_dataset: bool) -> str:
    return f"{dataset} {METRIC_LABELS[metric]}" if with_dataset else METRIC_LABELS[metric]


def render(cells: Sequence[Cell], fmt: str = "markdown") -> str:
    """The tables as text: a main table (InfoM/InfoE/InfoC, aggregate and every dataset) and one table per
    dataset and for the aggregate (InfoM/InfoE/InfoC/PSNR).

    Args:
        cells: :func:`compute_table` output.
        fmt: ``markdown``, ``latex``, ``html``, ``csv`` or ``json`` (the last two: one record per cell).

    Raises:
        ValueError: an unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return json.dumps([_record(c) for c in cells], indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=[*_record(cells[0])] if cells else ["model"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(_record(c, csv_style=True) for c in cells)
        return out.getvalue()
    lookup = {(c.model, c.dataset, c.metric): c for c in cells}
    parts = []
    for index, (title, models, columns) in enumerate(_grids(cells)):
        with_dataset = index == 0
        headers = [_header(d, m, with_dataset) for d, m in columns]
        rows = [[model] + [_entry(lookup.get((model, d, m)), fmt) for d, m in columns] for model in models]
        parts.append(_render_grid(title, ["model", *headers], rows, fmt))
    return "\n".join(parts)


def _render_grid(title: str, headers: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join(["---"] + [":---:"] * (len(headers) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + f"<td>{html.escape(row[0])}</td>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>\n"
            for row in rows
        )
        return f"<table>\n<caption>{html.escape(title)}</caption>\n<tr>{head}</tr>\n{body}</table>\n"

    def tex(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")

    lines = [
        f"% {tex(title)}",
        r"\begin{tabular}{l" + "c" * (len(headers) - 1) + "}",
        r"\toprule",
        " & ".join(tex(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join([tex(row[0]), *row[1:]]) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _record(cell: Cell, csv_style: bool = False) -> dict[str, object]:
    def number(value: float) -> float | None | str:
        if math.isfinite(value):
            return value
        return "" if csv_style else None

    return {
        "model": cell.model,
        "dataset": cell.dataset,
        "metric": cell.metric,
        "mean": number(cell.mean),
        "ci": number(cell.ci),
        "n": cell.n,
        "std": number(cell.std),
        "se": number(cell.se),
        "bold": cell.bold,
    }


def format_problems(problems: Sequence[Problem]) -> str:
    """One line per problem run (for stderr)."""
    return "".join(f"  {p.path}: {p.reason}\n" for p in problems)
