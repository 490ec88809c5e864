"""Keras callbacks that make a run resumable and its epoch order independent of process history."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasflow.files import atomic_write, fsync_file
from kerasflow.train import rundir


class EpochKeyedRandomness(keras.callbacks.Callback):
    """Makes each epoch's randomness a function of (seed, epoch) alone, so a resumed run is bitwise exact.

    It publishes the epoch to the input pipeline (whose shuffle is keyed by it) and resets the state of
    every seed generator in the model (augmentation, dropout): Keras does not save those states with
    the weights, so without this a run restored by BackupAndRestore would replay epoch 0's random flips.
    """

    def __init__(self, epoch: tf.Variable, seed: int) -> None:
        super().__init__()
        self.epoch = epoch
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch.assign(epoch)
        states = sorted((v for v in self.model.non_trainable_variables
                         if v.path.endswith("seed_generator_state")), key=lambda v: v.path)
        for index, state in enumerate(states):
            state.assign(np.array([epoch + 1, self.seed * 1009 + index], np.int64))


class HistoryLog(keras.callbacks.Callback):
    """Keeps every finished epoch's metrics on disk, so a resumed run still reports its whole history.

    Keras' own History only sees the epochs of the current `fit` call.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rows = rundir.read_history_rows(self.path.parent)
        kept = [row for row in rows if row["epoch"] < epoch]
        if len(kept) != len(rows):  # an epoch that ran but was not backed up is being redone
            rundir.write_history_rows(self.path.parent, kept)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rows = [row for row in rundir.read_history_rows(self.path.parent) if row["epoch"] < epoch]
        rows.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()},
                     rundir.HISTORY_TIME: int(time.time() * 1000)})
        rundir.write_history_rows(self.path.parent, rows)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore with a checkpoint that is whole or absent, never torn.

    Keras writes `latest.weights.h5` and its metadata in place, and falls back to the `.bkp` copy only
    on an OSError; h5py raises RuntimeError on a full disk, so a torn `latest` became the checkpoint
    and the rerun died on it. Here each checkpoint is a folder `gen-N/` (weights, then metadata, each
    fsynced), published by replacing the symlink `current` (one rename), and only then is the old one
    removed: a kill or a full disk at any point leaves the last whole checkpoint current.
    """

    CURRENT = "current"

    def __init__(self, backup_dir: str) -> None:
        super().__init__(backup_dir, double_checkpoint=False)
        self._root = Path(backup_dir)

    def _point_at_current(self) -> None:
        current = self._root / self.CURRENT
        folder = current.resolve() if current.is_symlink() else self._root / "none"
        self._weights_path = str(folder / "latest.weights.h5")
        self._training_metadata_path = str(folder / "training_metadata.json")

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._point_at_current()
        self._load_model()  # a torn checkpoint cannot be current: no fallback needed

    def _save_model(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        current = self._root / self.CURRENT
        old = current.resolve() if current.is_symlink() else None
        n = int(old.name.removeprefix("gen-")) + 1 if old else 1
        folder = self._root / f"gen-{n}"
        shutil.rmtree(folder, ignore_errors=True)  # a half-written one of a killed run
        folder.mkdir()
        try:
            rundir.atomic_save_weights(self.model, folder / "latest.weights.h5")
            atomic_write(folder / "training_metadata.json",
                         json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            link = self._root / f".{self.CURRENT}.new"
            link.unlink(missing_ok=True)
            link.symlink_to(folder.name)
            os.replace(link, current)
            fsync_file(self._root)
        except BaseException:
            if not (current.is_symlink() and current.resolve() == folder):
                shutil.rmtree(folder, ignore_errors=True)
            raise
        if old is not None and old != folder:
            shutil.rmtree(old, ignore_errors=True)
