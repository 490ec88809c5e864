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
        (["data_source=s3"], "choose one of: image_dir, synthetic, tfds"),
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


def test_config_yaml_groups_its_keys_by_the_sections_of_the_schema():
    """Each `# --- NAME:` header of config.yaml holds exactly the keys of config.SECTIONS[NAME]."""
    found: dict[str, list[str]] = {}
    section = None
    for line in config.DEFAULT_CONFIG.read_text().splitlines():
        header = re.match(r"^# --- ([a-z]+):", line)
        if header:
            section = header.group(1)
            found[section] = []
        elif re.match(r"^[a-z_]+:", line):
            found[section].append(line.split(":")[0])
    assert found == {name: list(keys) for name, keys in config.SECTIONS.items()}


def test_a_runs_identity_is_what_changes_the_model(tmp_path):
    from kerasflow.train import rundir

    cfg = config.load(None, ["data_source=synthetic", "model=cnn", f"output_dir={tmp_path}", "run_name=r"])
    identity = config.identity(cfg)
    assert {"data_source", "epochs", "dropout", "seed"} <= set(identity)
    assert not {"cache_ram_mb", "cache_dir", "search_space", "n_outer_folds", "output_dir"} & set(identity)
    run_dir = rundir.plan(cfg)
    rundir.create(run_dir, cfg)  # a started run (killed before it finished)
    # more cache memory, another cache folder, another search space: the same run, it resumes
    rundir.check_resumable(
        run_dir,
        cfg.replace(
            cache_ram_mb=1, cache_dir=str(tmp_path / "c"), search_space={"dropout": {"low": 0.1, "high": 0.2}}
        ),
    )
    with pytest.raises(UserError, match="was started with epochs=5, not 6"):
        rundir.check_resumable(run_dir, cfg.replace(epochs=6))


def test_a_search_varies_only_model_and_training_keys():
    for key in ("seed", "cache_ram_mb", "data_source", "output_dir", "search_metric"):
        with pytest.raises(
            UserError, match=f"search_space key '{key}' is not a config key the search can vary"
        ):
            config.load(None, [f"search_space={{{key}: {{choices: [1]}}}}"])


def test_a_config_logged_before_the_sections_still_loads(tmp_path):
    """Runs made before keys were grouped logged them in another order (cache_* amid the data keys):
    keys are flat and order-free, so such a file loads to the same config."""
    import yaml

    cfg = config.load()
    old_order = [
        "data_source",
        "tfds_name",
        "tfds_data_dir",
        "image_dir",
        "synthetic_examples",
        "val_fraction",
        "test_fraction",
        "cache_ram_mb",
        "cache_dir",
        "splits_file",
        "outer_fold",
        "inner_fold",
    ]
    values = cfg.to_dict()
    ordered = {k: values[k] for k in old_order} | {k: v for k, v in values.items() if k not in old_order}
    path = tmp_path / "logged-config.yaml"
    path.write_text(yaml.safe_dump(ordered, sort_keys=False))
    assert config.load(path) == cfg


def test_presets_are_files_applied_before_set(tmp_path):
    demo = config.load(None, ["epochs=2"], ["demo"])
    assert (demo.data_source, demo.model, demo.image_size, demo.synthetic_examples) == (
        "synthetic",
        "cnn",
        48,
        2000,
    )
    assert demo.epochs == 2  # --set comes after the preset
    own = tmp_path / "mine.yaml"
    own.write_text("dropout: 0.1\n")
    assert config.load(None, None, ["tiny", str(own)]).dropout == 0.1
    with pytest.raises(UserError, match=r"preset 'nope' does not exist .*use one of demo, tiny"):
        config.load(None, None, ["nope"])
    own.write_text("colour: red\n")
    with pytest.raises(UserError, match="unknown config key 'colour' in preset"):
        config.load(None, None, [str(own)])


def test_a_preset_runs_from_the_command_line(tmp_path):
    from helpers import assert_user_error, run_script

    assert_user_error(run_script("train.py", "--preset", "nope"), "preset 'nope' does not exist")
    result = run_script(
        "train.py", "--preset", "tiny", "--set", f"output_dir={tmp_path}", "--set", "run_name=p"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "image_size: 32" in (tmp_path / "p" / "config.yaml").read_text()


def test_params_logged_by_mlflow_run_are_compared_by_meaning():
    """`mlflow run` logs each -P as its shell-quoted command-line text; the config's value must match it."""
    assert config.same_param("augment", "false", False)
    assert config.same_param("group_pattern", "'^([^_]+)_'", "^([^_]+)_")
    assert config.same_param("learning_rate", "1e-05", 1e-5) and config.same_param("epochs", "2", 2)
    assert config.same_param("run_name", "''", "demo-20261123")  # empty asks the run to choose one
    assert config.same_param("splits_file", "''", "")
    assert not config.same_param("epochs", "3", 2)
    assert not config.same_param("augment", "true", False)
    assert not config.same_param("group_pattern", "'^(x)_'", "^([^_]+)_")
    assert config.same_param("study", "search", "search")  # not a config key: compared as text


@pytest.mark.parametrize(
    ("space", "message"),
    [  # each loaded before, then failed at a trial (a traceback from Optuna or Keras) or never failed
        ("{learning_rate: {low: 0.0001, high: 0.01, log: true, step: 0.001}}",
         "has both log: true and step 0.001, which Optuna refuses"),
        ("{dropout: {low: 0.0, high: 0.5, log: yes-please}}", "log must be true or false, got str"),
        ("{dropout: {low: 0.0, high: 0.5, step: 0}}", "step must be a positive float, got 0"),
        ("{dense_units: {low: 32, high: 256, step: 0.5}}", "step must be a positive int, got 0.5"),
        ("{dropout: {low: 0.1, high: 0.2, step: 0.5}}", "step 0.5 is larger than the range"),
        ("{cnn_blocks: {choices: [2, 5]}}",
         "search_space can try cnn_blocks=5 together, and then: image_size 16 is too small for 5 cnn "
         "blocks"),
        ("{image_size: {low: 8, high: 64}, cnn_blocks: {low: 1, high: 4}}",
         "search_space can try image_size=8, cnn_blocks=4 together"),
    ],
)
def test_a_search_space_is_checked_as_a_whole_when_the_config_loads(space, message):
    with pytest.raises(UserError) as info:
        config.load(None, ["model=cnn", "image_size=16", "cnn_blocks=2", f"search_space={space}"])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_yaml_aliases_and_oversized_configs_are_refused_before_they_expand(tmp_path):
    """553 bytes of nested aliases under `log:` took 22 s and 2.3 GB when the config was copied (and
    `make reproduce` reads configs from stores); now a config holds no alias and at most 1 MiB."""
    import itertools
    import time

    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]" for prev, cur in itertools.pairwise("abcdefgh")]
    text = config.DEFAULT_CONFIG.read_text().replace(
        "search_space:\n", "search_space:\n  dropout: {low: 0.0, high: 0.5, log: *h}\n", 1)
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(bomb) + "\n" + text)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"is not valid YAML .*aliases \(\*name\) are not allowed"):
        config.load(path)
    assert time.monotonic() - t0 < 5
    big = tmp_path / "big.yaml"
    big.write_text(config.DEFAULT_CONFIG.read_text() + "#" * (2 << 20))
    with pytest.raises(UserError, match="over the 1048576-byte limit of a config"):
        config.load(big)
