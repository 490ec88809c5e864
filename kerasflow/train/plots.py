"""Figures of a run, drawn with matplotlib's non-interactive backend (no display on a server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Lazy imports: matplotlib, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, list[float]], path: Path,
                    fine_tune_start: int | None = None) -> Path:
    """Loss and accuracy per epoch, train vs validation; a dashed line where fine-tuning starts."""
    plt = pyplot()
    epochs = [e + 1 for e in history.get("epoch", [])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in history:
                ax.plot(epochs, history[key], marker="o", label=label)
        if fine_tune_start is not None:
            ax.axvline(fine_tune_start + 0.5, color="gray", linestyle="--", label="fine-tuning")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole: no 1.5 ticks
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def metric_histories(ax: Any, client: Any, runs: list[tuple[str, str]], metric: str) -> None:
    """One line per (run id, label): `metric` at every epoch of the run (MLflow steps are epochs)."""
    for run_id, label in runs:
        history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
        if history:
            ax.plot([m.step + 1 for m in history], [m.value for m in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path) -> Path:
    """Counts per (true, predicted) class on the test split."""
    plt = pyplot()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.6 * k + 2.5, 1.6 * k + 1.5))
    image = ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) if matrix else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center",
                    color="white" if matrix[i][j] > top / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roc_curve(roc: dict[str, list[float]], path: Path) -> Path:
    """ROC of the class-1 probability on the test split."""

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    auc = float(np.trapezoid(roc["tpr"], roc["fpr"]))
    ax.plot(roc["fpr"], roc["tpr"], label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
