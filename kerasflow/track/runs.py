"""Look at tracked runs: filter, compare in a table, plot the best runs' validation curves.

    kerasflow runs --filter "metrics.test_accuracy > 0.9" --top 5 --plot best.png
    (`make runs FILTER="metrics.test_accuracy > 0.9"`)

The filter is MLflow's search syntax: metrics.X, params.X, tags.X, attributes.status, ...
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kerasflow.errors import UserError
from kerasflow.train.plots import metric_histories, pyplot

# Lazy imports: mlflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import mlflow
    import pandas as pd

COLUMNS = ["run_id", "tags.mlflow.runName", "status", "params.model", "params.data_source",
           "params.image_size", "params.epochs", "metrics.test_accuracy", "metrics.test_auc",
           "metrics.test_loss", "metrics.val_accuracy"]


def search(c: mlflow.MlflowClient, experiment: str, filter_string: str, order_by: str,
           top: int) -> pd.DataFrame:
    import mlflow
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in c.search_experiments()]
        raise UserError(f"no experiment '{experiment}' in the store (experiments: {', '.join(names)}): "
                        "pass --experiment NAME")
    try:
        runs = mlflow.search_runs([exp.experiment_id], filter_string=filter_string, order_by=[order_by],
                                  max_results=max(top, 1))
    except MlflowException as exc:
        raise UserError(f"bad filter or order ({str(exc).splitlines()[0][:200]}): see MLflow's search "
                        "syntax, e.g. \"metrics.test_accuracy > 0.9\"") from None
    if runs.empty:
        raise UserError(f"no run of '{experiment}' matches {filter_string!r}: loosen the filter")
    return runs


def table(runs: pd.DataFrame) -> str:
    shown = [c for c in COLUMNS if c in runs.columns]
    frame = runs[shown].copy()
    frame.columns = [c.split(".")[-1] if c != "tags.mlflow.runName" else "name" for c in shown]
    frame["run_id"] = frame["run_id"].str[:8]
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def checked_plot_path(path: Path) -> Path:
    """A --plot file name whose suffix matplotlib writes (none: it writes PATH.png); checked before the
    table is printed, so a bad name is the one line (a `.exe` was a traceback after the table)."""
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    kind = path.suffix.lower().lstrip(".")
    if kind and kind not in kinds:
        raise UserError(f"--plot {path}: .{kind} is not an image format it writes "
                        f"({', '.join(sorted(kinds))}): name the file .png")
    return path


def plot_curves(c: mlflow.MlflowClient, runs: pd.DataFrame, path: Path,
                metrics: tuple[str, ...] = ("val_accuracy", "val_loss")) -> Path:

    plt = pyplot()
    checked_plot_path(path)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4))
    labels = [(run["run_id"], run.get("tags.mlflow.runName") or run["run_id"][:8])
              for _, run in runs.iterrows()]
    for ax, metric in zip(axes, metrics, strict=True):
        metric_histories(ax, c, labels, metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
