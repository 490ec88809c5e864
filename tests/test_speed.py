"""GPU speed options and several devices, checked on CPU: mixed precision, XLA, steps per call, and
MirroredStrategy over two logical CPU devices (resumed after SIGKILL, replicas logged to MLflow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, set_args, sigkill_after_epochs

from kerasflow import config
from kerasflow.errors import UserError

DEMO = ["data_source=synthetic", "model=cnn", "image_size=48", "epochs=5", "synthetic_examples=1000"]
# jit_compile needs these two (the config refuses it otherwise, see below)
XLA = ["jit_compile=true", "deterministic=false", "rotation=0"]


def _demo(tmp_path: Path, name: str, *extra: str) -> config.Config:
    return config.load(None, [*DEMO, *extra, f"output_dir={tmp_path}", f"run_name={name}",
                              f"cache_dir={tmp_path / 'cache'}"])


@pytest.mark.heavy  # GPU options emulated on a CPU: minutes
@pytest.mark.slow
# float16 runs at ~0.14x float32 on a CPU (emulated): the same demo at 32 px on 600 images (~1 min,
# 1.0 val_accuracy at epoch 4 here) instead of 48 px on 1,000 (~11 min), the same bar
@pytest.mark.parametrize("options", [["precision=mixed_bfloat16"],
                                     ["precision=mixed_float16", "image_size=32", "synthetic_examples=600"],
                                     XLA, ["steps_per_execution=4"]], ids=lambda o: o[0])
def test_each_speed_option_trains_the_demo(tmp_path, options):
    import keras

    from kerasflow.train import training

    cfg = _demo(tmp_path, "run", *options)
    result = training.train(cfg, verbose=0)
    assert max(result.history["val_accuracy"]) >= 0.9
    model = result.model
    assert model.get_layer("conv1_1").dtype_policy.name == cfg.precision
    assert model.get_layer("probability").compute_dtype == "float32"  # the output stays float32
    assert bool(model.jit_compile) == cfg.jit_compile
    assert model.steps_per_execution == cfg.steps_per_execution
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        cfg.precision == "mixed_float16")
    reloaded = keras.models.load_model(result.run_dir / "model.keras")
    assert reloaded.get_layer("conv1_1").dtype_policy.name == cfg.precision
    keras.config.set_dtype_policy("float32")  # the next test in this process builds its own


SMALL = ["data_source=synthetic", "model=cnn", "image_size=32", "synthetic_examples=300", "epochs=3",
         "batch_size=16", "cnn_blocks=2", "cnn_filters=8", "dense_units=16", "deterministic=true"]


@pytest.mark.heavy  # two trainings
@pytest.mark.slow
def test_steps_per_execution_changes_the_speed_not_the_result(tmp_path):
    from kerasflow.train import models, training

    digests = []
    for steps in (1, 5):  # 240 training images / 16 = 15 batches: 3 calls of 5 per epoch
        cfg = config.load(None, [*SMALL, f"steps_per_execution={steps}", f"output_dir={tmp_path}",
                                 f"run_name=steps{steps}", f"cache_dir={tmp_path / 'cache'}"])
        digests.append(models.weights_digest(training.train(cfg, verbose=0).model))
    assert digests[0] == digests[1]


def test_jit_compile_that_keras_would_drop_is_refused_in_one_line():
    with pytest.raises(UserError) as err:
        config.load(None, ["jit_compile=true"])
    message = str(err.value)
    assert "op determinism" in message and "set deterministic: false and rotation: 0" in message
    with pytest.raises(UserError, match="set distribute: none"):
        config.load(None, [*XLA, "distribute=mirrored"])
    assert config.load(None, XLA).jit_compile
    with pytest.raises(UserError, match="choose one of: float32, mixed_float16, mixed_bfloat16"):
        config.load(None, ["precision=float16"])
    with pytest.raises(UserError, match="choose one of: none, mirrored"):
        config.load(None, ["distribute=multi_worker"])


# train_mlflow.py as a user runs it, in a process whose CPU is split into two logical devices first
# (what MirroredStrategy sees on a box with two GPUs).
TWO_DEVICES = """
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ["train_mlflow.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _mirrored_cmd(tmp: Path, name: str) -> list[str]:
    sets = [*DEMO, "distribute=mirrored", "deterministic=true", f"output_dir={tmp / 'outputs'}",
            f"run_name={name}", f"cache_dir={tmp / 'cache'}"]
    return [sys.executable, "-c", TWO_DEVICES, "--store", str(tmp / "store"), *set_args(sets)]


@pytest.mark.heavy  # three trainings
@pytest.mark.slow
def test_mirrored_on_two_devices_learns_resumes_after_sigkill_and_logs_replicas(tmp_path):
    env = {**os.environ, "KERASFLOW_VERBOSE": "0"}
    whole = subprocess.run(_mirrored_cmd(tmp_path, "whole"), capture_output=True, text=True, cwd=ROOT,
                           env=env, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "distribute: mirrored over 2 CPU devices, global batch 64" in whole.stderr

    run = tmp_path / "outputs" / "killed"
    proc = subprocess.Popen(_mirrored_cmd(tmp_path, "killed"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_after_epochs(proc, run)
    assert not (run / "model.keras").exists()
    again = subprocess.run(_mirrored_cmd(tmp_path, "killed"), capture_output=True, text=True, cwd=ROOT,
                           env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(resumed)" in again.stderr

    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == list(range(5)) and max(history["val_accuracy"]) >= 0.9
    # resumed on two devices, bit for bit the uninterrupted run
    assert history == json.loads((tmp_path / "outputs" / "whole" / "history.json").read_text())

    import mlflow

    from kerasflow.track import store

    with store.open_store(str(tmp_path / "store"), create=False):
        runs = mlflow.search_runs(experiment_names=["kerasflow"], output_format="list")
    assert {r.info.run_name: r.info.status for r in runs} == {"whole": "FINISHED", "killed": "FINISHED"}
    for r in runs:
        assert r.data.params["replicas"] == "2" and r.data.params["distribute"] == "mirrored"
        assert r.data.params["precision"] == "float32"
    weights = {r.info.run_name: r.data.tags["kerasflow.weights_digest"] for r in runs}
    assert weights["whole"] == weights["killed"]
