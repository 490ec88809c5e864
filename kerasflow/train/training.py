"""The training run, top to bottom: seed, check inputs, load data, build, fit (two phases), evaluate, save.

`train(cfg)` is what train.py calls and what tests call with a shrunken config; train_mlflow.py
composes the same steps (`prepare`, `fit`, `evaluate`, `write_outputs`, `seal`) with tracking. Every
check a user can fail runs before the run folder is created, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerasflow.config import Config
from kerasflow.train import data, envinfo, evaluation, models, pipeline, plots, rundir, sources, speed
from kerasflow.train import splits as splits_file
from kerasflow.train.examples import Examples, Splits

log = logging.getLogger(__name__)

# Lazy imports: keras, tensorflow and kerasflow.train.callbacks (which imports tensorflow), inside the
# functions that use them (seconds to load; `--help` and the other commands never pay for them).

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


@dataclass(frozen=True)
class Prepared:
    """Everything a run needs once the inputs are checked: data, model and the run folder (inputs only:
    what training produces comes back as values, a `Result`)."""

    cfg: Config
    run_dir: Path
    examples: Examples
    splits: Splits
    model: keras.Model
    epoch_var: tf.Variable
    placement: speed.Placement
    resumed: bool = False
    splits_file_digest: str = ""  # set when the splits come from a splits file (train/splits.py)


@dataclass(frozen=True)
class Evaluation:
    """The test split's predicted probabilities and the metrics computed from them."""

    probabilities: np.ndarray
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """A finished training: its inputs (`prep`; their fields read through, e.g. result.run_dir),
    its per-epoch history and its test evaluation."""

    prep: Prepared
    history: dict[str, list[float]]
    evaluation: Evaluation

    @property
    def metrics(self) -> dict[str, Any]:
        return self.evaluation.metrics

    def __getattr__(self, name: str) -> Any:
        if name == "prep":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.prep, name)


def seed_everything(cfg: Config) -> None:
    """One seed for Python, NumPy and TF; op determinism makes kernels pick reproducible algorithms."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:  # process-wide: a run after a deterministic one in the same process (tests, trials) gets its own
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()


def describe_devices() -> str:
    """One line on what TensorFlow trains on: it replaces TF's own start-up lines, hidden by default."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        built = "a CUDA build" if tf.test.is_built_with_cuda() else "a CPU-only build"
        return (f"device: CPU (TensorFlow {tf.__version__}, {built}, sees no GPU; "
                "TF_CPP_MIN_LOG_LEVEL=0 shows its reasons)")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return f"device: {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"


def prepare(cfg: Config) -> Prepared:
    """Check everything a user can get wrong, then load data and build the model, then create the folder."""
    run_dir = rundir.plan(cfg)  # validates the output folder; claims an automatic name
    try:
        return _prepare(cfg.replace(run_name=run_dir.name), run_dir)  # the name resolved once
    except BaseException:
        rundir.release(run_dir)  # an automatic name's empty folder goes; nothing half-made stays
        raise


def _prepare(cfg: Config, run_dir: Path) -> Prepared:
    sources.check(cfg)
    log.info(describe_devices())
    seed_everything(cfg)
    placement = speed.setup(cfg)
    with placement.scope():  # the variables live on every replica
        model = models.build(cfg, len(sources.class_names(cfg)))  # before the slow load: weights fail fast
    t0 = time.perf_counter()
    examples = data.load_examples(cfg)
    splits_file_digest = ""
    if cfg.splits_file:
        chosen = splits_file.fold(cfg, examples)
        splits, splits_file_digest = chosen.splits, chosen.digest
    else:
        splits = data.split(examples, cfg)
    log.info(
             f"data: {len(examples)} images of {examples.images.shape[1]}px, classes "
             f"{examples.class_names}, train/val/test {len(splits.train)}/{len(splits.val)}/"
             f"{len(splits.test)} ({time.perf_counter() - t0:.1f} s to load)")
    resumed = rundir.create(run_dir, cfg)
    # code, packages, hardware and the data's digests: in the folder, whether tracked now, later or never
    envinfo.record(run_dir, lineage={"data_digest": examples.digest, "split_digest": splits.digest(),
                                     "splits_file_digest": splits_file_digest, "data_source": cfg.data_source,
                                     "replicas": placement.replicas})
    import tensorflow as tf

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")
    return Prepared(cfg, run_dir, examples, splits, model, epoch_var, placement, resumed,
                    splits_file_digest)


def _callbacks(prep: Prepared, phase: str, extra: list[keras.callbacks.Callback]) -> list[Any]:

    from kerasflow.train.callbacks import AtomicBackupAndRestore, EpochKeyedRandomness, HistoryLog

    return [
        EpochKeyedRandomness(prep.epoch_var, prep.cfg.seed),
        # before the backup: a kill between the two re-runs an epoch whose row HistoryLog then replaces
        HistoryLog(prep.run_dir / rundir.HISTORY_LOG),
        AtomicBackupAndRestore(str(rundir.state_dir(prep.run_dir) / phase)),
        *extra,
    ]


