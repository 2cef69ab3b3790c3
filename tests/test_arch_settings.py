"""Architecture settings: ``encoder.widths`` / ``encoder.depth`` / ``encoder.dense_widths`` and the decoder's
(``decoder.widths``, ``decoder.depth``, ``decoder.dense_widths``, ``decoder.input_channels``) size the named
networks from the command line and config files, type-checked; null keeps the named network (the same model
and parameters as before these settings existed); they are not resumable; run directories written without
them load, resume and evaluate."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
import yaml
from train_utils import tiny_run

import latentquant
from latentquant.cli import main
from latentquant.train import schema
from latentquant.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from latentquant.train.config import TrainConfig, load_yaml_config, parse_overrides, resolve_config
from latentquant.train.loop import RESUMABLE_SETTINGS, train
from latentquant.train.run import build_run_model, evaluate_run
from latentquant.train.rundir import CONFIG_NAME, config_differences
from latentquant.zoo import build_model
from latentquant.zoo.decoders import DECODERS, decoder_spec
from latentquant.zoo.encoders import ENCODERS, encoder_spec

# every architecture setting: flat name -> dotted name
ARCH = {
    flat: dotted
    for flat, dotted in schema.FLAT_TO_DOTTED.items()
    if flat.startswith(("encoder_", "decoder_"))
}
assert len(ARCH) == 7
IMAGE = (3, 64, 64)


def _resolve(*overrides: str, **settings) -> TrainConfig:
    return resolve_config(
        {
            "encoder": "tiny",
            "decoder": "tiny",
            "num_latents": 4,
            **settings,
            **parse_overrides(list(overrides)),
        }
    )


# ------------------------------------------------------------------------------------------------ the schema
def test_architecture_settings_are_in_the_schema_with_flat_names_help_and_null_defaults():
    for flat, dotted in ARCH.items():
        assert schema.FLAT_TO_DOTTED[flat] == dotted
        assert schema.flat_key(dotted) == flat == schema.flat_key(flat)
        leaf = schema.leaf(flat)
        assert leaf.default is None and getattr(TrainConfig(), flat) is None
        assert leaf.help and "\n" not in leaf.help and "null" in leaf.help
    assert set(ARCH) == schema.STORED_WHEN_SET
    assert not set(ARCH) & RESUMABLE_SETTINGS  # they change what the model is


def test_the_issue_command_is_accepted_in_every_spelling():
    dotted = _resolve("encoder.depth=3", "encoder.widths=[4,8,8]", "decoder.dense_widths=[16]")
    flat = _resolve("encoder_depth=3", "encoder_widths=[4, 8, 8]", "decoder_dense_widths=[16]")
    nested = resolve_config(
        {
            "encoder": {"name": "tiny", "depth": 3, "widths": [4, 8, 8]},
            "decoder": {"name": "tiny", "dense_widths": [16]},
            "model": {"num_latents": 4},
        }
    )
    assert dotted == flat == nested
    assert (dotted.encoder_depth, dotted.encoder_widths, dotted.decoder_dense_widths) == (3, [4, 8, 8], [16])
    assert dotted.decoder_widths is None and dotted.decoder_depth is None


def test_config_file_sets_architecture_and_to_nested_round_trips(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "encoder:\n  name: tiny\n  widths: [4, 8, 8, 8]\ndecoder:\n  name: tiny\n  input_channels: 6\n"
    )
    config = resolve_config(load_yaml_config(path))
    assert config.encoder_widths == [4, 8, 8, 8] and config.decoder_input_channels == 6
    assert config.to_nested()["encoder"] == {"name": "tiny", "widths": [4, 8, 8, 8]}
    assert schema.flatten(config.to_nested()) == config.to_dict()


def test_print_config_shows_the_architecture_settings(capsys):
    assert main(["train", "--print-config", "encoder=tiny", "encoder.depth=3", "decoder.widths=[8,4]"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    for dotted in ARCH.values():
        assert dotted in rows
    assert rows["encoder.depth"].split()[1:4] == ["(encoder_depth)", "3", "null"]
    assert "[8, 4]" in rows["decoder.widths"] and "null" in rows["decoder.widths"]
    assert rows["encoder.widths"].split()[2:4] == ["null", "null"]  # unset: value null, default null


def test_help_lists_the_architecture_settings(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "encoder.widths (encoder_widths)" in out and "decoder.input_channels" in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("encoder.widths=[]", r"'encoder.widths'.*must not be empty"),
        ("decoder.widths=[]", r"'decoder.widths'.*must not be empty"),
        ("encoder.widths=[8,0,8]", r"'encoder.widths'.*integers >= 1, got \[8, 0, 8\]"),
        ("decoder.dense_widths=[-4]", r"'decoder.dense_widths'.*integers >= 1"),
        ("encoder.widths=8", r"'encoder.widths'.*must be a list of integers"),
        ("encoder.widths=[8,wide]", r"'encoder.widths'.*must be a list of integers"),
        ("encoder.widths=[true]", r"'encoder.widths'.*must be a list of integers"),
        ("decoder.widths=[2.5]", r"'decoder.widths'.*must be a list of integers"),
        ("encoder.depth=0", r"'encoder_depth' must be >= 1"),
        ("decoder.depth=[3]", r"'decoder_depth' must be an integer"),
        ("decoder.input_channels=0", r"'decoder_input_channels' must be >= 1"),
        ("encoder.depth=3 encoder.widths=[8,8]", r"encoder.depth=3 but encoder.widths=\[8, 8\] has 2 blocks"),
        ("decoder.depth=1 decoder.widths=[8,8]", r"decoder.depth=1 but decoder.widths=\[8, 8\] has 2 blocks"),
    ],
)
def test_invalid_sizes_are_refused_naming_the_setting(override, message):
    with pytest.raises(ValueError, match=message):
        _resolve(*override.split())


def test_unbracketed_list_override_says_how_to_write_a_list():
    with pytest.raises(ValueError, match=r"a list is written in brackets: encoder.widths=\[8,16\]"):
        parse_overrides(["encoder.widths=8,16"])


def test_empty_dense_widths_means_no_dense_blocks():
    config = _resolve("encoder.dense_widths=[]", "decoder.dense_widths=[]")
    model = build_run_model(config, IMAGE, None)
    assert [type(m).__name__ for m in model.encoder.dense] == ["Flatten", "Linear"]
    assert len(model.decoder.mapping) == 0 and model.decoder.blocks[0].style.in_features == 4
    assert model(torch.rand(2, *IMAGE))["x_hat_logits"].shape == (2, *IMAGE)


# ----------------------------------------------------------------------------------------- the semantics
def test_null_sizes_are_the_named_networks_unchanged():
    for name in ENCODERS:
        assert encoder_spec(name) is ENCODERS[name]
    for name in DECODERS:
        assert decoder_spec(name) is DECODERS[name]
    torch.manual_seed(0)
    sized = build_run_model(_resolve(model="ae"), IMAGE, None)
    torch.manual_seed(0)
    named = build_model("ae", 4, IMAGE, encoder="tiny", decoder="tiny")
    assert sized.state_dict().keys() == named.state_dict().keys()
    for key, value in named.state_dict().items():
        assert torch.equal(sized.state_dict()[key], value), key


def test_depth_takes_the_named_first_blocks_and_repeats_the_pattern_past_the_end():
    paper = ENCODERS["paper"]
    six = encoder_spec("paper", depth=6)
    assert six.widths == (32, 32, 32, 64, 64, 64)
    assert six.kernel_sizes == (3, 3, 4, 3, 3, 4) and six.strides == (1, 1, 2, 1, 1, 2)
    assert six.dense_widths == paper.dense_widths and six.total_stride == 4
    fourteen = encoder_spec("paper", depth=14)  # past the named 12 blocks: pattern repeats, last width kept
    assert fourteen.widths == paper.widths + (256, 256)
    assert fourteen.kernel_sizes[12:] == (3, 3) and fourteen.strides[12:] == (1, 1)
    assert encoder_spec("tiny", depth=3).strides == (2, 2, 2)
    assert encoder_spec("tiny", depth=6).total_stride == 64
    decoder = decoder_spec("paper", depth=4)
    assert decoder.widths == (256, 256, 256, 128) and decoder.strides == (1, 1, 2, 1)
    assert decoder.input_channels == 256 and decoder.dense_widths == (256, 256)


def test_widths_set_the_blocks_and_their_number_with_the_named_pattern():
    spec = encoder_spec("paper", widths=[8, 16, 24, 32, 40])
    assert spec.widths == (8, 16, 24, 32, 40)
    assert spec.kernel_sizes == (3, 3, 4, 3, 3) and spec.strides == (1, 1, 2, 1, 1)
    assert encoder_spec("cpu", widths=[4, 4, 4], depth=3).widths == (4, 4, 4)  # agreeing depth is accepted
    spec = decoder_spec("small", widths=[32, 16], dense_widths=[64], input_channels=12)
    assert (spec.widths, spec.strides, spec.dense_widths, spec.input_channels) == (
        (32, 16),
        (2, 2),
        (64,),
        12,
    )


def test_built_model_has_the_configured_sizes():
    config = _resolve(
        "encoder.widths=[4,6,8]",
        "encoder.dense_widths=[10,12]",
        "decoder.depth=2",
        "decoder.input_channels=5",
        model="qlae",
    )
    model = build_run_model(config, IMAGE, None)
    convs = [m for m in model.encoder.conv if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 6, 8]
    assert model.encoder.transition_shape == (8, 8, 8)  # three stride-2 blocks on 64x64
    linears = [m for m in model.encoder.dense if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [10, 12, 4]
    assert len(model.decoder.blocks) == 2 and tuple(model.decoder.input_map.shape) == (5, 16, 16)
    assert model(torch.rand(2, *IMAGE))["x_hat_logits"].shape == (2, *IMAGE)


def test_gan_critic_and_generator_take_the_sizes():
    config = _resolve(
        "encoder.widths=[4,4,8,8]", "encoder.dense_widths=[]", "decoder.widths=[8,4,4,4]", model="infowgan"
    )
    model = build_run_model(config, IMAGE, None)
    assert model.value_head.in_features == 8 * 4 * 4  # no dense blocks: the heads read the conv features
    assert model.value(torch.rand(2, *IMAGE)).shape == (2,)
    assert model(torch.rand(2, *IMAGE))["x_hat_logits"].shape == (2, *IMAGE)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["encoder.depth=7"], r"encoder 'tiny' with encoder.depth=7: its 7 blocks have total stride 128"),
        (
            ["decoder.widths=[4,4,4,4,4,4,4]"],
            r"decoder 'tiny' with decoder.widths=\[4, 4, 4, 4, 4, 4, 4\].*stride 128",
        ),
    ],
)
def test_a_total_stride_that_does_not_divide_the_image_is_refused_naming_the_settings(overrides, message):
    config = _resolve(*overrides)
    with pytest.raises(ValueError, match=message + r".*does not divide the image size 64x64"):
        build_run_model(config, IMAGE, None)
    build_run_model(config, (3, 128, 128), None)  # fits larger images


# ------------------------------------------------------------------------------- storage and backward compat
def test_null_sizes_are_not_stored_set_ones_are():
    assert not set(ARCH) & set(_resolve().to_dict())  # a run's files as earlier versions wrote them
    stored = _resolve("encoder.depth=3", "decoder.dense_widths=[]").to_dict()
    assert stored["encoder_depth"] == 3 and stored["decoder_dense_widths"] == []
    assert "encoder_widths" not in stored
    assert resolve_config(stored) == _resolve("encoder.depth=3", "decoder.dense_widths=[]")


def test_config_differences_sees_a_changed_width_list():
    first = _resolve("encoder.widths=[4,8,8,8]").to_dict()
    second = _resolve("encoder.widths=[8,8,8,8]").to_dict()
    assert config_differences(first, second, RESUMABLE_SETTINGS) == [
        "encoder_widths: [4, 8, 8, 8] != [8, 8, 8, 8]"
    ]
    assert (
        config_differences(
            _resolve().to_dict(), _resolve("encoder.widths=null").to_dict(), RESUMABLE_SETTINGS
        )
        == []
    )


def _stop_at(last: int):
    """``on_step`` that stops the run (with a checkpoint, without the final evaluation) after step ``last``."""

    def on_step(step: int, losses: dict[str, float]) -> None:
        if step >= last:
            raise KeyboardInterrupt

    return on_step


def _train_to(settings, run, last: int, resume: bool = False):
    result = train(settings, run, resume=resume, progress=False, on_step=_stop_at(last))
    assert result.interrupted and result.step == last == load_checkpoint(run / CHECKPOINT_NAME).step
    return result


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A tiny 4-step run stopped after step 2 (the resumes below continue it)."""
    out = tmp_path_factory.mktemp("arch") / "run"
    _train_to(tiny_run(steps=4), out, 2)
    return out


