"""The top-level command: help written for users, --version."""

import pytest
import torch

import latentquant
from latentquant.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"latentquant {latentquant.__version__} (torch {torch.__version__}")


def test_top_level_help_is_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "quick start" in out and "configs/demo.yaml" in out and "report.html" in out
    assert "latentquant.evaluate(encode_fn, dataset)" in out
    for command in ("train", "evaluate", "metrics", "data"):
        assert f"\n    {command} " in out
    assert "sub-command module" not in out  # not the developer docstring


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "COMMAND" in capsys.readouterr().err
