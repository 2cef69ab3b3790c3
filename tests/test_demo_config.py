"""configs/demo.yaml and demo_ae.yaml pin what decides `make demo`'s numbers (issue 14, item 3): the device
and torch's thread count, so the same machine kind gives the same InfoM / InfoE whatever its default thread
count or whether it has a GPU (README, "What numbers to expect")."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentquant.train.config import load_yaml_config, resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["demo.yaml", "demo_ae.yaml"])
def test_demo_configs_pin_device_and_threads(name: str) -> None:
    config = resolve_config(load_yaml_config(CONFIGS / name), num_factors=6)
    assert config.device == "cpu"
    assert config.num_threads == 2
    # the decoder alone under torch.compile: the speed-up at eager precision (tests/test_compile_modes.py)
    assert config.compile == "decoder"
    assert config.seed == 0
