"""Analyse the test predictions of finished runs and log the results back to each run.

    kerasflow analyze --filter "tags.kerasflow.level = 'inner_fold'" [--positive parasitized]

Every train_mlflow.py run logs test_predictions.csv (example, true label, probability of each class).
For each run the filter picks, this chooses a decision threshold by Youden's J (the ROC point furthest
above the diagonal: sensitivity + specificity - 1 is largest), labels the predictions with it, and has
`mlflow.models.evaluate` compute the classifier metrics and confusion matrix (metrics `analysis_*`);
ROC and precision-recall curves with the chosen point go to analysis/roc_pr.png. Multi-class runs are
labelled by the most probable class (no threshold).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerasflow.errors import UserError
from kerasflow.track import store, tracking
from kerasflow.train import rundir
from kerasflow.train.evaluation import roc_points
from kerasflow.train.plots import pyplot

log = logging.getLogger(__name__)

# Lazy imports: mlflow, pandas, sklearn, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import pandas as pd

PREDICTIONS = rundir.PREDICTIONS_FILE
PREFIX = "analysis_"


def youden_threshold(positive: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """The score threshold maximising TPR - FPR, with the ROC curve it was read from."""

    fpr, tpr, thresholds = roc_points(np.asarray(positive).astype(int), np.asarray(score, np.float64))
    best = int(np.argmax(tpr - fpr))
    threshold = float(min(thresholds[best], 1.0))  # the first threshold is +inf (predict none)
    return {"threshold": threshold, "j": float(tpr[best] - fpr[best]), "fpr": fpr, "tpr": tpr,
            "index": best}


def label_predictions(frame: pd.DataFrame, positive: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Add a `prediction` column (Youden threshold when binary, argmax otherwise) and the figures' data."""
    classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    if "label" not in frame.columns or len(classes) < 2:
        raise UserError(f"{PREDICTIONS} has no label / prob_<class> columns: was it written by kerasflow?")
    probs = frame[[f"prob_{c}" for c in classes]].to_numpy(np.float64)
    out = frame.copy()
    if len(classes) != 2:
        out["prediction"] = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
        return out, {"classes": classes, "positive": None}
    positive = positive or classes[0]
    if positive not in classes:
        raise UserError(f"--positive {positive!r} is not a class of this run ({', '.join(classes)})")
    negative = classes[1 - classes.index(positive)]
    score = probs[:, classes.index(positive)]
    is_positive = (frame["label"] == positive).to_numpy()
    if is_positive.all() or not is_positive.any():
        raise UserError("the test predictions hold one class only: a threshold needs both")
    chosen = youden_threshold(is_positive, score)
    out["prediction"] = np.where(score >= chosen["threshold"], positive, negative)
    return out, {"classes": classes, "positive": positive, "score": score, "is_positive": is_positive,
                 **chosen}


def _figure(info: dict[str, Any]) -> Any:
    from sklearn.metrics import precision_recall_curve


    plt = pyplot()

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5))
    roc.plot(info["fpr"], info["tpr"], label="ROC")
    roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    k = info["index"]
    roc.scatter([info["fpr"][k]], [info["tpr"][k]], c="red", zorder=3,
                label=f"Youden J={info['j']:.3f} at {info['threshold']:.3f}")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({info['positive']})")
    roc.legend(loc="lower right")
    precision, recall, _ = precision_recall_curve(info["is_positive"], info["score"])
    pr.plot(recall, precision)
    predicted = info["score"] >= info["threshold"]
    tp = float((predicted & info["is_positive"]).sum())
    pr.scatter([tp / info["is_positive"].sum()], [tp / max(predicted.sum(), 1)], c="red", zorder=3,
               label="chosen threshold")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    pr.legend(loc="lower left")
    fig.tight_layout()
    return fig


def analyze_run(run_id: str, positive: str | None) -> dict[str, float]:
    """Evaluate one run's logged test predictions and log metrics and figures back to it."""
    import mlflow
    import pandas as pd
    from sklearn.metrics import average_precision_score, roc_auc_score

    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PREDICTIONS, dst_path=tmp)
        frame = pd.read_csv(Path(path), dtype={"label": str, "example": str})
    labelled, info = label_predictions(frame, positive)
    status = client.get_run(run_id).info.status
    metrics: dict[str, float] = {}
    with mlflow.start_run(run_id=run_id):
        try:
            config: dict[str, Any] = {"metric_prefix": PREFIX, "log_model_explainability": False}
            if info["positive"]:
                config["pos_label"] = info["positive"]
            result = mlflow.models.evaluate(
                data=labelled[["label", "prediction"]], targets="label", predictions="prediction",
                model_type="classifier", evaluator_config=config)
            metrics = {k: float(v) for k, v in result.metrics.items()}
            if info["positive"]:
                extra = {f"{PREFIX}threshold": info["threshold"], f"{PREFIX}youden_j": info["j"],
                         f"{PREFIX}roc_auc": float(roc_auc_score(info["is_positive"], info["score"])),
                         f"{PREFIX}average_precision": float(
                             average_precision_score(info["is_positive"], info["score"]))}
                mlflow.log_metrics(extra)
                metrics.update(extra)
                mlflow.log_figure(_figure(info), "analysis/roc_pr.png")
            mlflow.set_tag("analysis.positive_class", info["positive"] or "argmax")
        finally:
            mlflow.end_run(status)  # the run keeps the status its training gave it
    return metrics


def analyze(filter_string: str, *, store_dir: str = store.DEFAULT_STORE,
            experiment: str = tracking.DEFAULT_EXPERIMENT, positive: str | None = None,
            max_runs: int = 200) -> dict[str, dict[str, float]]:
    """Analyse every finished run of `experiment` that matches `filter_string` and has predictions."""
    with store.open_store(store_dir, create=False) as uri:
        import mlflow
        from mlflow.exceptions import MlflowException

        if mlflow.MlflowClient().get_experiment_by_name(experiment) is None:
            raise UserError(f"experiment '{experiment}' does not exist in {uri}: check --experiment")
        query = " and ".join(x for x in (filter_string, "attributes.status = 'FINISHED'") if x)
        try:
            runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query,
                                      max_results=max_runs, output_format="list")
        except MlflowException as exc:
            raise UserError(f"bad --filter {filter_string!r} ({str(exc).splitlines()[0][:200]}): write e.g. "
                            "\"metrics.test_accuracy > 0.9 and tags.kerasflow.level = 'trial'\"") from None
        with_predictions = [r for r in runs if any(
            a.path == PREDICTIONS for a in mlflow.MlflowClient().list_artifacts(r.info.run_id))]
        if not with_predictions:
            raise UserError(f"no finished run with {PREDICTIONS} matches {filter_string or '(no filter)'} in "
                            f"experiment '{experiment}': loosen the filter (see `make runs`)")
        results = {}
        for run in with_predictions:
            results[run.info.run_id] = analyze_run(run.info.run_id, positive)
            shown = {k[len(PREFIX):]: round(v, 4) for k, v in results[run.info.run_id].items()
                     if k in (f"{PREFIX}threshold", f"{PREFIX}accuracy_score", f"{PREFIX}f1_score",
                              f"{PREFIX}roc_auc")}
            log.info(f"{run.info.run_id} {run.info.run_name}: {shown}")
        return results
