"""Tracking: CSV / TensorBoard sinks next to log.jsonl, and the provenance record."""

import csv

import pytest
import torch
from train_utils import tiny_run

from latentquant.provenance import git_commit, provenance
from latentquant.train.sinks import Sinks, parse_logger


def _train(step, **losses):
    return {"kind": "train", "step": step, "losses": losses, "steps_per_second": 2.0, "time": 1.0e9 + step}


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_sink_columns_grow_and_resume_drops_later_rows(tmp_path):
    with Sinks(tmp_path, "csv") as sinks:
        sinks.write(_train(10, loss=1.0))
        sinks.write(_train(20, loss=0.5, generator=3.0))  # a new value: the header grows
        sinks.write(
            {"kind": "eval", "step": 20, "metrics": {"infom": 0.7, "eval_samples": 100, "flag": True}}
        )
        sinks.write(_train(30, loss=0.25))
    train = _rows(tmp_path / "train.csv")
    assert [r["step"] for r in train] == ["10", "20", "30"]
    assert list(train[0]) == ["step", "loss", "steps_per_second", "time", "generator"]
    assert (
        train[0]["generator"] == ""
        and float(train[1]["generator"]) == 3.0
        and float(train[2]["loss"]) == 0.25
    )
    assert _rows(tmp_path / "eval.csv") == [{"step": "20", "infom": "0.7", "eval_samples": "100.0"}]
    with Sinks(tmp_path, "csv", start_step=20) as sinks:  # resumed from the step-20 checkpoint
        sinks.write(_train(30, loss=0.3))
    assert [(r["step"], r["loss"]) for r in _rows(tmp_path / "train.csv")] == [
        ("10", "1.0"),
        ("20", "0.5"),
        ("30", "0.3"),
    ]


def test_tensorboard_sink(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Sinks(tmp_path, "csv,tensorboard") as sinks:
        for step in (10, 20, 30):
            sinks.write(_train(step, loss=1.0 / step))
        sinks.write({"kind": "eval", "step": 30, "metrics": {"infom": 0.5}})
    with Sinks(tmp_path, "tensorboard", start_step=20) as sinks:  # resume at 20: step 30 is logged again
        sinks.write(_train(30, loss=0.125))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(10, pytest.approx(0.1)), (20, pytest.approx(0.05)), (30, pytest.approx(0.125))]
    assert "time" not in " ".join(events.Tags()["scalars"])


def test_logger_setting_is_checked():
    assert parse_logger("jsonl") == ("jsonl",)
    assert parse_logger("csv, tensorboard,csv") == ("csv", "tensorboard")
    with pytest.raises(
        ValueError, match=r"logger: expected .*jsonl, csv, tensorboard, wandb.*got 'tensorbord'"
    ):
        parse_logger("tensorbord")


def test_wandb_is_optional(tmp_path):
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="logger=wandb needs the wandb package"):
            Sinks(tmp_path, "csv,wandb")
    else:
        pytest.skip("wandb is installed here")


def test_provenance_record():
    record = provenance("cpu", wall_time_s=1.23456)
    assert record["torch_version"] == torch.__version__ and record["device"] == "cpu"
    assert record["num_threads"] == torch.get_num_threads() and record["wall_time_s"] == 1.235
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. "AVX2", "AVX512"
    commit = git_commit()
    assert commit is None or len(commit.removesuffix("-dirty")) == 40
    assert git_commit(__import__("pathlib").Path("/")) is None  # not a checkout


def test_paper_size_on_cpu_warning(capsys):
    from latentquant.train.cpu_hint import PaperSizeOnCPU

    hint = PaperSizeOnCPU("cpu", "paper", "paper", total_steps=200_000)
    hint.observe(9.0)  # the first step (set-up costs) is not used
    assert capsys.readouterr().err == ""
    hint.observe(2.5)
    hint.observe(2.5)  # once only
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "~2.5 s per step" in err and "~5.8 days for 200,000 steps" in err
    assert "configs/demo.yaml" in err and "encoder=paper and decoder=paper" in err
    for quiet in (PaperSizeOnCPU("cuda", "paper", "paper", 10), PaperSizeOnCPU("cpu", "cpu", "small", 10)):
        quiet.observe(1.0)
        quiet.observe(1.0)
    assert capsys.readouterr().err == ""
    single = PaperSizeOnCPU("cpu", "small", "paper", total_steps=1)
    single.observe(3.0)
    assert "decoder=paper" in capsys.readouterr().err


