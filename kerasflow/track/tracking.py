"""The training of kerasflow.train.training inside ONE MLflow run, with lineage, environment and the model.

Why not `mlflow.keras.autolog` for the metrics: with a fine-tuning phase the second `fit` logs other
`epochs`/learning-rate params, MLflow refuses to change a param, and autolog then silently drops every
metric of that phase (seen with MLflow 3.17.2). `track.sync` sends each epoch at its absolute step from
the run folder's history, in the background, and skips steps already logged: a run resumed after a kill
has no duplicated epochs, and a tracking server that goes away mid-run does not stop the training.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np

from kerasflow import config, notify
from kerasflow.config import Config
from kerasflow.errors import Terminated, UserError, disk_full
from kerasflow.track import filters, orphans, store, sync
from kerasflow.train import envinfo, models, rundir, training

log = logging.getLogger(__name__)

# Lazy imports: keras, mlflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import keras
    import mlflow


LEVEL_TAG = "kerasflow.level"  # where a run sits in an experiment: cv, outer_fold, inner_fold, search, ...
DEFAULT_EXPERIMENT = store.DEFAULT_EXPERIMENT
WEIGHTS_TAG = "kerasflow.weights_digest"  # sha256 of the trained weight arrays (make reproduce compares it)


def log_params_merged(client: mlflow.MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log the config as params into a run that may hold params already (made by `mlflow run`).

    Params that mean the same value are kept as they are; a real conflict is one line, since MLflow
    refuses to change a logged param.
    """
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    for key, value in params.items():
        if key in logged and not config.same_param(key, logged[key], value):
            raise UserError(f"run {run_id} already has param {key}={logged[key]!r} but this config says "
                            f"{key}={value!r}: pass the same value, or start a new run (unset MLFLOW_RUN_ID)")
    new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
    for i in range(0, len(new), 100):  # MLflow's log_batch takes at most 100 params a call
        client.log_batch(run_id, params=new[i:i + 100])


@contextmanager
def run_status(run_id: str, stopped: tuple[type[BaseException], ...] = (),
               announce: tuple[str, str] | None = None) -> Iterator[None]:
    """End the run FINISHED, FAILED on an error, KILLED on Ctrl-C/SIGTERM or on a `stopped` exception
    (a pruned trial): never left RUNNING, whether it is this process's active run or not. `announce`
    (what, name): a top-level run's end is sent to KERASFLOW_NOTIFY (kerasflow/notify.py)."""
    import mlflow

    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except stopped:
        status = "KILLED"
        raise
    finally:
        active = mlflow.active_run()
        try:
            if status == "FINISHED":
                _reopened(mlflow.MlflowClient(), run_id)
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(status)
            else:
                mlflow.MlflowClient().set_terminated(run_id, status)
        except Exception as exc:
            if not (sync.unreachable(exc) or disk_full(exc)):
                raise
            # the error that ended the run says what to do; this one must not replace it (end_run
            # took the run off the active stack before it failed)
            why = "its store is full" if disk_full(exc) else "the tracking server is unreachable"
            log.warning(f"run {run_id} could not be marked {status} ({why}): it shows RUNNING until the next "
                        "command that opens the store marks it FAILED, or its rerun (same run_name) ends it")
        if announce and notify.wanted():
            _announce(run_id, status, *announce)


def _reopened(client: mlflow.MlflowClient, run_id: str) -> None:
    """A run that finishes was alive: a `closed_as_orphan` tag on it (set by another command while it
    trained, e.g. its heartbeat could not reach a store that was away longer than the grace) is moved
    to `kerasflow.closed_while_alive` and said, so the run does not read as a failure that was resumed."""
    tags = client.get_run(run_id).data.tags
    if orphans.CLOSED_TAG in tags:
        client.set_tag(run_id, "kerasflow.closed_while_alive", tags[orphans.CLOSED_TAG])
        client.delete_tag(run_id, orphans.CLOSED_TAG)
        log.warning(f"run {run_id} was marked FAILED by another command while it trained "
                    f"({tags[orphans.CLOSED_TAG][:120]}); it finished, and ends FINISHED")


