"""Nested cross-validation over a splits file, as a tree of MLflow runs: cv -> outer fold -> inner fold.

    kerasflow cv --set splits_file=outputs/splits.json [--n-outer 2] [--n-inner 2]

Each inner-fold run is a full train_mlflow.py run (train on the inner train fold, validate on its dev
fold, test on the outer fold's test set) tagged `kerasflow.level=inner_fold`; its outer-fold run gets the
mean of its inner runs' test metrics; the cv run gets the mean and std over outer folds
(`test_<metric>_mean`, `test_<metric>_std`) and a table of every fold (cv_folds.csv).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerasflow import config as config_mod
from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.files import create_new
from kerasflow.track import store, tracking
from kerasflow.train import data, rundir, sources
from kerasflow.train.splits import check_counts, make_file, read

log = logging.getLogger(__name__)

# Lazy imports: mlflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    pass

LEVEL_TAG = tracking.LEVEL_TAG


def metric_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean and (population) std of each metric over rows."""
    out: dict[str, float] = {}
    for key in sorted(set().union(*rows)):
        values = np.array([r[key] for r in rows if key in r], np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std())
    return out


def _test_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {f"test_{k}": float(v) for k, v in metrics.items() if isinstance(v, float)}


def cross_validate(cfg: Config, *, n_outer: int | None = None, n_inner: int | None = None,  # noqa: PLR0913
                   store_dir: str = store.DEFAULT_STORE, experiment: str = tracking.DEFAULT_EXPERIMENT,
                   verbose: int | str = "auto") -> dict[str, Any]:
    """Train every (outer, inner) fold as nested runs; returns the cv run id and the aggregates."""
    if not cfg.splits_file:  # as `make cv` does: the folds of this data, written once and reused
        path = Path(cfg.output_dir) / "splits.json"
        if not path.is_file():
            sources.check(cfg)
            make_file(cfg, path)
        cfg = cfg.replace(splits_file=str(path))
    splits = read(cfg.splits_file)
    n_outer = n_outer or len(splits["outer"])
    n_inner = n_inner or len(splits["outer"][0]["inner"])
    if n_outer < 1 or n_inner < 1:
        raise UserError("--n-outer and --n-inner must be at least 1")
    check_counts(splits, n_outer, n_inner, cfg.splits_file)

    # every fold trains on the same decoded examples
    with store.open_store(store_dir) as uri, data.reusing_loaded_examples():
        return _run(cfg, splits, n_outer=n_outer, n_inner=n_inner, uri=uri, experiment=experiment,
                    verbose=verbose)


STATE_SUFFIX = ".cv.json"


def _run(cfg: Config, splits: dict[str, Any], *, n_outer: int, n_inner: int, uri: str,  # noqa: PLR0913
         experiment: str, verbose: int | str) -> dict[str, Any]:
    import mlflow


    client = mlflow.MlflowClient()
    launched, exp_id, experiment = tracking.launched_or_named(client, uri, experiment)
    # Rerunning with the same run_name resumes: the same cv and outer-fold runs, finished folds skipped.
    # An automatic name is claimed by creating its state file (two cvs in one second are two cvs).
    out = Path(cfg.output_dir)
    automatic = config_mod.automatic_name(cfg.run_name)
    name = (rundir.claim(out, cfg.run_name or f"cv-{config_mod.AUTO_NAME}", create=create_new,
                         path_of=lambda n: out / f"{n}{STATE_SUFFIX}") if automatic else cfg.run_name)
    state_path = out / f"{name}{STATE_SUFFIX}"
    config_digest = hashlib.sha256(config_mod.dump(cfg.replace(run_name=name)).encode()).hexdigest()[:16]
    state: dict[str, Any] = {"run_id": None, "outer": {}, "config_digest": config_digest}
    if state_path.is_file() and not launched and not automatic:
        state = json.loads(state_path.read_text())
        if state["config_digest"] != config_digest:
            raise UserError(f"cv '{name}' was started with another config ({state_path}): resume it with "
                            "the same settings, or pick another run_name")
        try:
            client.get_run(state["run_id"])
        except mlflow.exceptions.MlflowException:
            raise UserError(f"cv '{name}' belongs to MLflow run {state['run_id']}, which this store does not "
                            "have: use the store it was started with, or another run_name") from None
    tags = {LEVEL_TAG: "cv", "splits_file_digest": splits["digest"], "kerasflow.entry": "cv",
            "cv.n_outer": str(n_outer), "cv.n_inner": str(n_inner)}
    resumed = state["run_id"] is not None
    parent = mlflow.start_run(run_id=launched or state["run_id"],
                              experiment_id=None if launched or resumed else exp_id,
                              run_name=None if launched or resumed else name, tags=tags)

    def save_state() -> None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write(state_path, json.dumps(state, indent=2))

    state["run_id"] = parent.info.run_id
    save_state()
    log.info(f"mlflow: cv run {parent.info.run_id} ({n_outer} outer x {n_inner} inner folds) at {uri}"
             f"{' (resumed)' if resumed else ''}; after an interruption rerun with --set run_name={name}")
    table: list[dict[str, Any]] = []
    outer_means: list[dict[str, float]] = []
    with tracking.signals_as_interrupt(), tracking.run_status(parent.info.run_id):
        tracking.log_params_merged(client, parent.info.run_id, cfg.replace(run_name=name).to_dict())
        for o in range(n_outer):
            outer = mlflow.start_run(run_id=state["outer"].get(str(o)), experiment_id=exp_id, nested=True,
                                     run_name=f"{name}-outer{o}",
                                     tags={LEVEL_TAG: "outer_fold", "outer_fold": str(o)})
            state["outer"][str(o)] = outer.info.run_id
            save_state()
            with tracking.run_status(outer.info.run_id):
                inner_rows = []
                for i in range(n_inner):
                    fold_cfg = cfg.replace(outer_fold=o, inner_fold=i, run_name=f"{name}-o{o}-i{i}")
                    run_id = tracking.finished_run(client, Path(cfg.output_dir) / fold_cfg.run_name)
                    if run_id is not None:
                        logged = client.get_run(run_id).data.metrics
                        row = {k: v for k, v in logged.items()
                               if k.startswith("test_") and k != "test_examples"}
                        log.info(f"cv: fold {o}/{i} was finished before (run {run_id})")
                    else:
                        nested = tracking.Nested(tags={LEVEL_TAG: "inner_fold", "outer_fold": str(o),
                                                       "inner_fold": str(i)}, log_model=False)
                        result, run_id = tracking.tracked_run(fold_cfg, uri=uri, experiment=experiment,
                                                              nested=nested, verbose=verbose)
                        row = _test_metrics(result.metrics)
                    inner_rows.append(row)
                    table.append({"outer_fold": o, "inner_fold": i, "run_id": run_id, **row})
                means = {k[:-len("_mean")]: v for k, v in metric_stats(inner_rows).items()
                         if k.endswith("_mean")}
                mlflow.log_metrics(means)
                outer_means.append(means)
        aggregate = metric_stats(outer_means)
        mlflow.log_metrics(aggregate)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        mlflow.log_text(buffer.getvalue(), "cv_folds.csv")
    shown = {k: round(v, 4) for k, v in aggregate.items() if k.startswith(("test_accuracy", "test_auc"))}
    log.info(f"cv: {parent.info.run_id} FINISHED; {shown}")
    return {"run_id": parent.info.run_id, "metrics": aggregate, "folds": table}