def fit(prep: Prepared, extra_callbacks: list[keras.callbacks.Callback] | None = None,
        verbose: int | str = "auto") -> dict[str, list[float]]:
    """Phase 1 (frozen base / whole cnn), then optional fine-tuning; resumable after a kill."""
    cfg, model = prep.cfg, prep.model
    num_classes = len(prep.examples.class_names)
    extra = list(extra_callbacks or [])
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    batch = speed.global_batch(cfg, prep.placement)
    train_ds = pipeline.to_tf_dataset(prep.examples, prep.splits.train, batch, shuffle_seed=cfg.seed,
                                  epoch=prep.epoch_var)
    val_ds = pipeline.to_tf_dataset(prep.examples, prep.splits.val, batch)
    phases = [("phase1", cfg.learning_rate, 0, cfg.epochs)]
    if cfg.has_fine_tune:
        phases.append(("phase2", cfg.fine_tune_learning_rate, cfg.epochs, cfg.total_epochs))
    for name, learning_rate, first, last in phases:
        if name == "phase2":
            base = models.find_base(model)
            if base is None:  # has_fine_tune is true only for a model with a pretrained base
                raise RuntimeError("fine-tuning asked for, but the model has no pretrained base")
            models.set_fine_tune(base, cfg.fine_tune_blocks)
        with prep.placement.scope():  # the optimizer's variables too
            models.compile_model(model, num_classes, learning_rate, **speed.compile_options(cfg))
            speed.check_compiled(model, cfg)
            done = rundir.state_dir(prep.run_dir) / f"{name}.weights.h5"  # BackupAndRestore deletes its own
            if done.is_file():
                model.load_weights(done)
                continue
            model.fit(train_ds, validation_data=val_ds, initial_epoch=first, epochs=last, verbose=verbose,
                      shuffle=False, callbacks=_callbacks(prep, name, extra))
            rundir.atomic_save_weights(model, done)
    return rundir.read_history(prep.run_dir)


def evaluate(prep: Prepared) -> Evaluation:
    """Test-set metrics from the model's predictions (loss, accuracy, AUC, precision, recall)."""
    test_ds = pipeline.to_tf_dataset(prep.examples, prep.splits.test,
                                 speed.global_batch(prep.cfg, prep.placement))
    probabilities = prep.model.predict(test_ds, verbose=0)
    labels = prep.examples.labels[prep.splits.test]
    return Evaluation(probabilities,
                      evaluation.classification_metrics(labels, probabilities, prep.examples.class_names))


def write_outputs(result: Result) -> dict[str, Path]:
    """Write the run's result files (all but the model)."""

    prep = result.prep
    out = prep.run_dir
    rundir.atomic_write(out / rundir.HISTORY_FILE, json.dumps(result.history, indent=2))
    rundir.atomic_write(out / rundir.METRICS_FILE, json.dumps(result.metrics, indent=2))
    rundir.atomic_write(out / rundir.PREDICTIONS_FILE, predictions_csv(prep, result.evaluation.probabilities))
    files = {
        "config": out / rundir.CONFIG_FILE,
        "history": out / rundir.HISTORY_FILE,
        "metrics": out / rundir.METRICS_FILE,
        "predictions": out / rundir.PREDICTIONS_FILE,
        "curves": plots.training_curves(result.history, out / rundir.CURVES_FILE,
                                        fine_tune_start=prep.cfg.epochs if prep.cfg.has_fine_tune else None),
        "confusion_matrix": plots.confusion_matrix(result.metrics["confusion_matrix"],
                                                   prep.examples.class_names, out / rundir.CONFUSION_FILE),
    }
    if "roc" in result.metrics:  # binary, with both classes in the test set
        files["roc"] = plots.roc_curve(result.metrics["roc"], out / rundir.ROC_FILE)
    return files


def predictions_csv(prep: Prepared, probabilities: np.ndarray) -> str:
    """One row per test example: its name, true label and the predicted probability of each class."""

    names = prep.examples.names or [str(i) for i in range(len(prep.examples))]
    classes = prep.examples.class_names
    probs = evaluation.class_probabilities(probabilities)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["example", "label", *[f"prob_{c}" for c in classes]])
    for row, index in enumerate(prep.splits.test):
        writer.writerow([names[index], classes[prep.examples.labels[index]],
                         *[repr(float(p)) for p in probs[row]]])
    return buffer.getvalue()


def seal(prep: Prepared) -> Path:
    """Save model.keras, which marks the run finished, and drop the resume state."""
    path = rundir.atomic_save_model(prep.model, prep.run_dir / rundir.MODEL_FILE)
    rundir.clear_state(prep.run_dir)
    return path


def train(cfg: Config, verbose: int | str = "auto") -> Result:
    """Train one run end to end and return what it produced (run folder, model, history, metrics)."""
    prep = prepare(cfg)
    log.info(f"run folder: {prep.run_dir}{' (resuming)' if prep.resumed else ''}")
    result = Result(prep, fit(prep, verbose=verbose), evaluate(prep))
    write_outputs(result)
    seal(prep)
    summary = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float)}
    log.info(f"test: {json.dumps(summary)}")
    log.info(f"outputs: {prep.run_dir}")
    return result
