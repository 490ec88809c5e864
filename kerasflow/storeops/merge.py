"""Merge the runs of one store into another (`kerasflow push`): copy what is new, update what grew.

A store moved only whole before (`make pull` snapshots a server's database); runs made on a laptop or
on a GPU box without a server could not join a team server. Here each source run is copied into the
experiment of the same name in the destination, with its status and times, name, params, tags, every
metric's whole history (step, timestamp, value), dataset inputs, parent link (CV and search
hierarchies stay nested) and artifacts. Every copy carries its source run id (`SOURCE_TAG`; MLflow run
ids are random 128-bit ids, unique across stores), so merging again copies only what is new or grew:
new runs, new metric steps, new params and tags, new or changed artifact files, a status that changed.
A run still RUNNING at the source is tagged as such on the copy, so nothing on the destination closes it
as an orphan (track.orphans skips copies). Deleted runs and experiments are not copied.

Not copied in this version: MLflow 3 logged models (kept outside the run's artifacts) and the model
registry; a run's copied artifacts include everything else it logged.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasflow import urlauth
from kerasflow.errors import UserError
from kerasflow.track import orphans, store

# Lazy imports: mlflow, inside the functions that use them (seconds to load).

if TYPE_CHECKING:
    import mlflow
    from mlflow.entities import Run

log = logging.getLogger(__name__)

SOURCE_TAG = orphans.SOURCE_TAG  # the source run's id, on every copy
SOURCE_STORE_TAG = "kerasflow.source_store"  # where the copy came from (shown, not used to match)
COPY_OF_RUNNING_TAG = "kerasflow.copy_of_running"  # "true" while the source run was RUNNING
PARENT_TAG = "mlflow.parentRunId"
BATCH = 1000  # MLflow's limit of metrics (and of params + tags) in one log_batch
PAGE = 1000


@dataclass
class Report:
    """What a merge did, counted."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    metrics: int = 0  # metric values copied
    files: int = 0  # artifact files copied
    experiments: list[str] = field(default_factory=list)  # created in the destination

    def summary(self) -> str:
        made = f"; experiments created: {', '.join(self.experiments)}" if self.experiments else ""
        return (f"{self.created} runs copied, {self.updated} updated, {self.unchanged} unchanged "
                f"({self.metrics} metric values, {self.files} artifact files){made}")


def destination_uri(dest: str) -> str:
    """A store folder -> its sqlite URI; a server URL as given, its user:password moved to MLflow's
    credential variables (never shown)."""
    if dest.startswith(("http://", "https://")):
        clean, user, password = urlauth.split_credentials(dest)
        if user is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"] = user
        if password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        return clean
    if "://" in dest:  # a database URL (a team server's PostgreSQL)
        return dest
    return store.sqlite_uri(Path(dest) / store.DB_FILE)


def push(source: str, dest: str, *, experiments: list[str] | None = None, filter_string: str = "") -> Report:
    """Merge the runs of store `source` (a folder, or MLFLOW_TRACKING_URI) into `dest`."""
    import mlflow

    with store.open_store(source, create=False) as src_uri:
        dst_uri = destination_uri(dest)
        if dst_uri == src_uri:
            raise UserError(f"the destination {urlauth.redact(dest)} is the source store: give another "
                            "with TO=/--to")
        store.check_backend(dst_uri)
        store.init_sqlite(dst_uri)
        src = mlflow.MlflowClient(tracking_uri=src_uri)
        dst = mlflow.MlflowClient(tracking_uri=dst_uri)
        with store.activated(dst_uri):  # artifact repositories resolve through the active store
            return merge(src, dst, dst_uri, experiments=experiments, filter_string=filter_string,
                         label=urlauth.redact(src_uri))


def merge(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, dst_uri: str, *,  # noqa: PLR0913
          experiments: list[str] | None = None, filter_string: str = "", label: str = "") -> Report:
    """Copy or update every selected run of `src` in `dst` (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    report = Report()
    found = {e.name: e for e in src.search_experiments()}
    names = experiments or sorted(found)
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"no experiment {missing[0]!r} in the source store (it has: "
                        f"{', '.join(sorted(found))}): check --experiment")
    for name in names:
        dst_exp = _experiment(dst, dst_uri, name, report)
        try:
            runs = list(_runs(src, found[name].experiment_id, filter_string))
        except MlflowException as exc:
            raise UserError(f"bad filter {filter_string!r} ({str(exc).splitlines()[0][:150]}): see MLflow's "
                            "search syntax, e.g. \"metrics.test_accuracy > 0.9\"") from None
        runs = _with_parents(src, runs)
        copies = {r.data.tags[SOURCE_TAG]: r for r in _runs(dst, dst_exp, "") if SOURCE_TAG in r.data.tags}
        mapped = {source_id: copy.info.run_id for source_id, copy in copies.items()}
        for run in _parents_first(runs):
            copy = copies.get(run.info.run_id)
            if copy is None:
                new_id = _create(dst, dst_exp, run, mapped, label)
                mapped[run.info.run_id] = new_id
                _update(src, dst, run, dst.get_run(new_id), report, created=True)
                report.created += 1
            elif _update(src, dst, run, copy, report, created=False):
                report.updated += 1
            else:
                report.unchanged += 1
    return report


def _experiment(dst: mlflow.MlflowClient, dst_uri: str, name: str, report: Report) -> str:
    """The destination's experiment of that name, created (artifacts inside a store folder) if missing."""
    found = dst.get_experiment_by_name(name)
    if found is None:
        report.experiments.append(name)
        return dst.create_experiment(name, artifact_location=store.artifact_root(dst_uri, name))
    if found.lifecycle_stage == "deleted":
        raise UserError(f"experiment {name!r} is deleted in the destination: restore it there (mlflow "
                        "experiments restore) or leave it out with --experiment")
    return found.experiment_id