TINY_RUN = tiny_run(deterministic=None)


def test_evaluate_run_writes_every_requested_metric_and_provenance(tmp_path):
    import json

    from latentquant.cli import main
    from latentquant.train.run import evaluate_run

    out = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in TINY_RUN.items() if k != "device"]
    assert main(["train", "--out", str(out), "--device", "cpu", "--no-progress", *overrides]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["provenance"]["torch_version"] == torch.__version__ and "mig" not in first
    assert (out / "config.yaml").read_text().count("device: cpu") == 1
    assert main(["evaluate", str(out), "--metrics", "infomec,mig,dci,sap"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    report = out / "report.html"
    for key in ("infom", "infoe", "infoc", "psnr", "mig", "dci_disentanglement", "dci_completeness", "sap"):
        assert isinstance(metrics[key], float), key
    assert {"mig", "dci", "sap"} <= set(metrics["details"]) and "modularity" not in metrics
    assert len(metrics["details"]["dci"]["importance"]) == 6  # one row per factor
    prov = metrics["provenance"]
    assert prov["device"] == "cpu" and prov["wall_time_s"] > 0 and prov["latentquant_version"]
    html = report.read_text()
    assert "<h2>Provenance</h2>" in html and torch.__version__ in html
    eval_records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "mig" in [r for r in eval_records if r["kind"] == "eval"][-1]["metrics"]
    with pytest.raises(ValueError, match="metrics: expected 'all' or a non-empty list"):
        evaluate_run(out, metrics="infomec,migg")


def test_logger_is_a_run_setting():
    from latentquant.train.config import resolve_config

    assert resolve_config({}).logger == "jsonl"
    assert resolve_config({"run.logger": "csv,tensorboard"}).logger == "csv,tensorboard"
    with pytest.raises(ValueError, match="logger: expected a comma-separated list"):
        resolve_config({"logger": "tensorbord"})


def test_training_feeds_the_sinks_and_warns_about_paper_networks_on_cpu(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from latentquant.train.loop import train

    out = tmp_path / "run"
    settings = {
        **TINY_RUN,
        "encoder": "paper",
        "steps": 2,
        "batch_size": 2,
        "log_every": 1,
    }
    train({**settings, "logger": "csv,tensorboard"}, out, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: the paper-sized networks (encoder=paper) on a CPU take ~") == 1
    assert "for 2 steps" in err and "configs/demo.yaml" in err
    assert [r["step"] for r in _rows(out / "train.csv")] == ["1", "2"]
    assert "infom" in _rows(out / "eval.csv")[0]
    assert any((out / "tensorboard").iterdir())
    prov = __import__("json").loads((out / "metrics.json").read_text())["provenance"]
    assert prov["wall_time_s"] > 0


def test_run_evaluation_shows_progress_on_a_terminal(monkeypatch, capsys):
    from latentquant import _progress
    from latentquant.data import get_dataset
    from latentquant.train.evaluate import encode_dataset, evaluation_factors
    from latentquant.zoo import build_model

    dataset = get_dataset("dsprites")
    model = build_model("qlae", 4, dataset.image_shape, encoder="tiny", decoder="tiny")
    factors = evaluation_factors(dataset, 40, 0)
    encode_dataset(model, dataset, factors, torch.device("cpu"))
    assert capsys.readouterr().err == ""  # not a terminal
    monkeypatch.setattr(_progress, "show_progress", lambda enabled=None: True)
    latents, _, _ = encode_dataset(model, dataset, factors, torch.device("cpu"))
    assert "evaluation: encoding" in capsys.readouterr().err and latents.shape == (40, 4)


def test_metrics_command_records_provenance(tmp_path, capsys):
    import json

    import numpy as np

    from latentquant.cli import main

    rng = np.random.default_rng(0)
    sources = rng.integers(0, 4, (200, 2))
    np.savez(tmp_path / "rep.npz", sources=sources, latents=sources + 0.1 * rng.normal(size=(200, 2)))
    assert (
        main(["metrics", str(tmp_path / "rep.npz"), "--metrics", "mig", "--out", str(tmp_path / "out")]) == 0
    )
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (
        record["provenance"]["torch_version"] == torch.__version__
        and record["provenance"]["wall_time_s"] >= 0
    )
    assert capsys.readouterr().err == ""  # no progress bar off a terminal
