"""The one config object: presets, YAML, CLI overrides, clear errors."""

import pytest

from resnets.config import TrainConfig, from_dict, resolve_config, save_yaml, to_dict
from resnets.errors import ConfigError


def test_cifar_preset_is_the_paper_recipe():
    c = resolve_config()
    assert c.preset == "cifar-paper"
    assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay, c.optim.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert (c.optim.iters, c.optim.milestones, c.data.val_size) == (64000, [32000, 48000], 5000)


def test_imagenet_preset_follows_from_the_dataset():
    c = resolve_config(overrides={"data.dataset": "imagenet"})
    assert c.preset == "imagenet-paper"
    assert (c.optim.batch_size, c.optim.schedule, c.optim.iters) == (256, "plateau", 600000)


def test_precedence_preset_then_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.05\n  iters: 64e3\n  milestones: [100, 200]\nmodel:\n  name: cifar_resnet56\n")
    c = resolve_config(f, {"optim.lr": "0.02", "optim.milestones": "10,20"})
    assert c.optim.lr == 0.02 and c.optim.iters == 64000 and c.optim.milestones == [10, 20]
    assert c.model.name == "cifar_resnet56" and c.optim.batch_size == 128


def test_round_trip_through_yaml(tmp_path):
    c = resolve_config(overrides={"model.shortcut": "B", "optim.warmup": "on", "seed": 3})
    save_yaml(c, tmp_path / "config.yaml")
    again = resolve_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(c)
    assert from_dict(to_dict(c)) == c


@pytest.mark.parametrize("yaml_text, message", [
    ("optim:\n  lrr: 0.1\n", "unknown config key 'optim.lrr'"),
    ("optim:\n  lr: fast\n", "optim.lr: expected a number, got 'fast'"),
    ("optim:\n  iters: 1.5\n", "optim.iters: expected an integer"),
    ("model:\n  shortcut: D\n", "model.shortcut: expected one of 'A', 'B', 'C'"),
    ("channels_last: maybe\n", "channels_last: expected true or false"),
    ("optim:\n  milestones: 5\n", "optim.milestones: expected a list"),
    ("optim: 3\n", "optim: expected a mapping"),
    ("- a\n- b\n", "expected a mapping of keys at the top level"),
])
def test_bad_config_files_name_the_key(tmp_path, yaml_text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        resolve_config(f)
    assert "bad.yaml" in str(e.value) or "top level" in message


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(tmp_path / "broken.yaml")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        resolve_config(preset="imagenet-fast")


def test_every_field_is_documented():
    from resnets.config import DataConfig, ModelConfig, OptimConfig, field_docs

    for cls in (ModelConfig, DataConfig, OptimConfig, TrainConfig):
        import dataclasses

        undocumented = {f.name for f in dataclasses.fields(cls)} - set(field_docs(cls))
        assert not undocumented, f"{cls.__name__}: {undocumented}"