def _runs(client: mlflow.MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Run]:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _with_parents(src: mlflow.MlflowClient, runs: list[Run]) -> list[Run]:
    """The selected runs plus every ancestor they name (a fold without its CV run would lose its place)."""
    by_id = {r.info.run_id: r for r in runs}
    todo = [r.data.tags[PARENT_TAG] for r in runs if PARENT_TAG in r.data.tags]
    while todo:
        parent_id = todo.pop()
        if parent_id in by_id:
            continue
        parent = src.get_run(parent_id)
        by_id[parent_id] = parent
        if PARENT_TAG in parent.data.tags:
            todo.append(parent.data.tags[PARENT_TAG])
    return list(by_id.values())


def _parents_first(runs: list[Run]) -> list[Run]:
    by_id = {r.info.run_id: r for r in runs}

    def depth(run: Run) -> int:
        seen, n = set(), 0
        while run.data.tags.get(PARENT_TAG) in by_id and run.info.run_id not in seen:  # a cycle: stop
            seen.add(run.info.run_id)
            run, n = by_id[run.data.tags[PARENT_TAG]], n + 1
        return n

    return sorted(runs, key=lambda r: (depth(r), r.info.start_time or 0, r.info.run_id))


def _create(dst: mlflow.MlflowClient, experiment_id: str, run: Run, mapped: dict[str, str],
            label: str) -> str:
    tags = {SOURCE_TAG: run.info.run_id, SOURCE_STORE_TAG: label}
    parent = run.data.tags.get(PARENT_TAG)
    if parent in mapped:
        tags[PARENT_TAG] = mapped[parent]
    created = dst.create_run(experiment_id, start_time=run.info.start_time, tags=tags,
                             run_name=run.info.run_name)
    if run.inputs and run.inputs.dataset_inputs:
        dst.log_inputs(created.info.run_id, datasets=run.inputs.dataset_inputs)
    return created.info.run_id


def _update(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, run: Run, copy: Run,  # noqa: PLR0913
            report: Report, *, created: bool) -> bool:
    """Bring `copy` up to `run`; True when something changed."""
    from mlflow.entities import Metric, Param, RunTag

    copy_id = copy.info.run_id
    params = [Param(k, v) for k, v in run.data.params.items() if k not in copy.data.params]
    own = (SOURCE_TAG, SOURCE_STORE_TAG, PARENT_TAG, COPY_OF_RUNNING_TAG)
    tags = [RunTag(k, v) for k, v in run.data.tags.items()
            if k not in own and copy.data.tags.get(k) != v]
    for i in range(0, max(len(params), len(tags)), BATCH // 2):
        dst.log_batch(copy_id, params=params[i:i + BATCH // 2], tags=tags[i:i + BATCH // 2])
    metrics: list[Any] = []
    for key in run.data.metrics:
        have = set() if created else {(m.step, m.timestamp, repr(m.value))
                                      for m in dst.get_metric_history(copy_id, key)}
        metrics += [Metric(key, m.value, m.timestamp, m.step)
                    for m in src.get_metric_history(run.info.run_id, key)
                    if (m.step, m.timestamp, repr(m.value)) not in have]
    for i in range(0, len(metrics), BATCH):
        dst.log_batch(copy_id, metrics=metrics[i:i + BATCH])
    report.metrics += len(metrics)
    files = _copy_artifacts(src, dst, run.info.run_id, copy_id, fresh=created)
    report.files += files
    status_changed = _status(dst, run, copy)
    return bool(params or tags or metrics or files or status_changed)


def _status(dst: mlflow.MlflowClient, run: Run, copy: Run) -> bool:
    running = run.info.status == "RUNNING"
    if running:
        if copy.data.tags.get(COPY_OF_RUNNING_TAG) != "true":
            dst.set_tag(copy.info.run_id, COPY_OF_RUNNING_TAG, "true")
        return False
    if copy.info.status == run.info.status and copy.info.end_time == run.info.end_time:
        return False
    dst.set_terminated(copy.info.run_id, run.info.status, end_time=run.info.end_time)
    if COPY_OF_RUNNING_TAG in copy.data.tags:
        dst.set_tag(copy.info.run_id, COPY_OF_RUNNING_TAG, "false")
    return True


def _files(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> Iterator[tuple[str, int]]:
    for entry in client.list_artifacts(run_id, path):
        if entry.is_dir:
            yield from _files(client, run_id, entry.path)
        else:
            yield entry.path, entry.file_size or 0


def _copy_artifacts(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, run_id: str, copy_id: str, *,
                    fresh: bool) -> int:
    """Copy the files the copy lacks (or holds at another size); returns how many."""
    have = {} if fresh else dict(_files(dst, copy_id))
    wanted = [(path, size) for path, size in _files(src, run_id) if have.get(path) != size]
    with tempfile.TemporaryDirectory(prefix="kerasflow-push-") as tmp:
        for path, _ in wanted:
            local = src.download_artifacts(run_id, path, tmp)
            folder = str(Path(path).parent)
            dst.log_artifact(copy_id, local, None if folder == "." else folder)
    return len(wanted)
