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

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from kerasflow import config as config_mod
from kerasflow import urlauth
from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.track import store, tracking
from kerasflow.train import rundir

if TYPE_CHECKING:
    import mlflow
    import optuna

LEVEL_TAG = tracking.LEVEL_TAG
COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")  # toward --trials; FAIL is retried instead


def space_digest(cfg: Config) -> str:
    """What makes two searches the same study: the space, the metric and its direction."""
    spec = {"space": cfg.search_space, "metric": cfg.search_metric, "direction": cfg.search_direction}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """One value per key of the space (types follow the config key)."""
    hints = get_type_hints(Config)
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if "choices" in spec:
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif hints[key] is int:
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1),
                                            log=bool(spec.get("log", False)))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                              step=spec.get("step"), log=bool(spec.get("log", False)))
    return params


STORAGE_ENV = "KERASFLOW_STUDY_STORAGE"  # how a worker gets the study's storage URL


def default_storage(store_dir: str) -> str:
    """The study beside the MLflow store (created if missing, e.g. when tracking goes to a server)."""
    Path(store_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(store_dir).absolute() / 'optuna.db'}"


def _storage(url: str, grace: int) -> optuna.storages.BaseStorage:
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from kerasflow import pglock

    kwargs: dict[str, Any] = {}
    given, url = url, pglock.driver_url(url)
    if url.startswith("sqlite:"):
        path = Path(url[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise UserError(f"study storage folder {path.parent} does not exist: create it or pass --storage")
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several workers wait, not fail
    # on a fresh PostgreSQL database, workers of several machines starting at once would each create
    # Optuna's tables: the first does it under an advisory lock, the others find them
    postgres = pglock.is_postgresql(url)
    schema_lock = (pglock.advisory_lock(given, pglock.OPTUNA_SCHEMA, "study storage") if postgres
                   else nullcontext())
    try:
        with schema_lock, warnings.catch_warnings():  # heartbeats: "experimental", stable since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=max(1, grace // 3), grace_period=grace,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                              **kwargs)
    except UserError:
        raise
    except (ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"study storage {urlauth.redact(given)} needs a database driver ({exc.name}): "
                        "pip install it") from None
    except Exception as exc:  # sqlalchemy's errors for a bad URL or an unreachable server
        if isinstance(exc, optuna.exceptions.OptunaError):
            raise
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(f"cannot open study storage {urlauth.redact(given)} ({type(exc).__name__}: {first}): "
                        "check the URL and that the database is up") from None


def _study(cfg: Config, name: str, storage: optuna.storages.BaseStorage, worker: int) -> optuna.Study:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=cfg.seed + worker)  # workers must not propose the same
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                               direction=cfg.search_direction, load_if_exists=True)


class QueueEmpty(Exception):
    """No queued trial is left: the worker's part of the study is done."""