def _announce(run_id: str, status: str, what: str, name: str) -> None:
    """One message about a run that ended (never raises: a notifier must not fail the run)."""
    import mlflow

    try:
        if sync.gave_up(mlflow.get_tracking_uri()):
            raise TimeoutError("the tracking server did not come back")
        client = mlflow.MlflowClient()
        run = client.get_run(run_id)
        link = notify.run_link(mlflow.get_tracking_uri(), run.info.experiment_id, run_id)
        message = notify.of_run(run, name, status, link=link, what=what)
    except Exception as exc:  # noqa: BLE001 - the store may be what failed; say what we know
        log.debug(f"notify: run {run_id} not readable ({exc})")
        message = notify.Message(name=name, status=status, what=what)
    notify.send(message)


@contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (docker stop, kill) and SIGHUP (the SSH session dropped) end the run KILLED, like Ctrl-C."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def experiment_id(client: mlflow.MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, creating it (artifacts inside the store) when missing; several processes
    starting at once on a new store race to create it, and the losers use the winner's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=store.artifact_root(uri, name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    if found is None:
        raise RuntimeError(f"experiment '{name}' exists and cannot be read")
    if found.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment '{name}' is deleted: restore it or use --experiment NAME")
    return found.experiment_id


def launched_or_named(client: mlflow.MlflowClient, uri: str, experiment: str) -> tuple[str | None, str, str]:
    """(run id made by `mlflow run`, or None; experiment id; experiment name) for a parent run.

    The id is taken out of the environment: `mlflow.start_run()` without a run id resumes
    $MLFLOW_RUN_ID, which would put every child run (a fold, a trial) into the parent.
    """
    launched = os.environ.pop("MLFLOW_RUN_ID", None)
    if launched:
        exp_id = client.get_run(launched).info.experiment_id
        return launched, exp_id, client.get_experiment(exp_id).name
    return None, experiment_id(client, uri, experiment), experiment


def finished_run(client: mlflow.MlflowClient, run_dir: Path) -> str | None:
    """The run a finished folder made in this store (a rerun of CV or a search skips its training),
    or None: a folder's `mlflow_run_id` is believed only for a FINISHED run of this store it made."""
    from mlflow.exceptions import MlflowException

    run_id = rundir.finished_run_id(run_dir)
    if run_id is None:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run_id if run.info.status == "FINISHED" and orphans.made_by(run, run_dir) else None


def _resume_id(run_dir: Path, client: mlflow.MlflowClient) -> str | None:
    path = run_dir / rundir.RUN_ID_FILE
    if not path.is_file():
        return None
    run_id = path.read_text().strip()
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MlflowException, or a store that lost it
        raise UserError(
            f"run folder {run_dir} belongs to MLflow run {run_id}, which this tracking store does not "
            "have: use the store it was started with, or another run_name"
        ) from None
    if not orphans.made_by(run, run_dir):
        raise UserError(
            f"run folder {run_dir} names MLflow run {run_id} ({run.info.run_name!r}), which this folder "
            "did not make (its folder id differs): resuming would write into that run; use another "
            "run_name"
        )
    return run_id


def log_inputs(prep: training.Prepared) -> None:
    """Data lineage: one input per split, with our digest (MLflow would hash every pixel otherwise)."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource

    ex = prep.examples
    # an image folder is a path MLflow understands; tfds and synthetic are described by their parameters
    source = ex.source["path"] if "path" in ex.source else CodeDatasetSource(
        tags={k: json.dumps(v) if not isinstance(v, str) else v for k, v in ex.source.items()})
    for context, idx in (("training", prep.splits.train), ("validation", prep.splits.val),
                         ("test", prep.splits.test)):
        # a zero-copy view with the split's shape and dtype: the schema and profile need no pixels
        shape = (len(idx), *ex.images.shape[1:])
        features = np.broadcast_to(ex.images[:1], shape)
        dataset = mlflow.data.from_numpy(
            features, targets=ex.labels[idx], source=source, name=f"{ex.source['source']}-{context}",
            digest=f"{ex.digest}-{prep.splits.digest()}-{context}"[:36],
        )
        _log_input(dataset, context)


def _log_input(dataset: Any, context: str) -> None:
    """mlflow.log_input, retried when another process inserted the same dataset at the same moment:
    MLflow's store looks the dataset up, then inserts it, so two trials (or CV folds) starting at once
    on one server failed with "UNIQUE constraint failed" (sqlite) or "duplicate key" (PostgreSQL). The
    retry finds the other's row and links this run to it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as exc:
            raced = "UNIQUE constraint failed" in str(exc) or "duplicate key value" in str(exc)
            if not raced or attempt == 2:
                raise
            time.sleep(0.5 * (attempt + 1))


