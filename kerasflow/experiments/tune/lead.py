"""Hyperparameter search with Optuna over the space declared in config.yaml (`search_space`).

    kerasflow tune --trials 20 [--workers 2] [--study NAME] [--storage URL] [--register NAME]

TPE sampler seeded from `seed`; median pruning on `search_metric` through the Keras pruning callback;
every trial a nested MLflow run (tags kerasflow.level=trial, optuna.trial=N) under one search run; then a
final retrain with the best parameters (its model logged, optionally registered). The study lives in a
sqlite file beside the MLflow store by default (store/optuna.db); a PostgreSQL URL lets workers on
several machines share it: one process leads (queues exactly the missing trials, waits for every
worker, retrains), the others `--role join` and only take queued trials. `--trials` is the study's
TOTAL: rerunning the same command after an interruption continues where it stopped. A trial whose
worker died is failed by Optuna's heartbeat after --grace seconds, its MLflow run ends KILLED, and it
is retried once.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasflow import config as config_mod
from kerasflow import urlauth
from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.experiments.tune.gpus import gpu_env, visible_gpus
from kerasflow.experiments.tune.study import LEVEL_TAG, counted, default_storage, open_study, wait_for_lead
from kerasflow.experiments.tune.workers import until_every_trial_ends, work_here
from kerasflow.track import store, tracking
from kerasflow.train import data

log = logging.getLogger(__name__)

# Lazy imports: mlflow, optuna, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import mlflow
    import optuna


def tune(cfg: Config, *, trials: int, workers: int = 1, study_name: str = "search", storage: str = "",  # noqa: PLR0913
         store_dir: str = store.DEFAULT_STORE, experiment: str = tracking.DEFAULT_EXPERIMENT,
         register: str = "", alias: str = "candidate", grace: int = 300, verbose: int | str = 2,
         role: str = "lead") -> dict[str, Any]:
    """Run the study with `workers` processes (this one included), then retrain the best trial.

    role "join": only run trials of a study that a `lead` process (on this or another machine, same
    storage and tracking server) started; it queues the trials, waits for every worker and retrains.
    """
    if role not in ("lead", "join"):
        raise UserError(f"--role {role!r}: use lead (start the study, retrain the best) or join")
    if not cfg.search_space:
        raise UserError("search_space in the config is empty: declare the keys to search (see config.yaml)")
    if trials < 1 or workers < 1:
        raise UserError("--trials and --workers must be at least 1")
    if workers > (os.cpu_count() or 1) * 4:
        raise UserError(f"--workers {workers} is far more than this machine's {os.cpu_count()} CPUs: each "
                        "worker is a training process; use at most a few per GPU or CPU")
    if grace < 10:
        raise UserError(f"--grace {grace} s is too short: a trial's heartbeat comes every grace/3 s, a "
                        "busy trial would be declared dead; use 10 or more (default 300)")
    config_mod.check_name(study_name, "--study")  # it names the trials' run folders
    storage_url = storage or default_storage(store_dir)
    gpus = visible_gpus()
    os.environ.update(gpu_env(0, workers, gpus))  # this process is worker 0; TF has not started yet

    # the data is decoded once per worker process, not once per trial (and once for the retrain)
    with store.open_store(store_dir) as uri, data.reusing_loaded_examples():
        if role == "join":
            return _join(cfg, study_name=study_name, storage_url=storage_url, uri=uri, workers=workers,
                         grace=grace, verbose=verbose, gpus=gpus)
        study = open_study(cfg, study_name, storage_url, grace)  # refuses a changed space before any run
        return _tune(cfg, study, trials=trials, workers=workers, study_name=study_name,
                     storage_url=storage_url, uri=uri, experiment=experiment, register=register, alias=alias,
                     grace=grace, verbose=verbose, gpus=gpus)

def _join(cfg: Config, *, study_name: str, storage_url: str, uri: str, workers: int, grace: int,  # noqa: PLR0913
          verbose: int | str, gpus: list[str]) -> dict[str, Any]:
    """Workers for a study another process leads: its queue, its search run, no retrain."""
    import mlflow

    study = wait_for_lead(cfg, study_name, storage_url, grace)
    parent_id = study.user_attrs["mlflow_run_id"]
    client = mlflow.MlflowClient()
    try:
        client.get_run(parent_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"the search run {parent_id or '(none yet)'} of study '{study_name}' is not in the "
                        f"tracking store {urlauth.redact(uri)}: point MLFLOW_TRACKING_URI at the leading "
                        "machine's tracking server") from None
    launched = os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run -e tune -P role=join` made one
    if launched:  # it records this machine's part; the trials sit under the search run
        client.set_tag(launched, LEVEL_TAG, "worker")
        client.set_tag(launched, "optuna.study", study_name)
        client.set_tag(launched, "kerasflow.search_run", parent_id)
    # distinct sampler seeds from the leading machine's workers (0..n-1) and from other joiners
    first = 1000 + (os.getpid() % 10007) * 100
    args = {"study_name": study_name, "storage_url": storage_url, "parent_run_id": parent_id, "uri": uri,
            "experiment": client.get_experiment(client.get_run(parent_id).info.experiment_id).name,
            "grace": grace}
    log.info(f"search: joining study '{study_name}' (search run {parent_id}) with {workers} worker(s)")
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "config.yaml"
        cfg_path.write_text(config_mod.dump(cfg))
        ran = work_here(cfg, range(first, first + workers), cfg_path, args, gpus, verbose)
    if launched:
        client.log_metric(launched, "trials_run_here", ran)
    log.info(f"search: the queue of study '{study_name}' is empty; the leading machine retrains the best "
             "trial")
    return {"run_id": parent_id, "joined": True}

def _parent_run(study: optuna.Study, experiment_id: str, study_name: str, launched: str | None
                ) -> mlflow.ActiveRun:
    """The search run: the one this study started before (an interrupted search resumes it), or a new one."""
    import mlflow

    tags = {LEVEL_TAG: "search", "optuna.study": study_name, "kerasflow.entry": "tune"}
    if launched:  # `mlflow run . -e tune` made the run to log into
        study.set_user_attr("mlflow_run_id", launched)
        return mlflow.start_run(run_id=launched, tags=tags)
    previous = study.user_attrs.get("mlflow_run_id")
    if previous:
        try:
            mlflow.MlflowClient().get_run(previous)
            return mlflow.start_run(run_id=previous)
        except mlflow.exceptions.MlflowException:
            pass  # the study outlived its MLflow store: start a new search run
    run = mlflow.start_run(experiment_id=experiment_id, run_name=study_name, tags=tags)
    study.set_user_attr("mlflow_run_id", run.info.run_id)
    return run

def _tune(cfg: Config, study: optuna.Study, *, trials: int, workers: int, study_name: str,  # noqa: PLR0913
          storage_url: str, uri: str, experiment: str, register: str, alias: str, grace: int,
          verbose: int | str, gpus: list[str]) -> dict[str, Any]:
    import mlflow
    import optuna

    client = mlflow.MlflowClient()
    launched, exp_id, experiment = tracking.launched_or_named(client, uri, experiment)
    parent = _parent_run(study, exp_id, study_name, launched)
    parent_id = parent.info.run_id
    log.info(f"mlflow: search run {parent_id}; study '{study_name}' in {urlauth.redact(storage_url)} has "
             f"{counted(study)} of {trials} trials")
    with (tracking.signals_as_interrupt(), tracking.run_status(parent_id, announce=("search", study_name)),
          tempfile.TemporaryDirectory() as tmp):
        tracking.log_params_merged(client, parent_id, {
            **{k: v for k, v in cfg.to_dict().items() if k != "search_space"},
            "search_space": json.dumps(cfg.search_space), "study": study_name})
        cfg_path = Path(tmp) / "config.yaml"
        cfg_path.write_text(config_mod.dump(cfg))
        args = {"study_name": study_name, "storage_url": storage_url, "parent_run_id": parent_id, "uri": uri,
                "experiment": experiment, "grace": grace}
        for _ in range(trials - counted(study)):  # the queue every worker, on any machine, takes from
            study.enqueue_trial({})
        work_here(cfg, range(workers), cfg_path, args, gpus, verbose)
        until_every_trial_ends(cfg, study, args, verbose)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            raise UserError(f"study '{study_name}' has no complete trial (all pruned or failed): widen the "
                            "search space or raise epochs")
        best = study.best_trial
        mlflow.log_metrics({f"best_{cfg.search_metric}": float(best.value),
                            "trials_complete": len(complete),
                            "trials_pruned": len(study.get_trials(
                                deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))})
        mlflow.set_tags({"best_trial": str(best.number),
                         "best_trial_run_id": str(best.user_attrs.get("mlflow_run_id", ""))})
        mlflow.log_dict(best.params, "best_params.json")
        mlflow.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv")
        final_cfg = cfg.replace(**best.params, run_name=f"{study_name}-best-trial{best.number}")
        final_dir = Path(cfg.output_dir) / final_cfg.run_name
        final_id = tracking.finished_run(client, final_dir)
        if final_id:  # a rerun of a done study
            log.info(f"search: the best trial is still {best.number}, retrained in run {final_id}")
        else:
            nested = tracking.Nested(tags={LEVEL_TAG: "final", "optuna.study": study_name,
                                           "optuna.best_trial": str(best.number)})
            _, final_id = tracking.tracked_run(final_cfg, uri=uri, experiment=experiment, nested=nested,
                                               register=register, alias=alias, verbose=verbose)
        mlflow.set_tag("final_run_id", final_id)
    log.info(f"search: best trial {best.number} {cfg.search_metric}={best.value:.4f} {best.params}; "
             f"final run {final_id}")
    return {"run_id": parent_id, "best_params": best.params, "best_value": best.value,
            "final_run_id": final_id, "trials": len(study.trials)}