def _queued_only(study: optuna.Study) -> optuna.Study:
    """Make `study.ask()` (which `optimize` calls) take only queued trials, never create one.

    That keeps the trial count exact with workers on several machines: the search's first process
    enqueues exactly the missing trials, and Optuna pops a queued trial atomically (a row update that
    only one worker can win, on sqlite and PostgreSQL alike); a free-running `optimize` checks the count
    only after each trial, so N workers overshoot it by up to N-1.
    """
    import optuna

    def ask(fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        if fixed_distributions:
            raise ValueError("a queued-only study takes no fixed distributions")
        study._thread_local.cached_all_trials = None  # as Study.ask: sync once per trial
        trial_id = study._pop_waiting_trial_id()  # Study.ask's own pop, without its fallback
        if trial_id is None:
            raise QueueEmpty
        return optuna.Trial(study, trial_id)

    study.ask = ask  # type: ignore[method-assign]
    return study


def open_study(cfg: Config, name: str, storage_url: str, grace: int, worker: int = 0) -> optuna.Study:
    """Create or load the study; refuse one of the same name with a different space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(cfg, name, _storage(storage_url, grace), worker)
    digest = space_digest(cfg)
    found = study.user_attrs.get("space_digest")
    if found is None:
        study.set_user_attr("space_digest", digest)
        study.set_user_attr("search_space", cfg.search_space)
        study.set_user_attr("search_metric", cfg.search_metric)
    elif found != digest:
        raise UserError(
            f"study '{name}' in {urlauth.redact(storage_url)} was made with another search space or metric "
            f"({json.dumps(study.user_attrs.get('search_space'))}, {study.user_attrs.get('search_metric')}): "
            "use a new --study name, or the config it was made with"
        )
    return study


def counted(study: optuna.Study) -> int:
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, s) for s in COUNTED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_worker(cfg: Config, *, study_name: str, storage_url: str, parent_run_id: str,  # noqa: PLR0913
               uri: str, experiment: str, worker: int, grace: int, verbose: int | str = 2) -> int:
    """Run queued trials until the queue is empty; returns how many this worker ran."""
    import optuna
    from optuna_integration import KerasPruningCallback

    study = _queued_only(open_study(cfg, study_name, storage_url, grace, worker))
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
    import warnings

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
        runs = client.search_runs([experiment_id], filter_string=(
            f"tags.`optuna.study` = '{study.study_name}' and tags.`optuna.trial` = '{trial.number}' "
            "and attributes.status = 'RUNNING'"))
        for run in runs:
            client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    return closed


def _until_every_trial_ends(cfg: Config, study: optuna.Study, args: dict[str, Any],
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
            print(f"search: waiting for {running} trial(s) still running on other workers (a dead one is "
                  f"failed after --grace {args['grace']} s and retried here)", file=sys.stderr)
            told = True
        time.sleep(poll)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, without starting TensorFlow: CUDA_VISIBLE_DEVICES when set,
    else what `nvidia-smi -L` lists (none without the tool)."""
    import shutil

    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


def gpu_env(worker: int, workers: int, gpus: list[str]) -> dict[str, str]:
    """Several workers on one GPU box: worker k gets GPU k mod n alone, so the first does not take
    every GPU's memory (TensorFlow maps all it sees); more workers than GPUs share with memory growth."""
    if workers <= 1 or not gpus:
        return {}
    env = {"CUDA_VISIBLE_DEVICES": gpus[worker % len(gpus)]}
    if workers > len(gpus):
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return env


def _spawn_workers(numbers: range, cfg_path: Path, args: dict[str, Any], gpus: list[str]
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
    from kerasflow.train import data

    # the data is decoded once per worker process, not once per trial (and once for the retrain)
    with store.open_store(store_dir) as uri, data.reusing_loaded_examples():
        if role == "join":
            return _join(cfg, study_name=study_name, storage_url=storage_url, uri=uri, workers=workers,
                         grace=grace, verbose=verbose, gpus=gpus)
        study = open_study(cfg, study_name, storage_url, grace)  # refuses a changed space before any run
        return _tune(cfg, study, trials=trials, workers=workers, study_name=study_name,
                     storage_url=storage_url, uri=uri, experiment=experiment, register=register, alias=alias,
                     grace=grace, verbose=verbose, gpus=gpus)


def _wait_for_lead(cfg: Config, study_name: str, storage_url: str, grace: int) -> optuna.Study:
    """The study once its lead has made the search run and queued trials (machines started together
    may come first: they wait up to --grace seconds)."""
    import optuna

    storage = _storage(storage_url, grace)
    deadline = time.monotonic() + grace
    while True:
        if study_name in optuna.get_all_study_names(storage):
            study = open_study(cfg, study_name, storage_url, grace)  # and refuses another search space
            if study.user_attrs.get("mlflow_run_id") and study.get_trials(deepcopy=False):
                return study
        if time.monotonic() > deadline:
            raise UserError(f"study '{study_name}' in {urlauth.redact(storage_url)} has not been started "
                            f"within --grace {grace} s: start it with --role lead (the default) on one "
                            "machine, then join it")
        time.sleep(1)


def _work_here(cfg: Config, numbers: range, cfg_path: Path, args: dict[str, Any], gpus: list[str],  # noqa: PLR0913
               verbose: int | str) -> int:
    """This machine's workers: numbers[0] in this process, the rest as processes; until the queue is
    empty. Returns the trials this process ran; one line if a worker process failed."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = _spawn_workers(numbers[1:], cfg_path, args, gpus)
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


def _join(cfg: Config, *, study_name: str, storage_url: str, uri: str, workers: int, grace: int,  # noqa: PLR0913
          verbose: int | str, gpus: list[str]) -> dict[str, Any]:
    """Workers for a study another process leads: its queue, its search run, no retrain."""
    import mlflow

    study = _wait_for_lead(cfg, study_name, storage_url, grace)
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
    print(f"search: joining study '{study_name}' (search run {parent_id}) with {workers} worker(s)",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "config.yaml"
        cfg_path.write_text(config_mod.dump(cfg))
        ran = _work_here(cfg, range(first, first + workers), cfg_path, args, gpus, verbose)
    if launched:
        client.log_metric(launched, "trials_run_here", ran)
    print(f"search: the queue of study '{study_name}' is empty; the leading machine retrains the best "
          "trial", file=sys.stderr)
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
    print(f"mlflow: search run {parent_id}; study '{study_name}' in {urlauth.redact(storage_url)} has "
          f"{counted(study)} of {trials} trials", file=sys.stderr)
    with (tracking.signals_as_interrupt(), tracking.run_status(parent_id),
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
        _work_here(cfg, range(workers), cfg_path, args, gpus, verbose)
        _until_every_trial_ends(cfg, study, args, verbose)
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
        final_id = rundir.finished_run_id(final_dir)
        if final_id:  # a rerun of a done study
            print(f"search: the best trial is still {best.number}, retrained in run {final_id}",
                  file=sys.stderr)
        else:
            nested = tracking.Nested(tags={LEVEL_TAG: "final", "optuna.study": study_name,
                                           "optuna.best_trial": str(best.number)})
            _, final_id = tracking.tracked_run(final_cfg, uri=uri, experiment=experiment, nested=nested,
                                               register=register, alias=alias, verbose=verbose)
        mlflow.set_tag("final_run_id", final_id)
    print(f"search: best trial {best.number} {cfg.search_metric}={best.value:.4f} {best.params}; "
          f"final run {final_id}", file=sys.stderr)
    return {"run_id": parent_id, "best_params": best.params, "best_value": best.value,
            "final_run_id": final_id, "trials": len(study.trials)}
