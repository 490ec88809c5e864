"""Test metrics the data at hand cannot give are left out and named, never logged as if measured."""

from __future__ import annotations

import numpy as np
import pytest

from kerasflow.train import evaluation


def test_a_figure_the_test_set_cannot_give_is_left_out_and_named():
    """Before: a test set of one class gave test_auc=0.0; a class never predicted gave precision 0.0,
    and the macro precision averaged that 0 in: each logged as if measured."""
    names = ["parasitized", "uninfected"]
    one_class = evaluation.classification_metrics(np.ones(6, int), np.full(6, 0.9), names)
    assert "auc" not in one_class and "roc" not in one_class
    assert one_class["undefined"]["auc"] == "the test set holds one class only"
    assert "recall" not in one_class["per_class"]["parasitized"]  # no example of it
    assert one_class["recall"] == 1.0  # the macro recall of the class that has examples
    never = evaluation.classification_metrics(np.array([0, 0, 1, 1]), np.full(4, 0.9), names)
    assert "precision" not in never["per_class"]["parasitized"]
    assert "no test example was predicted as it" in never["undefined"]["precision of parasitized"]
    assert never["precision"] == pytest.approx(0.5)  # uninfected's only, not (0 + 0.5) / 2
    assert never["auc"] == pytest.approx(0.5)  # both classes present: measured
    logged = {f"test_{k}" for k, v in one_class.items() if isinstance(v, (int, float))}
    assert "test_auc" not in logged and {"test_loss", "test_accuracy", "test_recall"} <= logged
