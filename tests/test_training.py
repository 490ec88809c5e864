"""Whole training runs: the demo learns, outputs are complete, runs are bitwise reproducible and resumable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, set_args, sigkill_after_epochs

from kerasflow import config
from kerasflow.train import training

pytestmark = pytest.mark.slow


def test_demo_learns_and_writes_every_output(tmp_path):
    # the `make demo` settings, on fewer images
    cfg = config.load(None, [
        "data_source=synthetic", "model=cnn", "image_size=48", "epochs=5", "synthetic_examples=1000",
        f"output_dir={tmp_path}", "run_name=demo", f"cache_dir={tmp_path / 'cache'}",
    ])
    prep = training.train(cfg, verbose=0)
    assert max(prep.history["val_accuracy"]) >= 0.9
    assert prep.metrics["accuracy"] >= 0.9 and prep.metrics["auc"] >= 0.95
    run = tmp_path / "demo"
    names = {p.name for p in run.iterdir()}
    assert names == {"config.yaml", "history.json", "history.jsonl", "metrics.json", "curves.png",
                     "confusion_matrix.png", "roc.png", "model.keras", "test_predictions.csv", ".lock",
                     "folder_id", "environment"}
    # what it ran on, recorded at train time (untracked_files.txt / git_diff.patch when there are any)
    assert {"tags.json", "requirements.txt", "installed.txt", "hardware.json"} <= {
        p.name for p in (run / "environment").iterdir()}
    assert json.loads((run / "environment" / "hardware.json").read_text())["tensorflow"]
    rows = (run / "test_predictions.csv").read_text().splitlines()
    assert rows[0] == "example,label,prob_parasitized,prob_uninfected"
    assert len(rows) == 1 + len(prep.splits.test)
    for png in ("curves.png", "confusion_matrix.png", "roc.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert config.load(run / "config.yaml") == cfg
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("loss", "accuracy", "auc", "precision", "recall", "confusion_matrix", "per_class"):
        assert key in metrics
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["examples"] > 0
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [0, 1, 2, 3, 4] and len(history["val_loss"]) == 5

    import keras

    loaded = keras.models.load_model(run / "model.keras")
    batch = prep.examples.images[prep.splits.test[:16]]
    assert np.allclose(loaded.predict(batch, verbose=0), prep.model.predict(batch, verbose=0), atol=1e-6)
    # the metrics come from the model's own predictions
    from kerasflow.train import evaluation

    probs = loaded.predict(prep.examples.images[prep.splits.test], verbose=0)
    again = evaluation.classification_metrics(prep.examples.labels[prep.splits.test], probs,
                                              prep.examples.class_names)
    assert again["accuracy"] == metrics["accuracy"] and abs(again["auc"] - metrics["auc"]) < 1e-9


def test_a_finished_run_folder_is_not_overwritten(tiny_cfg):
    training.train(tiny_cfg.replace(run_name="once"), verbose=0)
    from kerasflow.errors import UserError

    with pytest.raises(UserError, match="already holds a finished run"):
        training.train(tiny_cfg.replace(run_name="once"), verbose=0)


def test_vgg16_with_a_weights_file_and_fine_tuning(tiny_cfg, tmp_path):
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = tmp_path / "vgg16_notop.weights.h5"
    base.save_weights(weights)
    cfg = tiny_cfg.replace(model="vgg16", weights=str(weights), image_size=32, synthetic_examples=120,
                           epochs=1, fine_tune_blocks=1, fine_tune_epochs=1, run_name="vgg")
    prep = training.train(cfg, verbose=0)
    vgg = prep.model.get_layer("vgg16")
    loaded_first_conv = vgg.get_layer("block1_conv1").get_weights()[0]
    assert np.array_equal(loaded_first_conv, base.get_layer("block1_conv1").get_weights()[0])  # frozen
    assert vgg.get_layer("block5_conv1").trainable and not vgg.get_layer("block4_conv1").trainable
    assert prep.history["epoch"] == [0, 1]
    assert (tmp_path / "outputs" / "vgg" / "model.keras").is_file()


REPRO = [
    "data_source=synthetic", "model=cnn", "image_size=32", "synthetic_examples=600", "epochs=6",
    "batch_size=16", "cnn_blocks=2", "cnn_filters=8", "dense_units=16", "deterministic=true",
]


def _final_digest(run: Path) -> str:
    import keras

    from kerasflow.train import models

    return models.weights_digest(keras.models.load_model(run / "model.keras"))


def _train_cmd(tmp_path: Path, name: str) -> list[str]:
    sets = [*REPRO, f"output_dir={tmp_path}", f"run_name={name}", f"cache_dir={tmp_path / 'cache'}"]
    return [sys.executable, str(ROOT / "train.py"), *set_args(sets)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("repro")
    subprocess.run(_train_cmd(tmp, "reference"), check=True, capture_output=True, cwd=ROOT)
    return tmp, _final_digest(tmp / "reference")


def test_two_processes_give_bitwise_identical_weights(reference_run):
    tmp, digest = reference_run
    subprocess.run(_train_cmd(tmp, "again"), check=True, capture_output=True, cwd=ROOT)
    assert _final_digest(tmp / "again") == digest
    history_a = json.loads((tmp / "reference" / "history.json").read_text())
    history_b = json.loads((tmp / "again" / "history.json").read_text())
    assert history_a == history_b


def test_sigkill_then_rerun_resumes_and_matches_the_uninterrupted_run(reference_run):
    tmp, digest = reference_run
    run = tmp / "killed"
    proc = subprocess.Popen(_train_cmd(tmp, "killed"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sigkill_after_epochs(proc, run)
    log = run / "history.jsonl"
    assert not (run / "model.keras").exists()
    done_before = len(log.read_text().splitlines())
    result = subprocess.run(_train_cmd(tmp, "killed"), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(resuming)" in result.stderr
    ran_after = [line for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert 0 < len(ran_after) <= 6 - done_before + 1  # it did not start over
    assert _final_digest(run) == digest
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == list(range(6))
    assert history == json.loads((tmp / "reference" / "history.json").read_text())