def _requirements() -> list[str]:
    """Pins for the logged model, from our lock: MLflow's own inference takes ~7 s of a ~7 s log."""
    wanted = {"tensorflow", "keras", "numpy", "mlflow", "pillow"}
    pins = []
    for line in envinfo.LOCK.read_text().splitlines():
        name = line.split("==")[0].strip().lower()
        if name in wanted and "==" in line:
            pins.append(line.strip())
    return pins


def log_model(prep: training.Prepared, register: str, alias: str) -> dict[str, Any]:
    """The trained model as an MLflow model (keras flavor + signature), optionally registered."""
    sample = np.asarray(prep.examples.images[prep.splits.test[:4]])
    return _log_keras(prep.model, sample, prep.examples.class_names, prep.cfg.image_size, register, alias)


def _log_keras(model: keras.Model, sample: np.ndarray, class_names: list[str], image_size: int,  # noqa: PLR0913
               register: str, alias: str) -> dict[str, Any]:
    """Log (once per run: a rerun finds it) and optionally register the active run's model."""
    import mlflow
    from mlflow.models import infer_signature

    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    assert run is not None  # noqa: S101 - called inside a tracked run
    logged = _logged_model(client, run.info.experiment_id, run.info.run_id)
    if logged is None:
        signature = infer_signature(sample, model.predict(sample, verbose=0))
        info = mlflow.keras.log_model(
            model, name="model", signature=signature, pip_requirements=_requirements(),
            metadata={"class_names": class_names, "image_size": image_size},
        )
        logged = (info.model_uri, info.model_id)
    out: dict[str, Any] = {"model_uri": logged[0], "model_id": logged[1]}
    if register:
        versions = [v for v in filters.model_versions(client, register) if v.run_id == run.info.run_id]
        version = versions[0] if versions else mlflow.register_model(logged[0], register)
        if alias:
            client.set_registered_model_alias(register, alias, version.version)
        out.update(registered_model=register, version=version.version, alias=alias)
    return out


def _logged_model(client: mlflow.MlflowClient, experiment_id: str, run_id: str) -> tuple[str, str] | None:
    """(uri, id) of the model this run logged before a kill, so its rerun neither logs nor registers a
    second one; a model whose logging the kill interrupted (not READY) is marked FAILED and logged anew."""
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models(experiment_ids=[experiment_id],
                                        filter_string=f"source_run_id = '{run_id}' AND name = 'model'")
    for model in found:
        if model.status == LoggedModelStatus.READY:
            return model.model_uri, model.model_id
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    return None


def _log_identity(client: mlflow.MlflowClient, run_id: str, run_dir: Path, entry: str) -> None:
    """Params, data tags, config and environment of a run, all from its folder: the same whether the
    run is tracked live or logged from the folder later (`log_folder`). Params: the run's identity
    (data, model, train, speed; the whole config is the config.yaml artifact) and replicas, how many
    devices `distribute` found (the global batch is batch_size x replicas)."""
    import mlflow

    cfg = config.load(run_dir / rundir.CONFIG_FILE)
    lineage = json.loads((run_dir / envinfo.ENV_DIR / envinfo.LINEAGE_FILE).read_text())
    log_params_merged(client, run_id, {**config.identity(cfg), "run_name": cfg.run_name,
                                       "replicas": lineage["replicas"]})
    tags = {k: str(lineage[k]) for k in ("data_digest", "split_digest", "data_source")}
    if lineage.get("splits_file_digest"):
        tags["splits_file_digest"] = lineage["splits_file_digest"]
    mlflow.set_tags({**tags, "kerasflow.entry": entry})
    mlflow.log_artifact(str(run_dir / rundir.CONFIG_FILE))
    _log_environment(run_dir)