def _strip(run, keys):
    """Rewrite config.yaml and the checkpoint's copy of the configuration without ``keys``, as a run written
    before these settings holds them."""
    data = yaml.safe_load((run / CONFIG_NAME).read_text())
    (run / CONFIG_NAME).write_text(
        yaml.safe_dump({k: v for k, v in data.items() if k not in keys}, sort_keys=False)
    )
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    config = {k: v for k, v in checkpoint.config.items() if k not in keys}
    save_checkpoint(run / CHECKPOINT_NAME, dataclasses.replace(checkpoint, config=config))


def test_a_run_written_without_the_settings_loads_resumes_and_evaluates(short_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    stored = yaml.safe_load((run / CONFIG_NAME).read_text())
    assert "encoder" in stored and not set(ARCH) & set(stored)
    assert not set(ARCH) & set(load_checkpoint(run / CHECKPOINT_NAME).config)
    # explicitly as an older version wrote it: the schema's settings minus the new ones
    _strip(run, set(ARCH))
    before = latentquant.load_model(run)
    assert [m.out_channels for m in before.encoder.conv if isinstance(m, torch.nn.Conv2d)] == [8, 8, 8, 8]
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"cannot change \['encoder_depth'\] when resuming"):
        train({"encoder_depth": 3}, run, resume=True, progress=False)
    _train_to({"encoder_widths": None}, run, 3, resume=True)  # an unchanged null is no change
    err = capsys.readouterr().err
    assert "recovered" not in err and "damaged" not in err
    assert not set(ARCH) & set(yaml.safe_load((run / CONFIG_NAME).read_text()))
    assert not set(ARCH) & set(load_checkpoint(run / CHECKPOINT_NAME).config)
    metrics, _ = evaluate_run(run)
    assert metrics["steps"] == 3
    assert type(latentquant.load_model(run)).__name__ == type(before).__name__


