"""Configuration: the nested schema and its flat view, dotted / flat / nested spellings, migration of flat
config.yaml files, overrides (type checks, unknown keys, sweep syntax refused), --print-config and
overrides anywhere on the command line."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from latentquant.cli import main
from latentquant.train import schema
from latentquant.train.config import TrainConfig, load_yaml_config, parse_overrides, resolve_config

FLAT = {
    "model": "beta_vae",
    "dataset": "shapes3d",
    "steps": 50,
    "batch_size": 16,
    "lr": 3e-4,
    "encoder": "tiny",
    "decoder": "tiny",
    "model_args": {"beta": 2.0},
    "eval_samples": 500,
    "infomec_convention": "standalone",
    "num_threads": 1,
}
NESTED = {
    "steps": 50,
    "model": {"name": "beta_vae", "args": {"beta": 2.0}},
    "data": {"name": "shapes3d", "batch_size": 16},
    "encoder": {"name": "tiny"},
    "decoder": "tiny",  # a group with a name takes its name directly
    "optim": {"lr": 3e-4},
    "eval": {"samples": 500, "convention": "standalone"},
    "run": {"num_threads": 1},
}


def test_flat_view_has_every_schema_setting_with_its_default():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(fields) == {leaf.flat for leaf in schema.LEAVES}
    nested_defaults = schema.TrainSchema()
    for leaf in schema.LEAVES:
        value = nested_defaults
        for part in leaf.dotted.split("."):
            value = getattr(value, part)
        assert getattr(TrainConfig(), leaf.flat) == value, leaf.dotted
        assert leaf.help and "\n" not in leaf.help
    assert TrainConfig().to_nested()["optim"] == {"lr": 1e-3, "weight_decay": None, "grad_clip": 1.0}


def test_nested_dotted_and_flat_spellings_resolve_alike():
    dotted = {"steps": 50, "model.name": "beta_vae", "model.args.beta": 2.0, "data.batch_size": 16}
    dotted |= {"encoder.name": "tiny", "decoder": "tiny", "optim.lr": 3e-4, "eval.samples": 500}
    dotted |= {"eval.convention": "standalone", "run.num_threads": 1}
    expected = resolve_config(FLAT)
    assert resolve_config(NESTED) == expected
    assert resolve_config(dotted) == expected
    assert expected.lr == 3e-4 and expected.model_args["beta"] == 2.0 and expected.encoder == "tiny"


def test_nest_and_flatten_are_inverse():
    config = resolve_config(FLAT)
    assert schema.flatten(config.to_nested()) == config.to_dict()


def test_flat_config_yaml_of_old_runs_still_loads(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(resolve_config(FLAT).to_dict()))  # what run directories hold until now
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(resolve_config(FLAT).to_nested(), sort_keys=False))
    assert (
        resolve_config(load_yaml_config(old)) == resolve_config(load_yaml_config(new)) == resolve_config(FLAT)
    )
    assert "optim:" in new.read_text() and "lr:" in new.read_text()


def test_overrides_by_either_name():
    assert parse_overrides(["optim.lr=3e-4", "encoder=tiny", "model.args.num_values=[10, 12]"]) == {
        "lr": 3e-4,
        "encoder": "tiny",
        "model_args": {"num_values": [10, 12]},
    }
    assert parse_overrides(["model_args.beta=4", "data.path=null"]) == {
        "model_args": {"beta": 4},
        "data_path": None,
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["encoder.layers=3"], r"unknown setting 'encoder.layers'; valid settings are \[.*'encoder.name'"),
        (["optim.learning_rate=1"], "unknown setting 'optim.learning_rate'"),
        (["seed=0,1,2"], "that is a sweep; run it with latentquant sweep"),
        (["optim.lr=1e-3,3e-4"], "that is a sweep"),
    ],
)
def test_override_errors(items, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides(items)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optim": {"lr": "fast"}}, "'lr' must be a finite number"),
        ({"data": {"batch_size": 0}}, "'batch_size' must be >= 1"),
        ({"run": {"amp": "yes"}}, "'amp' must be true or false"),
        ({"encoder": {"layers": 3}}, r"unknown setting\(s\) \['encoder.layers'\]"),
        ({"optim": 3}, r"unknown setting\(s\) \['optim'\]"),
    ],
)
def test_resolve_refuses_bad_nested_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(settings)


def test_schema_validate_type_checks_with_omegaconf():
    schema.validate({"steps": 3, "lr": 0.1, "model_args": {"beta": [1, 2]}})
    with pytest.raises(ValueError, match=r"setting 'optim.lr' \(lr\): .*could not be converted"):
        schema.validate({"lr": "fast"})


def test_print_config_with_overrides_after_flags(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: 0.5\nencoder: cpu\n")
    args = [
        "train",
        "--config",
        str(config),
        "eval.samples=200",
        "--print-config",
        "--seed",
        "7",
        "encoder=tiny",
    ]
    assert main(args) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {leaf.dotted for leaf in schema.LEAVES}
    assert rows["optim.lr"][1:4] == ["(lr)", "0.5", "0.001"]  # value from the file, then the default
    assert rows["seed"][1:3] == ["7", "0"]
    assert rows["encoder.name"][2] == "tiny"  # the override after the flags wins over the file
    assert rows["eval.samples"][2] == "200"
    assert rows["optim.weight_decay"][2] == "0.1"  # resolved: QLAE's paper value


def test_cli_errors_name_the_setting(tmp_path, capsys):
    # sized so that, should the "unknown" key ever become a setting, the test fails in seconds (it returns 0)
    # instead of starting a 200,000-step paper-size training (that happened when encoder.depth became one)
    tiny = ["encoder=tiny", "decoder=tiny", "steps=1", "eval_samples=100", "device=cpu"]
    assert main(["train", "--out", str(tmp_path / "r"), *tiny, "encoder.layers=3"]) == 2
    assert "unknown setting 'encoder.layers'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--seed", "1", "seed=0,1"]) == 2
    assert "latentquant sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "r"), "--bogus"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "r").exists()


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for leaf in schema.LEAVES:
        assert leaf.dotted in out
