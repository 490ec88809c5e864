"""Test metrics computed from predictions in NumPy, so train.py, MLflow and the analysis agree exactly."""

from __future__ import annotations

from typing import Any

import numpy as np

EPSILON = 1e-7  # keras.backend.epsilon(): the same clipping as the training loss


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of `scores` for class 1 at every distinct threshold (ties stay one point)."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels == 1)[distinct]
    fps = np.cumsum(labels != 1)[distinct]
    positives, negatives = max(int((labels == 1).sum()), 1), max(int((labels != 1).sum()), 1)
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    thresholds = np.r_[np.inf, scores[distinct]]
    return fpr, tpr, thresholds


def class_probabilities(probabilities: np.ndarray | list[float]) -> np.ndarray:
    """(N, classes) probabilities from a model's output: a sigmoid output (one column, or one value per
    example) is P(class 1), so it becomes [1 - p, p]. The one place that decides how to read it."""
    probs = np.asarray(probabilities, np.float64)
    if probs.ndim == 1 or probs.shape[1] == 1:
        p1 = probs.reshape(-1)
        return np.stack([1 - p1, p1], axis=1)
    return probs


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    """The predicted class of each row of `class_probabilities`: P(class 1) >= 0.5 for two classes (the
    sigmoid's own cut), the most probable class otherwise."""
    return (probs[:, 1] >= 0.5).astype(int) if probs.shape[1] == 2 else probs.argmax(axis=1)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray,
                           class_names: list[str]) -> dict[str, Any]:
    """Loss, accuracy, macro precision/recall, per-class figures, confusion matrix; AUC and ROC if binary.

    A figure the test set cannot give is left out, never filled in: a class never predicted has no
    precision, a class with no test example no recall, a test set of one class no AUC (it was 0.0, logged
    as if measured). `undefined` names each one left out and why; the macro averages take the classes
    whose figure exists, and are left out when none does."""
    labels = np.asarray(labels).astype(int)
    probs = class_probabilities(probabilities)
    k = len(class_names)
    p1 = probs[:, 1]
    if k == 2:
        clipped = np.clip(p1, EPSILON, 1 - EPSILON)
        loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    else:
        clipped = np.clip(probs, EPSILON, 1 - EPSILON)
        loss = -np.mean(np.log(clipped[np.arange(len(labels)), labels]))
    predicted = predicted_classes(probs)
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (labels, predicted), 1)
    per_class: dict[str, dict[str, Any]] = {}
    undefined: dict[str, str] = {}
    for i, name in enumerate(class_names):
        predicted_i, actual_i = confusion[:, i].sum(), confusion[i, :].sum()
        per_class[name] = {"support": int(actual_i)}
        if predicted_i:
            per_class[name]["precision"] = float(confusion[i, i] / predicted_i)
        else:
            undefined[f"precision of {name}"] = "no test example was predicted as it"
        if actual_i:
            per_class[name]["recall"] = float(confusion[i, i] / actual_i)
        else:
            undefined[f"recall of {name}"] = "the test set holds no example of it"
    metrics: dict[str, Any] = {
        "loss": float(loss),
        "accuracy": float(np.trace(confusion) / max(len(labels), 1)),
        "examples": len(labels),
    }
    for figure in ("precision", "recall"):
        values = [c[figure] for c in per_class.values() if figure in c]
        if values:
            metrics[figure] = float(np.mean(values))
        else:
            undefined[figure] = f"no class has a {figure} on this test set"
    if k == 2 and 0 < int(labels.sum()) < len(labels):
        fpr, tpr, thresholds = roc_points(labels, p1)
        metrics["auc"] = float(np.trapezoid(tpr, fpr))
        metrics["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                          "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds]}
    elif k == 2:
        undefined["auc"] = "the test set holds one class only"
    metrics["per_class"] = per_class
    metrics["confusion_matrix"] = confusion.tolist()
    metrics["class_names"] = list(class_names)
    metrics["undefined"] = undefined
    return metrics
