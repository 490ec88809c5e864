"""The study a search shares, on any machine: its storage (sqlite beside the store, or PostgreSQL),
the space and its digest, the queue of exactly the missing trials, and joining one a lead started."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from kerasflow import pglock, urlauth
from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.track import tracking

# Lazy imports: optuna, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
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

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback


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

def queued_only(study: optuna.Study) -> optuna.Study:
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

def wait_for_lead(cfg: Config, study_name: str, storage_url: str, grace: int) -> optuna.Study:
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