def _log_environment(run_dir: Path) -> None:
    """The run folder's record of its environment (train.envinfo.record) as tags and artifacts."""
    import mlflow

    folder = envinfo.record(run_dir)  # a folder from before the record existed gets one now
    mlflow.set_tags(json.loads((folder / envinfo.TAGS_FILE).read_text()))
    mlflow.log_artifacts(str(folder), artifact_path=envinfo.ENV_DIR)


def _log_results(result: training.Result, files: dict[str, Path]) -> None:
    import mlflow

    prep = result.prep
    metrics = {f"test_{k}": float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    run = mlflow.active_run()
    assert run is not None  # noqa: S101 - called inside tracked_run's run
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics  # a rerun after a kill: once
    mlflow.log_metrics({k: v for k, v in metrics.items() if k not in logged})
    _tag_undefined(result.metrics)
    for key, path in files.items():
        if key != "model":
            mlflow.log_artifact(str(path))
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "model_summary.txt"
        lines: list[str] = []
        prep.model.summary(print_fn=lambda line, *args, **kw: lines.append(line))
        summary.write_text("\n".join(lines) + "\n")
        mlflow.log_artifact(str(summary))


UNDEFINED_TAG = "kerasflow.not_measured"  # test figures the test set could not give, and why


def _tag_undefined(results: dict[str, Any]) -> None:
    """Say which test figures are absent on purpose (evaluation.classification_metrics), so an absent
    test_auc reads as "the test set had one class", not as a logging failure."""
    import mlflow

    undefined = results.get("undefined") or {}
    if isinstance(undefined, dict) and undefined:
        mlflow.set_tag(UNDEFINED_TAG, "; ".join(f"{k}: {v}" for k, v in undefined.items())[:5000])


def train_tracked(cfg: Config, *, store_dir: str = store.DEFAULT_STORE, experiment: str = DEFAULT_EXPERIMENT,  # noqa: PLR0913
                  register: str = "", alias: str = "candidate", system_metrics: bool = False,
                  verbose: int | str = "auto", nested: Nested | None = None) -> tuple[training.Result, str]:
    """train.py's run inside one MLflow run; returns its result and the run id."""
    with store.open_store(store_dir) as uri:
        return tracked_run(cfg, uri=uri, experiment=experiment, nested=nested, register=register, alias=alias,
                           system_metrics=system_metrics, verbose=verbose)


@dataclass
class Nested:
    """How a run sits inside a larger experiment (a CV fold, a search trial); the default: on its own."""

    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    log_model: bool = True  # folds and trials only need metrics; the final retrain logs its model
    callbacks: list[Any] = field(default_factory=list)
    stopped: tuple[type[BaseException], ...] = ()  # exceptions that end the run KILLED (e.g. pruned)


def tracked_run(cfg: Config, *, uri: str, experiment: str, nested: Nested | None = None, register: str = "",  # noqa: PLR0913
                alias: str = "candidate", system_metrics: bool = False,
                verbose: int | str = "auto") -> tuple[training.Result, str]:
    """One training as one MLflow run in the active store `uri`: the seam CV folds, search trials and
    `train_mlflow.py` all go through. Returns its Result and the run id."""
    import mlflow

    nested = nested or Nested()
    notify.check()  # a notifier setting that would fail at the run's end fails before it starts
    sync.bound_calls()  # no MLflow call of ours waits minutes on a server that is away
    client = mlflow.MlflowClient()
    # set by `mlflow run`: log into the run it made, unless this run sits under a parent (the cv/tune
    # parent in this process, or one of another process) that consumed it already
    in_parent = mlflow.active_run() is not None
    from_env = os.environ.pop("MLFLOW_RUN_ID", None)  # else start_run() would resume it (see above)
    launched = None if nested.parent_run_id or in_parent else from_env
    exp_id = None if launched else experiment_id(client, uri, experiment)
    prep = training.prepare(cfg)
    run_id = launched or _resume_id(prep.run_dir, client)
    if system_metrics:
        mlflow.enable_system_metrics_logging()
    parent = None if run_id or in_parent else nested.parent_run_id  # one of another process (tune workers)
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id,
                           run_name=prep.cfg.run_name, log_system_metrics=system_metrics or None,
                           nested=in_parent, parent_run_id=parent, tags=dict(nested.tags) or None)
    run_id = run.info.run_id
    # a kill leaves it RUNNING: the next command that proves its process dead closes it (orphans)
    mlflow.set_tags({**orphans.tags(prep.run_dir), **orphans.heartbeat()})
    rundir.atomic_write(prep.run_dir / rundir.RUN_ID_FILE, run_id + "\n")
    log.info(f"mlflow: run {run_id} in experiment '{experiment}' at {uri}"
             f"{' (resumed)' if prep.resumed else ''}")
    # one message per run a user started (not per fold or trial, nor inside `make run`: its launcher sends)
    top = nested.parent_run_id is None and not in_parent and not launched
    if top and notify.wanted(start=True):
        notify.send(notify.Message(name=prep.cfg.run_name, status="STARTED"))
    with run_status(run_id, nested.stopped, ("run", prep.cfg.run_name) if top else None), \
            signals_as_interrupt(), sync.Heartbeat(client, run_id):
        if not prep.resumed or not client.get_run(run_id).data.params:
            _log_identity(client, run_id, prep.run_dir, entry="track")
            log_inputs(prep)
        sender = sync.EpochSender(client, run_id, prep.run_dir, uri).start()
        try:
            history = training.fit(prep, extra_callbacks=[sync.epoch_callback(sender), *nested.callbacks],
                                   verbose=verbose)
        finally:
            sender.stop()
        result = training.Result(prep, history, training.evaluate(prep))
        files = training.write_outputs(result)

        def finish() -> dict[str, Any]:
            """Everything the run logs after training; idempotent, so it is simply run again when the
            server was away."""
            sync.send_history(client, run_id, prep.run_dir)  # what the background sends missed
            _log_results(result, files)
            mlflow.set_tag(WEIGHTS_TAG, models.weights_digest(prep.model))
            if not nested.log_model:
                return {}
            model = log_model(prep, register, alias)
            rundir.atomic_write(prep.run_dir / rundir.LOGGED_MODEL_FILE, json.dumps(model, indent=2))
            return model

        later = (f"the trained run is kept in {prep.run_dir}; when {{}}, run the same command with "
                 f"run_name={prep.run_dir.name}: it ends MLflow run {run_id} without training again")
        try:
            model = sync.while_away(finish, uri, on_give_up=lambda: later.format("the server is back"))
        except Exception as exc:
            if not disk_full(exc):
                raise
            raise UserError(f"the MLflow store is full ({disk_full(exc)}): "
                            + later.format("you have freed disk space under it")) from None
        training.seal(prep)  # last: until here a rerun resumes this same MLflow run
    summary = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float)}
    log.info(f"test: {json.dumps(summary)}")
    registered = f" registered as {register} v{model['version']}" if register and model else ""
    logged = f"; model {model['model_uri']}{registered}" if model else ""
    log.info(f"mlflow: run {run_id} FINISHED{logged}")
    return result, run_id


