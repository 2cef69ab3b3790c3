"""``latentquant metrics FILE.npz``: table, JSON, heatmap, and exit status 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latentquant.cli import main
from latentquant.metrics import plot_nmi

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def representation(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    sources = rng.integers(0, 4, (400, 3))
    latents = np.concatenate(
        [sources + 0.2 * rng.standard_normal((400, 3)), 1e-3 * rng.standard_normal((400, 1))], 1
    )
    path = tmp_path / "rep.npz"
    np.savez(path, sources=sources, latents=latents, source_names=np.array(["hue", "scale", "shape"]))
    return path


def test_writes_table_json_and_heatmap(
    representation: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    status = main(["metrics", str(representation), "--out", str(out), "--dci-model", "linear"])
    assert status == 0
    printed = capsys.readouterr().out
    for name in (
        "infom",
        "infoe",
        "infoc",
        "mig",
        "dci_disentanglement",
        "sap",
        "modularity",
        "explicitness",
    ):
        assert name in printed
    assert "active latents: 3 of 4" in printed
    record = json.loads((out / "metrics.json").read_text())
    assert record["num_latents"] == 4 and record["convention"] == "paper"
    assert record["infomec"]["active_latents"] == [True, True, True, False]
    assert np.array(record["infomec"]["nmi"]).shape == (3, 4)
    assert 0.9 < record["scalars"]["infom"] <= 1.0
    assert (out / "nmi.png").read_bytes()[:8] == PNG_MAGIC


def test_default_output_folder_and_metric_subset(representation: Path) -> None:
    status = main(["metrics", str(representation), "--metrics", "mig,sap", "--convention", "standalone"])
    assert status == 0
    out = representation.with_name("rep_metrics")
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["scalars"]) == {"mig", "sap"}
    assert not (out / "nmi.png").exists()  # no InfoMEC, no NMI


def test_discrete_latents_flag(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sources = rng.integers(0, 3, (300, 2))
    np.savez(tmp_path / "q.npz", sources=sources, latents=np.concatenate([sources, sources[:, :1]], 1) * 0.5)
    assert main(["metrics", str(tmp_path / "q.npz"), "--discrete-latents", "--metrics", "infomec"]) == 0
    record = json.loads((tmp_path / "q_metrics" / "metrics.json").read_text())
    assert record["discrete_latents"] is True
    assert record["scalars"]["infoc"] < 0.9  # source 0 is split over two latents


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "no such file"),
        (b"not a zip archive", [], "not an .npz archive"),
        ("sources-only", [], "missing array(s) ['latents']"),
        ("good", ["--metrics", "mig,nope"], "--metrics must be"),
        ("mismatched", [], "same number of samples"),
        ("constant-source", [], "are constant"),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: object, args: list[str], message: str
) -> None:
    path = tmp_path / "input.npz"
    rng = np.random.default_rng(2)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "sources-only":
        np.savez(path, sources=rng.integers(0, 3, (50, 2)))
    elif content == "good":
        np.savez(path, sources=rng.integers(0, 3, (50, 2)), latents=rng.standard_normal((50, 2)))
    elif content == "mismatched":
        np.savez(path, sources=rng.integers(0, 3, (50, 2)), latents=rng.standard_normal((49, 2)))
    elif content == "constant-source":
        np.savez(path, sources=np.zeros((50, 2)), latents=rng.standard_normal((50, 2)))
    assert main(["metrics", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentquant metrics: error:") and message in err


def test_bad_convention_is_an_argparse_error(representation: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["metrics", str(representation), "--convention", "papers"])
    assert exit_info.value.code == 2


def test_plot_nmi_marks_inactive_and_checks_shapes(tmp_path: Path) -> None:
    nmi = np.array([[0.9, 0.1, 0.0], [0.05, 0.8, 0.3]])
    path = plot_nmi(nmi, np.array([True, True, False]), tmp_path / "sub" / "nmi.png", source_names=["a", "b"])
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"active \(L,\)"):
        plot_nmi(nmi, np.array([True, False]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="source_names must have 2 entries"):
        plot_nmi(nmi, np.array([True, True, False]), tmp_path / "x.png", source_names=["a"])
