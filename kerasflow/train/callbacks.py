"""Keras callbacks that make a run resumable and its epoch order independent of process history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

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
        rows.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        rundir.write_history_rows(self.path.parent, rows)