AFTERWARDS_TAG = "kerasflow.logged_afterwards"  # "true" on a run `log_folder` made from a run folder
RESULT_FILES = (rundir.HISTORY_FILE, rundir.METRICS_FILE, rundir.PREDICTIONS_FILE, rundir.CURVES_FILE,
                rundir.CONFUSION_FILE, rundir.ROC_FILE)


def log_folder(run_dir: Path, *, uri: str, experiment: str, register: str = "",
               alias: str = "candidate") -> tuple[str, bool]:
    """Log a finished run folder into the active store as one MLflow run, afterwards (trained by
    `kerasflow train`, on an offline box, or while the tracking server was away); returns (run id,
    whether it was logged now). Once per store: the folder's own run (mlflow_run_id) or one logged
    from it before is completed, never a second made."""
    import mlflow

    run_dir = run_dir.resolve()
    if not (run_dir / rundir.MODEL_FILE).is_file() or not (run_dir / rundir.METRICS_FILE).is_file():
        raise UserError(f"{run_dir} is not a finished run folder (no {rundir.MODEL_FILE}): finish the run "
                        "first (the same command with run_name=NAME resumes it)")
    if not (run_dir / envinfo.ENV_DIR / envinfo.LINEAGE_FILE).is_file():
        raise UserError(f"{run_dir} was trained before run folders recorded their data (environment/"
                        f"{envinfo.LINEAGE_FILE}): it cannot be logged afterwards; train it again")
    rundir.hold(run_dir)  # one process at a time; and the run it logs is not an orphan meanwhile
    client = mlflow.MlflowClient()
    run_id = _folder_run(client, run_dir, experiment)
    if run_id and client.get_run(run_id).info.status == "FINISHED":
        return run_id, False
    results, cfg, model = _folder_contents(run_dir)  # all read before a run exists: none left empty
    if run_id is None:  # made with the time its first epoch ended (the closest to its start on record)
        rows = rundir.read_history_rows(run_dir)
        started = rows[0].get(rundir.HISTORY_TIME) if rows else None
        run_id = client.create_run(experiment_id(client, uri, experiment), start_time=started,
                                   run_name=run_dir.name,
                                   tags={AFTERWARDS_TAG: "true", **orphans.tags(run_dir)}).info.run_id
    mlflow.start_run(run_id=run_id)
    with run_status(run_id):
        if not client.get_run(run_id).data.params:
            _log_identity(client, run_id, run_dir, entry="log-run")
        sync.send_history(client, run_id, run_dir)
        logged = client.get_run(run_id).data.metrics
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in results.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)
                            and f"test_{k}" not in logged})
        _tag_undefined(results)
        for name in RESULT_FILES:
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        mlflow.set_tag(WEIGHTS_TAG, models.weights_digest(model))
        sample = np.zeros((4, cfg.image_size, cfg.image_size, 3), np.uint8)
        _log_keras(model, sample, list(results.get("per_class", {})), cfg.image_size, register, alias)
    if not (run_dir / rundir.RUN_ID_FILE).is_file():
        rundir.atomic_write(run_dir / rundir.RUN_ID_FILE, run_id + "\n")
    return run_id, True


