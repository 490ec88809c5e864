"""The workers of a search: each runs queued trials as nested MLflow runs; this machine's extra
workers are processes (`kerasflow tune-worker`); the lead waits for every trial, closing dead ones."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.experiments.tune.gpus import gpu_env
from kerasflow.experiments.tune.study import (
    LEVEL_TAG,
    STORAGE_ENV,
    QueueEmpty,
    open_study,
    queued_only,
    suggest,
)
from kerasflow.track import filters, tracking

log = logging.getLogger(__name__)

# Lazy imports: mlflow, optuna, optuna_integration, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import mlflow
    import optuna


def run_worker(cfg: Config, *, study_name: str, storage_url: str, parent_run_id: str,  # noqa: PLR0913
               uri: str, experiment: str, worker: int, grace: int, verbose: int | str = 2) -> int:
    """Run queued trials until the queue is empty; returns how many this worker ran."""
    import optuna
    from optuna_integration import KerasPruningCallback

    study = queued_only(open_study(cfg, study_name, storage_url, grace, worker))
    ran = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal ran
        ran += 1
        params = suggest(trial, cfg.search_space)
        trial_cfg = cfg.replace(**params, run_name=f"{study_name}-trial{trial.number:03d}")
        nested = tracking.Nested(
            parent_run_id=parent_run_id, log_model=False, stopped=(optuna.TrialPruned,),
            tags={LEVEL_TAG: "trial", "optuna.study": study_name, "optuna.trial": str(trial.number),
                  "optuna.worker": str(worker)},
            callbacks=[KerasPruningCallback(trial, cfg.search_metric)])
        result, run_id = tracking.tracked_run(trial_cfg, uri=uri, experiment=experiment, nested=nested,
                                              verbose=verbose)
        trial.set_user_attr("mlflow_run_id", run_id)
        values = result.history.get(cfg.search_metric)
        if not values:
            raise UserError(f"search_metric '{cfg.search_metric}' is not a training metric (have: "
                            f"{', '.join(sorted(result.history))}): fix search_metric in the config")
        return float(values[-1])

    try:
        # before each trial, optimize fails trials whose worker stopped beating (any machine's) and the
        # heartbeat callback queues their retry, which some worker then pops
        study.optimize(objective, catch=(), gc_after_trial=True)
    except QueueEmpty:
        pass
    return ran

def _unfinished(study: optuna.Study) -> tuple[int, int]:
    """(running, queued) trials of the study, after failing (and queueing the retry of) dead ones."""

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))]
    return states.count(optuna.trial.TrialState.RUNNING), states.count(optuna.trial.TrialState.WAITING)

def close_dead_trial_runs(study: optuna.Study, client: mlflow.MlflowClient, experiment_id: str,
                          done: set[int]) -> int:
    """A worker killed mid-trial (SIGKILL, a lost machine) leaves its MLflow run RUNNING; once Optuna
    has failed the trial, its run ends KILLED. `done`: failed trials already handled (updated).
    Returns how many runs were closed."""
    import optuna

    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    closed = 0
    for trial in (t for t in failed if t.number not in done):
        done.add(trial.number)
        runs = filters.runs_tagged(client, experiment_id, {"optuna.study": study.study_name,
                                                           "optuna.trial": str(trial.number)})
        for run in (r for r in runs if r.info.status == "RUNNING"):
            client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    return closed

def until_every_trial_ends(cfg: Config, study: optuna.Study, args: dict[str, Any],
                            verbose: int | str) -> None:
    """The first machine waits for trials that run elsewhere (and runs the retries of dead ones), so
    the retrain sees the whole study."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(args["parent_run_id"]).info.experiment_id
    poll = max(1, min(10, args["grace"] // 3))
    told, handled = False, set()
    while True:
        running, queued = _unfinished(study)
        close_dead_trial_runs(study, client, experiment_id, handled)
        if queued:
            run_worker(cfg, worker=0, verbose=verbose, **args)
            continue
        if not running:
            return
        if not told:
            log.info(f"search: waiting for {running} trial(s) still running on other workers (a dead one is "
                     f"failed after --grace {args['grace']} s and retried here)")
            told = True
        time.sleep(poll)

def spawn_workers(numbers: range, cfg_path: Path, args: dict[str, Any], gpus: list[str]
                   ) -> list[subprocess.Popen[bytes]]:
    """Worker processes 1..n of this machine (this process is worker 0), each on its GPU."""
    procs = []
    workers = len(numbers) + 1
    for slot, worker in enumerate(numbers, start=1):
        # the storage URL may hold a database password: the environment, not argv (`ps` shows argv)
        public = {k: v for k, v in args.items() if k != "storage_url"}
        cmd = [sys.executable, "-m", "kerasflow", "tune-worker", str(cfg_path), json.dumps(public),
               str(worker)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", STORAGE_ENV: args["storage_url"],
               **gpu_env(slot, workers, gpus)}
        procs.append(subprocess.Popen(cmd, env=env))
    return procs

def work_here(cfg: Config, numbers: range, cfg_path: Path, args: dict[str, Any], gpus: list[str],  # noqa: PLR0913
               verbose: int | str) -> int:
    """This machine's workers: numbers[0] in this process, the rest as processes; until the queue is
    empty. Returns the trials this process ran; one line if a worker process failed."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = spawn_workers(numbers[1:], cfg_path, args, gpus)
        ran = run_worker(cfg, worker=numbers[0], verbose=verbose, **args)
        failed = [p.args for p in procs if p.wait() != 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
    if failed:
        raise UserError(f"{len(failed)} search worker(s) failed (see their messages above); rerun the "
                        "same command to continue")
    return ran
