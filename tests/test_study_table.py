"""latentquant.study.table: the paper's statistics against hand-computed values, the bolding rule, the
listing of unfinished runs and missing metrics, and the ``latentquant table`` command."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from latentquant.cli import main
from latentquant.study.table import (
    AGGREGATE,
    Cell,
    RunMetrics,
    _bolded,
    collect_runs,
    compute_table,
    render,
    t_quantile,
)

SEVEN = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # mean 0.4, population std 0.2, sample std sqrt(0.28 / 6)


def _write_run(path, model, dataset, **metrics):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model: {model}\ndataset: {dataset}\n")
    (path / "metrics.json").write_text(json.dumps({"model": model, "dataset": dataset, **metrics}))


def _runs(model, dataset, infom, shift=0.0):
    return [
        RunMetrics(None, model, dataset, {"infom": v + shift, "infoe": 0.5, "infoc": 0.5, "psnr": 30.0})
        for v in infom
    ]


def _cell(cells, model, dataset, metric="infom"):
    (cell,) = [c for c in cells if (c.model, c.dataset, c.metric) == (model, dataset, metric)]
    return cell


def test_t_quantiles_match_the_authors_table():
    assert t_quantile(7) == pytest.approx(2.447, abs=5e-4)  # 6 degrees of freedom
    assert t_quantile(28) == pytest.approx(2.052, abs=5e-4)  # 27 degrees of freedom
    assert t_quantile(2) == pytest.approx(12.706, abs=5e-4)
    assert math.isnan(t_quantile(1))


def test_per_dataset_mean_and_ci_population_std():
    cell = _cell(compute_table(_runs("qlae", "shapes3d", SEVEN)), "qlae", "shapes3d")
    assert cell.n == 7
    assert cell.mean == pytest.approx(0.4)
    assert cell.std == pytest.approx(0.2)
    assert cell.se == pytest.approx(0.2 / math.sqrt(7))
    assert cell.ci == pytest.approx(2.446912 * 0.2 / math.sqrt(7), rel=1e-6)  # 0.184968


def test_ddof_one_gives_the_sample_std():
    cell = _cell(compute_table(_runs("qlae", "shapes3d", SEVEN), ddof=1), "qlae", "shapes3d")
    assert cell.std == pytest.approx(math.sqrt(0.28 / 6))
    assert cell.ci == pytest.approx(2.446912 * math.sqrt(0.28 / 6) / math.sqrt(7), rel=1e-6)  # 0.199790
    with pytest.raises(ValueError, match="ddof must be 0 or 1"):
        compute_table(_runs("qlae", "shapes3d", SEVEN), ddof=2)


def test_aggregate_pools_runs_and_averages_standard_errors():
    runs = []
    for k, dataset in enumerate(["shapes3d", "mpi3d", "falcor3d", "isaac3d"]):
        scale = [1.0, 2.0, 1.0, 0.5][k]
        runs += [RunMetrics(None, "qlae", dataset, {"infom": 0.1 * k + scale * (v - 0.4)}) for v in SEVEN]
    cells = compute_table(runs)
    agg = _cell(cells, "qlae", AGGREGATE)
    assert agg.n == 28
    assert agg.mean == pytest.approx(0.15)  # mean over all 28 runs
    se = 0.2 * (1.0 + 2.0 + 1.0 + 0.5) / 4 / math.sqrt(7)  # mean of the per-dataset standard errors
    assert agg.se == pytest.approx(se)
    assert agg.ci == pytest.approx(2.051831 * se, rel=1e-6)
    assert _cell(cells, "qlae", "mpi3d").std == pytest.approx(0.4)


def test_single_run_has_no_interval():
    cells = compute_table(_runs("ae", "shapes3d", [0.3]))
    cell = _cell(cells, "ae", "shapes3d")
    assert cell.mean == pytest.approx(0.3) and math.isnan(cell.ci) and math.isnan(cell.std)
    records = json.loads(render(cells, "json"))
    assert records[0]["ci"] is None and records[0]["n"] == 1
    assert "0.30 (n=1)" in render(cells, "markdown")


def test_bolding_rule():
    def cell(model, mean, ci):
        return Cell(model, "shapes3d", "infom", mean, ci, 7, 0.0, 0.0)

    # best = highest mean + ci = "a" (0.60); threshold = its mean - ci = 0.40
    cells = _bolded([cell("a", 0.5, 0.1), cell("b", 0.45, 0.01), cell("c", 0.3, 0.05), cell("d", 0.55, 0.0)])
    assert [c.bold for c in cells] == [True, True, False, True]
    # exactly reaching the threshold counts
    cells = _bolded([cell("a", 0.5, 0.1), cell("b", 0.3, 0.1)])
    assert [c.bold for c in cells] == [True, True]
    cells = _bolded([cell("a", 0.5, 0.1), cell("b", 0.3, 0.0999)])
    assert [c.bold for c in cells] == [True, False]


def test_collect_runs_lists_unfinished_runs_and_missing_metrics(tmp_path):
    _write_run(tmp_path / "qlae-shapes3d-s0", "qlae", "shapes3d", infom=0.6, infoe=0.8, infoc=0.4, psnr=30.0)
    _write_run(tmp_path / "qlae-shapes3d-s1", "qlae", "shapes3d", infom=0.7, infoe=0.9, infoc=0.5)
    (tmp_path / "ae-shapes3d-s0").mkdir()
    (tmp_path / "ae-shapes3d-s0" / "config.yaml").write_text("model: ae\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    runs, problems = collect_runs(tmp_path)
    assert len(runs) == 2
    reasons = {p.path.name: p.reason for p in problems}
    assert "psnr" in reasons["qlae-shapes3d-s1"]
    assert "unfinished" in reasons["ae-shapes3d-s0"]
    assert "unreadable" in reasons["broken"]
    cells = compute_table(runs)
    assert _cell(cells, "qlae", "shapes3d").n == 2
    assert _cell(cells, "qlae", "shapes3d", "psnr").n == 1  # the run without PSNR does not count for PSNR


def test_cli_json_records_and_markdown(tmp_path, capsys):
    for seed, (m, e) in enumerate([(0.6, 0.8), (0.7, 0.9), (0.8, 1.0)]):
        _write_run(tmp_path / f"qlae-s{seed}", "qlae", "shapes3d", infom=m, infoe=e, infoc=0.5, psnr=30.0)
        _write_run(tmp_path / f"ae-s{seed}", "ae", "shapes3d", infom=m - 0.6, infoe=e, infoc=0.5, psnr=31.0)
    (tmp_path / "ae-s9").mkdir()
    (tmp_path / "ae-s9" / "config.yaml").write_text("model: ae\n")
    assert main(["table", str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert "ae-s9" in captured.err and "unfinished" in captured.err
    assert set(records[0]) >= {"model", "dataset", "metric", "mean", "ci", "n", "std", "bold"}
    by_key = {(r["model"], r["dataset"], r["metric"]): r for r in records}
    assert by_key[("qlae", "shapes3d", "infom")]["bold"] is True
    assert by_key[("ae", "shapes3d", "infom")]["bold"] is False
    assert by_key[("ae", "shapes3d", "psnr")]["bold"] is True
    assert by_key[("qlae", AGGREGATE, "infom")]["n"] == 3
    sd = math.sqrt(2 / 3) * 0.1  # population std of 0.6, 0.7, 0.8
    assert by_key[("qlae", "shapes3d", "infom")]["ci"] == pytest.approx(t_quantile(3) * sd / math.sqrt(3))
    assert [r["model"] for r in records][0] == "ae"  # the paper's row order
    for fmt in ("markdown", "latex", "html"):
        assert main(["table", str(tmp_path), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert "qlae" in out and "0.70" in out
    assert main(["table", str(tmp_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(records)
    row = [r for r in rows if (r["model"], r["dataset"], r["metric"]) == ("qlae", "shapes3d", "infom")][0]
    assert float(row["mean"]) == pytest.approx(0.7) and row["bold"] == "True"
    assert main(["table", str(tmp_path / "nothing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["table", str(empty)]) == 2


def _write_seeded_run(path, model, seed, infom, **settings):
    path.mkdir(parents=True)
    settings = {"model": model, "dataset": "shapes3d", "seed": seed, "num_threads": 1, **settings}
    lines = [f"{k}: {v}" for k, v in settings.items()]
    (path / "config.yaml").write_text("\n".join(lines) + "\n")
    (path / "metrics.json").write_text(
        json.dumps(
            {"model": model, "dataset": "shapes3d", "infom": infom, "infoe": 0.5, "infoc": 0.5, "psnr": 30.0}
        )
    )


def test_a_duplicated_seed_counts_once(tmp_path):
    _write_seeded_run(tmp_path / "a" / "qlae-seed0", "qlae", 0, 0.6)
    _write_seeded_run(tmp_path / "a" / "qlae-seed1", "qlae", 1, 0.8)
    _write_seeded_run(tmp_path / "b" / "qlae-seed0-copy", "qlae", 0, 0.6)  # e.g. a copied run directory
    runs, problems = collect_runs(tmp_path)
    assert sorted(r.seed for r in runs) == [0, 1]
    (problem,) = problems
    assert problem.path.name == "qlae-seed0-copy" and "duplicate" in problem.reason
    assert str(tmp_path / "a" / "qlae-seed0") in problem.reason
    cell = _cell(compute_table(runs), "qlae", "shapes3d")
    assert cell.n == 2 and cell.mean == pytest.approx(0.7)


def test_runs_with_different_settings_get_their_own_rows(tmp_path):
    # a swept lr must not pool into one entry; the thread count (incidental) does not split rows
    for seed in (0, 1):
        _write_seeded_run(tmp_path / f"lr3-{seed}", "qlae", seed, 0.6 + seed / 10, lr=0.001)
        _write_seeded_run(tmp_path / f"lr4-{seed}", "qlae", seed, 0.2 + seed / 10, lr=0.0001)
        _write_seeded_run(tmp_path / f"ae-{seed}", "ae", seed, 0.4)
    _write_seeded_run(tmp_path / "ae-2", "ae", 2, 0.4, num_threads=2)
    runs, problems = collect_runs(tmp_path)
    assert problems == []
    cells = compute_table(runs)
    assert _cell(cells, "qlae (lr=0.001)", "shapes3d").mean == pytest.approx(0.65)
    assert _cell(cells, "qlae (lr=0.0001)", "shapes3d").mean == pytest.approx(0.25)
    assert _cell(cells, "ae", "shapes3d").n == 3
    assert list(dict.fromkeys(c.model for c in cells)) == ["ae", "qlae (lr=0.0001)", "qlae (lr=0.001)"]