def test_a_stored_configuration_with_explicit_nulls_resumes(short_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    data = yaml.safe_load((run / CONFIG_NAME).read_text())
    (run / CONFIG_NAME).write_text(yaml.safe_dump({**data, **dict.fromkeys(ARCH)}, sort_keys=False))
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    config = {**checkpoint.config, **dict.fromkeys(ARCH)}
    save_checkpoint(run / CHECKPOINT_NAME, dataclasses.replace(checkpoint, config=config))
    capsys.readouterr()
    _train_to({}, run, 3, resume=True)
    assert "recovered" not in capsys.readouterr().err


def test_a_sized_run_stores_its_sizes_and_refuses_another_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    _train_to(tiny_run(encoder_widths=[4, 8, 8, 8], decoder_depth=3), run, 2)
    stored = yaml.safe_load((run / CONFIG_NAME).read_text())
    assert stored["encoder_widths"] == [4, 8, 8, 8] and stored["decoder_depth"] == 3
    assert load_checkpoint(run / CHECKPOINT_NAME).config["encoder_widths"] == [4, 8, 8, 8]
    model = latentquant.load_model(run)
    assert next(iter(model.encoder.conv)).out_channels == 4 and len(model.decoder.blocks) == 3
    with pytest.raises(ValueError, match=r"cannot change \['encoder_widths'\]"):
        train({"encoder_widths": [8, 8, 8, 8]}, run, resume=True, progress=False)
    # config.yaml edited to other sizes: its checkpoint belongs to another run
    (run / CONFIG_NAME).write_text(
        yaml.safe_dump({**stored, "encoder_widths": [8, 8, 8, 8]}, sort_keys=False)
    )
    with pytest.raises(
        ValueError, match=r"belongs to another run.*encoder_widths: \[8, 8, 8, 8\] != \[4, 8, 8, 8\]"
    ):
        train({}, run, resume=True, progress=False)
    # config.yaml without the sizes (as an older version would rewrite it): recovered from the checkpoint
    (run / CONFIG_NAME).write_text(
        yaml.safe_dump({k: v for k, v in stored.items() if k not in ARCH}, sort_keys=False)
    )
    capsys.readouterr()
    _train_to({}, run, 3, resume=True)
    assert "settings ['decoder_depth', 'encoder_widths'] are missing" in capsys.readouterr().err
    assert yaml.safe_load((run / CONFIG_NAME).read_text())["encoder_widths"] == [4, 8, 8, 8]


# ---------------------------------------------------------------------------------------------------- sweeps
def test_sweep_over_width_lists(tmp_path):
    from latentquant.study.sweep import expand_grid

    specs = expand_grid(
        ["qlae"], ["shapes3d"], [0], tmp_path, ["encoder=tiny", "encoder.widths=[4,8,8,8],[8,8,8,8]"]
    )
    assert [s.settings["encoder_widths"] for s in specs] == [[4, 8, 8, 8], [8, 8, 8, 8]]
    assert len({s.name for s in specs}) == 2
    assert [resolve_config(s.settings).encoder_widths for s in specs] == [[4, 8, 8, 8], [8, 8, 8, 8]]
    fixed = expand_grid(
        ["qlae"], ["shapes3d"], [0], tmp_path, ["encoder.widths=[4,8,8,8]", "encoder.depth=4"]
    )
    assert len(fixed) == 1 and resolve_config(fixed[0].settings).encoder_depth == 4


def test_sweep_with_unbracketed_widths_is_refused_before_anything_starts(tmp_path, capsys):
    args = [
        "sweep",
        "--models",
        "qlae",
        "--datasets",
        "shapes3d",
        "--out",
        str(tmp_path / "s"),
        "encoder.widths=4,8",
    ]
    assert main(args) == 2
    assert "'encoder.widths' (encoder_widths) must be a list of integers" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
