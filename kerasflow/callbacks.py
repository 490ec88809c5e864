"""Keras callbacks that make a run resumable and its epoch order independent of process history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from kerasflow import rundir


class EpochCounter(keras.callbacks.Callback):
    """Publishes the epoch about to run to the input pipeline, whose shuffle is keyed by it."""

    def __init__(self, variable: tf.Variable) -> None:
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.variable.assign(epoch)


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
