"""The config file is the single, strict, documented source of hyperparameters."""

from __future__ import annotations

import re

import pytest

from kerasflow import config
from kerasflow.errors import UserError


def test_yaml_and_dataclass_have_the_same_keys_in_order():
    text = config.DEFAULT_CONFIG.read_text()
    yaml_keys = re.findall(r"^([a-z_]+):", text, flags=re.M)
    assert yaml_keys == config.keys()


def test_every_key_has_a_comment_right_above_it():
    lines = config.DEFAULT_CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+:", line):
            assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 10, f"no comment above {line!r}"


def test_default_config_loads_and_round_trips(tmp_path):
    cfg = config.load()
    assert cfg.model == "vgg16" and cfg.data_source == "tfds" and cfg.deterministic is True
    path = tmp_path / "resolved.yaml"
    path.write_text(config.dump(cfg))
    assert config.load(path) == cfg


def test_overrides_are_typed_yaml_values():
    cfg = config.load(None, ["epochs=7", "augment=false", "learning_rate=1e-4", "run_name=2024"])
    assert cfg.epochs == 7 and cfg.augment is False and cfg.learning_rate == 1e-4
    assert cfg.run_name == "2024"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["epochs=0"], "config key 'epochs' is 0, outside [1, inf]"),
        (["epochs=two"], "config key 'epochs' must be int, got str"),
        (["epochs=2.5"], "config key 'epochs' must be int, got float"),
        (["augment=1"], "config key 'augment' must be bool"),
        (["model=resnet"], "config key 'model' is 'resnet'; choose one of: vgg16, cnn"),
        (["data_source=s3"], "choose one of: tfds, image_dir, synthetic"),
        (["image_size=16"], "image_size 16 is too small for vgg16 (needs >= 32)"),
        (["val_fraction=0.5", "test_fraction=0.5"], "leaves under 5% for training"),
        (["val_fraction=0.125"], "use a multiple of 0.01"),
        (["colour=red"], "unknown config key 'colour' in --set"),
        (["epochs"], "is not key=value"),
    ],
)
def test_bad_values_are_refused_with_the_fix(override, message):
    with pytest.raises(UserError) as info:
        config.load(None, override)
    assert message in str(info.value)


def test_unknown_and_missing_keys_in_a_file(tmp_path):
    text = config.DEFAULT_CONFIG.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\nlearning_rat: 0.1\n")
    with pytest.raises(UserError, match="unknown config key 'learning_rat'"):
        config.load(bad)
    short = tmp_path / "short.yaml"
    short.write_text(text.replace("seed: 42\n", ""))
    with pytest.raises(UserError, match="config key 'seed' is missing"):
        config.load(short)


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nmodel: cnn\n")
    with pytest.raises(UserError, match=r"is not valid YAML at line \d+: fix the syntax"):
        config.load(bad)