def _folder_contents(run_dir: Path) -> tuple[dict[str, Any], Config, keras.Model]:
    """metrics.json, config.yaml and the model of a finished folder, each checked (one line naming the
    file when one is broken), before `log_folder` makes a run: a folder that cannot be logged leaves no
    empty FAILED run behind."""
    import keras

    path = run_dir / rundir.METRICS_FILE
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as JSON ({str(exc)[:120]}): the folder's test results "
                        "are damaged; train it again") from None
    if not isinstance(results, dict):
        raise UserError(f"{path} is not a JSON object of test metrics: the folder's test results are "
                        "damaged; train it again")
    cfg = config.load(run_dir / rundir.CONFIG_FILE)
    try:
        model = keras.models.load_model(run_dir / rundir.MODEL_FILE)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, OSError, zipfile errors, ...
        raise UserError(f"{run_dir / rundir.MODEL_FILE} cannot be loaded ({str(exc).splitlines()[0][:120]}): "
                        "the model file is damaged; train the run again") from None
    return results, cfg, model


def _folder_run(client: mlflow.MlflowClient, run_dir: Path, experiment: str) -> str | None:
    """The run this store already has for the folder: its own (tracked live), or one logged from it.
    The folder's `mlflow_run_id` is believed only for a run the folder made (`orphans.made_by`)."""
    from mlflow.exceptions import MlflowException

    id_file = run_dir / rundir.RUN_ID_FILE
    if id_file.is_file():
        run_id = id_file.read_text().strip()[:64]
        try:
            run = client.get_run(run_id)
        except MlflowException:  # another store's run: look for one logged from the folder
            run = None
        if run is not None and orphans.made_by(run, run_dir):
            return run_id
        if run is not None:
            log.warning(f"{run_dir / rundir.RUN_ID_FILE} names MLflow run {run_id} "
                        f"({run.info.run_name!r}), which this folder did not make: left alone; the "
                        "folder is logged as its own run")
            id_file.unlink()  # rewritten with the folder's own run when it is logged
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    mine = orphans.tags(run_dir)
    for wanted in ({orphans.FOLDER_TAG: mine[orphans.FOLDER_TAG]},
                   {key: mine[key] for key in (orphans.RUN_DIR_TAG, orphans.HOST_TAG)}):
        runs = [r for r in filters.runs_tagged(client, found.experiment_id, wanted)
                if orphans.made_by(r, run_dir)]
        if runs:
            return runs[0].info.run_id
    return None
