"""Merge the runs of one store into another (`make push`, storeops/push.py; and a re-pull, storeops/pull.py,
that keeps what was done here): copy what is new, update what grew.

A store moved only whole before (`make pull` snapshots a server's database); runs made on a laptop or
on a GPU box without a server could not join a team server. Here each source run is copied into the
experiment of the same name in the destination, with its status and times, name, params, tags, every
metric's whole history (step, timestamp, value), dataset inputs, parent link (CV and search
hierarchies stay nested) and artifacts.

Identity across any number of hops: every run has an *origin*, the id of the run first made (MLflow run
ids are random 128-bit ids, unique across stores): a run's own id, or, on a copy, the origin its source
carried (`SOURCE_TAG`; with `SOURCE_STORE_TAG`, the store it was first made in). Both sides are matched
on it, so any graph of pushes and pulls (A<->B any number of times, A->C and A->B->C) converges to one
copy of each run, logged model (`MODEL_SOURCE_TAG`) and model version (`VERSION_SOURCE_TAG`). Matching
only the destination's tag against the source's own id (the first design) duplicated a run at each hop
back: push A->B, B->A, A->B, B->A left six copies of one run in A. Merging again copies only what is
new or grew: new runs, new metric steps, new params and tags, new or changed artifact files, a status
that changed. A destination run that is the origin itself only gains what it lacks (which side changed
a value is unknown, and the original is the truth). A run still RUNNING at the source is tagged as such
on the copy, so nothing on the destination closes it as an orphan (track.orphans skips copies).

Deletion is a state that merges: a run deleted in either store stays deleted in both after a push (a
deleted source run deletes its copy; a copy deleted in the destination is not brought back, nor is a
deleted parent of a copied child). To bring a run back, restore it in each store that holds it. A
parent that no longer exists at all (`mlflow gc`) is one warning; its children are copied unlinked. An
artifact that cannot be read (a symlink out of the store, a file gone) is one warning naming it; the
copy gets everything else and its status, and the next push tries that file again.

MLflow 3 logged models (kept outside the run's artifacts) are copied with their params, tags, metrics
and files, linked to the copied run (`MODEL_SOURCE_TAG`); registered models get their versions (numbered
by the destination, matched by `VERSION_SOURCE_TAG`) and aliases. An alias that already points at
another version in the destination is kept there, and reported: a push never silently moves it.

Why not mlflow-export-import (the MLflow maintainers' tool; its last release, 1.2.0, dates from 2023):
read in that wheel, `run/import_run.py` creates a new run on every import (a second import duplicates
every run: not idempotent, nothing incremental), it goes through an export folder on disk, and nothing
in it handles MLflow 3's logged models (`search_logged_models`, `models:/m-...` sources). Built here on
MLflow's client API instead.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasflow.errors import UserError
from kerasflow.track import filters, orphans, store

# Lazy imports: mlflow, inside the functions that use them (seconds to load).

if TYPE_CHECKING:
    import mlflow
    from mlflow.entities import Run

log = logging.getLogger(__name__)

SOURCE_TAG = orphans.SOURCE_TAG  # the origin run's id, on every copy (the first store's own id)
SOURCE_STORE_TAG = "kerasflow.source_store"  # the store the origin was made in (shown, not matched)
COPY_OF_RUNNING_TAG = "kerasflow.copy_of_running"  # "true" while the source run was RUNNING
PARENT_TAG = "mlflow.parentRunId"
MODEL_SOURCE_TAG = "kerasflow.source_model_id"  # on a copied logged model
VERSION_SOURCE_TAG = "kerasflow.source_version"  # on a copied model version: the source's identity
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
    models: int = 0  # logged models copied
    versions: int = 0  # registered model versions copied
    experiments: list[str] = field(default_factory=list)  # created in the destination
    kept_aliases: list[str] = field(default_factory=list)  # "name@alias": pointing elsewhere, not moved
    deleted: int = 0  # copies deleted because their run is deleted at the source
    kept_deleted: int = 0  # runs deleted in the destination: left deleted, not copied again
    skipped_files: int = 0  # artifact files that could not be read at the source (each warned)

    def summary(self) -> str:
        made = f"; experiments created: {', '.join(self.experiments)}" if self.experiments else ""
        kept = (f"; aliases kept where the destination points them elsewhere: {', '.join(self.kept_aliases)}"
                if self.kept_aliases else "")
        gone = (f"; {self.deleted} deleted (deleted at the source), {self.kept_deleted} left deleted "
                "(deleted here)" if self.deleted or self.kept_deleted else "")
        skipped = (f"; {self.skipped_files} artifact files could not be read (see the warnings)"
                   if self.skipped_files else "")
        return (f"{self.created} runs copied, {self.updated} updated, {self.unchanged} unchanged "
                f"({self.metrics} metric values, {self.files} artifact files), {self.models} models, "
                f"{self.versions} model versions{made}{kept}{gone}{skipped}")


def merge(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, dst_uri: str, *,  # noqa: PLR0913
          experiments: list[str] | None = None, filter_string: str = "", label: str = "",
          src_uri: str = "", full: bool = False) -> Report:
    """Copy or update every selected run of `src` in `dst`, then their logged models and registered
    versions (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    report = Report()
    all_mapped: dict[str, str] = {}  # source run id -> its copy, every experiment
    all_models: dict[str, str] = {}  # source logged model id -> its copy
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
        present = sorted(_runs(dst, dst_exp, ""), key=lambda r: origin(r) == r.info.run_id)
        copies = {origin(r): r for r in present}  # the origin itself wins over a duplicate of it
        mapped = _merge_runs(src, dst, dst_exp, runs, copies, report, label, full=full)
        all_mapped |= mapped
        selected = {r.info.run_id for r in runs if r.info.lifecycle_stage == "active"}
        all_models |= _models(src, dst, found[name].experiment_id, dst_exp, selected, mapped, report,
                              src_uri=src_uri, whole=not filter_string)
    _registry(src, dst, all_mapped, all_models, report)
    return report


def origin(run: Run) -> str:
    """The id of the run this one is (a copy's `SOURCE_TAG`, else its own): what every push matches on."""
    return run.data.tags.get(SOURCE_TAG) or run.info.run_id


def _merge_runs(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, dst_exp: str,  # noqa: PLR0913
                runs: list[Run], copies: dict[str, Run], report: Report, label: str, *,
                full: bool) -> dict[str, str]:
    """Copy, update, delete or leave each source run (parents first); returns source id -> its active
    copy (what models and versions may point at)."""
    mapped: dict[str, str] = {}
    links: dict[str, str] = {}  # source id -> its copy, deleted ones too (a child keeps its place)
    for run in _parents_first(runs):
        copy = copies.get(origin(run))
        if copy is not None:
            links[run.info.run_id] = copy.info.run_id
        if run.info.lifecycle_stage == "deleted":
            if copy is not None and copy.info.lifecycle_stage != "deleted":
                dst.delete_run(copy.info.run_id)
                report.deleted += 1
            continue
        if copy is not None and copy.info.lifecycle_stage == "deleted":
            report.kept_deleted += 1
            continue
        if copy is None:
            new_id = _create(dst, dst_exp, run, links, label)
            links[run.info.run_id] = mapped[run.info.run_id] = new_id
            _update(src, dst, run, dst.get_run(new_id), report, created=True)
            report.created += 1
            continue
        mapped[run.info.run_id] = copy.info.run_id
        if not full and _unchanged(run, copy):
            report.unchanged += 1
        elif _update(src, dst, run, copy, report, created=False):
            report.updated += 1
        else:
            report.unchanged += 1
    return mapped


def _original(run: Run) -> bool:
    """The run is the origin itself, made in its store (not a copy)."""
    return SOURCE_TAG not in run.data.tags


def _models(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, src_exp: str, dst_exp: str,  # noqa: PLR0913
            selected: set[str], mapped: dict[str, str], report: Report, *, src_uri: str,
            whole: bool) -> dict[str, str]:
    """Copy the experiment's READY logged models of the selected runs (all of them, with `whole`, also
    those without a run); returns source model id -> copy id."""
    from mlflow.entities import LoggedModelStatus, Metric
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    present = []
    for model in _logged_models(dst, dst_exp):
        if model.status == LoggedModelStatus.READY:
            present.append(model)
        elif MODEL_SOURCE_TAG in model.tags:  # a copy a killed push left half-made: made again below
            dst.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            dst.set_logged_model_tags(model.model_id, {MODEL_SOURCE_TAG: "", "kerasflow.abandoned_copy_of":
                                                       model.tags[MODEL_SOURCE_TAG]})
    copies = {m.model_id: m.model_id for m in present} | {
        m.tags[MODEL_SOURCE_TAG]: m.model_id for m in present if m.tags.get(MODEL_SOURCE_TAG)}
    out: dict[str, str] = {}
    for model in _logged_models(src, src_exp):
        run = model.source_run_id
        if model.status != LoggedModelStatus.READY or (run not in selected if run else not whole):
            continue
        first = model.tags.get(MODEL_SOURCE_TAG) or model.model_id  # its origin, as for runs
        if first in copies:
            out[model.model_id] = copies[first]
            continue
        created = dst.create_logged_model(dst_exp, name=model.name, source_run_id=mapped.get(run or ""),
                                          tags={**model.tags, MODEL_SOURCE_TAG: first},
                                          params=model.params or None, model_type=model.model_type)
        with tempfile.TemporaryDirectory(prefix="kerasflow-push-model-") as tmp:
            repo = get_artifact_repository(model.artifact_location, tracking_uri=src_uri or None)
            repo.download_artifacts("", dst_path=tmp)
            dst.log_model_artifacts(created.model_id, tmp)
        metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=created.model_id,
                          dataset_name=m.dataset_name, dataset_digest=m.dataset_digest,
                          run_id=mapped.get(m.run_id or ""))
                   for m in model.metrics or []]
        if metrics and created.source_run_id:
            dst.log_batch(created.source_run_id, metrics=metrics)
        dst.finalize_logged_model(created.model_id, LoggedModelStatus.READY)
        out[model.model_id] = created.model_id
        report.models += 1
    return out


def _logged_models(client: mlflow.MlflowClient, experiment_id: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_logged_models([experiment_id], max_results=100, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _registry(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, mapped: dict[str, str],
              models: dict[str, str], report: Report) -> None:
    """Versions of the copied runs and models, under the same registered names, and their aliases."""
    from mlflow.exceptions import MlflowException

    for registered in src.search_registered_models(max_results=1000):
        name = registered.name
        versions = [v for v in filters.model_versions(src, name)
                    if (v.run_id in mapped) or (_model_of(v) in models)]
        if not versions:
            continue
        try:
            dst.get_registered_model(name)
        except MlflowException:
            dst.create_registered_model(name, tags=registered.tags or None,
                                        description=registered.description)
        have = {_identity(v): v.version for v in filters.model_versions(dst, name)}
        copied: dict[str, str] = {}  # source version -> destination version
        for version in sorted(versions, key=lambda v: int(v.version)):
            identity = _identity(version)
            if identity in have:
                copied[str(version.version)] = str(have[identity])
                continue
            model_id = models.get(_model_of(version) or "")
            source = f"models:/{model_id}" if model_id else _run_source(version.source, mapped)
            if source is None:
                log.warning(f"{name} v{version.version}: its source {version.source} was not copied: skipped")
                continue
            made = dst.create_model_version(name, source, run_id=mapped.get(version.run_id or ""),
                                            tags={**version.tags, VERSION_SOURCE_TAG: identity},
                                            description=version.description, model_id=model_id)
            copied[str(version.version)] = str(made.version)
            report.versions += 1
        _aliases(dst, name, src.get_registered_model(name).aliases or {}, copied, report)


def _aliases(dst: mlflow.MlflowClient, name: str, aliases: dict[str, str], copied: dict[str, str],
             report: Report) -> None:
    """Each source alias onto the copy of its version, unless the destination points it elsewhere."""
    from mlflow.exceptions import MlflowException

    for alias, number in aliases.items():
        target = copied.get(str(number))
        if target is None:
            continue
        try:
            current = dst.get_model_version_by_alias(name, alias).version
        except MlflowException:
            current = None
        if current is None:
            dst.set_registered_model_alias(name, alias, target)
        elif str(current) != str(target):
            report.kept_aliases.append(f"{name}@{alias}")


def _identity(version: Any) -> str:
    """What a version was first registered from (a copy's `VERSION_SOURCE_TAG`): its logged model, else
    its run and source path, in the store it was made in."""
    return version.tags.get(VERSION_SOURCE_TAG) or _model_of(version) or f"{version.run_id}:{version.source}"


def _model_of(version: Any) -> str | None:
    """The logged model a version was registered from (`models:/m-...`; the attribute is not always set)."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = version.source or ""
    return source[len("models:/"):].split("/")[0] if source.startswith("models:/m-") else None


def _run_source(source: str, mapped: dict[str, str]) -> str | None:
    """`runs:/ID/path` of a copied run, pointed at its copy; anything else cannot be mapped."""
    if source.startswith("runs:/"):
        run_id, _, path = source[len("runs:/"):].partition("/")
        if run_id in mapped:
            return f"runs:/{mapped[run_id]}/{path}"
    return None


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


def _unchanged(run: Run, copy: Run) -> bool:
    """A finished run whose copy has its status, end time, params, tags and latest value of each metric
    (step, timestamp, value) needs no history or file read (what makes a push with nothing new cheap):
    a history that grew has a later step. Not seen here: a step inserted before the latest, or a file
    added to a finished run and nothing else; `push --full` compares everything."""
    if run.info.status == "RUNNING" or (run.info.status, run.info.end_time) != (copy.info.status,
                                                                               copy.info.end_time):
        return False
    own = (SOURCE_TAG, SOURCE_STORE_TAG, PARENT_TAG, COPY_OF_RUNNING_TAG)
    if run.data.params != copy.data.params or any(
            copy.data.tags.get(k) != v for k, v in run.data.tags.items() if k not in own):
        return False

    def latest(r: Run) -> set[tuple[str, int, int, float]]:
        return {(m.key, m.step, m.timestamp, m.value) for m in r.data._metric_objs}

    return latest(run) == latest(copy)


def _runs(client: mlflow.MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Run]:
    """Every run of the experiment, deleted ones too (a deletion merges)."""
    from mlflow.entities import ViewType

    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, run_view_type=ViewType.ALL,
                                  max_results=PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _with_parents(src: mlflow.MlflowClient, runs: list[Run]) -> list[Run]:
    """The selected runs plus every ancestor they name (a fold without its CV run would lose its place)."""
    from mlflow.exceptions import MlflowException

    by_id = {r.info.run_id: r for r in runs}
    todo = [r.data.tags[PARENT_TAG] for r in runs if PARENT_TAG in r.data.tags]
    while todo:
        parent_id = todo.pop()
        if parent_id in by_id:
            continue
        try:
            parent = src.get_run(parent_id)
        except MlflowException:  # removed for good (mlflow gc): its children come unlinked (_create)
            continue
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


def _create(dst: mlflow.MlflowClient, experiment_id: str, run: Run, links: dict[str, str],
            label: str) -> str:
    tags = {SOURCE_TAG: origin(run), SOURCE_STORE_TAG: run.data.tags.get(SOURCE_STORE_TAG) or label}
    parent = run.data.tags.get(PARENT_TAG)
    if parent in links:
        tags[PARENT_TAG] = links[parent]
    elif parent:
        log.warning(f"run {run.info.run_name!r} ({run.info.run_id}): its parent run {parent} is deleted or "
                    "gone at the source: copied without its parent link")
    created = dst.create_run(experiment_id, start_time=run.info.start_time, tags=tags,
                             run_name=run.info.run_name)
    return created.info.run_id


def _update(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, run: Run, copy: Run,  # noqa: PLR0913
            report: Report, *, created: bool) -> bool:
    """Bring `copy` up to `run`; True when something changed."""
    from mlflow.entities import Metric, Param, RunTag

    copy_id = copy.info.run_id
    # the origin itself (the very same run pulled before, or the run a copy came back to): only what it
    # lacks is added, since which side changed a value is unknown; its status is its own
    same = _original(copy)
    params = [Param(k, v) for k, v in run.data.params.items() if k not in copy.data.params]
    own = (SOURCE_TAG, SOURCE_STORE_TAG, PARENT_TAG, COPY_OF_RUNNING_TAG)
    tags = [RunTag(k, v) for k, v in run.data.tags.items()
            if k not in own and (k not in copy.data.tags if same else copy.data.tags.get(k) != v)]
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
    inputs = run.inputs.dataset_inputs if run.inputs else []
    inputs = inputs if inputs and not (copy.inputs and copy.inputs.dataset_inputs) else []
    if inputs:  # here, not when the run is created: what a killed push skipped is done on its rerun
        dst.log_inputs(copy_id, datasets=inputs)
    report.metrics += len(metrics)
    files, skipped = _copy_artifacts(src, dst, run.info.run_id, copy_id, fresh=created, missing_only=same)
    report.files += files
    report.skipped_files += skipped
    status_changed = False if same else _status(dst, run, copy)
    return bool(params or tags or metrics or inputs or files or status_changed)


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


def _copy_artifacts(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, run_id: str, copy_id: str, *,  # noqa: PLR0913
                    fresh: bool, missing_only: bool = False) -> tuple[int, int]:
    """Copy the files the copy lacks (or, unless `missing_only`, holds at another size); returns how many
    were copied and how many could not be read (each one warning: the rest of the run still copies)."""
    have = {} if fresh else dict(_files(dst, copy_id))
    wanted = [(path, size) for path, size in _files(src, run_id)
              if path not in have or (not missing_only and have[path] != size)]
    copied = 0
    with tempfile.TemporaryDirectory(prefix="kerasflow-push-") as tmp:
        for path, _ in wanted:
            try:
                local = _download(src, run_id, path, tmp)
            except (OSError, ValueError) as exc:
                log.warning(f"run {run_id}: artifact {path} could not be read ({exc}): not copied")
                continue
            folder = str(Path(path).parent)
            dst.log_artifact(copy_id, local, None if folder == "." else folder)
            copied += 1
    return copied, len(wanted) - copied


def _download(src: mlflow.MlflowClient, run_id: str, path: str, tmp: str) -> str:
    """One artifact file into `tmp`. A file of a store folder must be a regular file inside that run's
    artifact folder: a symlink to elsewhere (`/etc/passwd`, another user's home) is refused, not followed;
    a server or a bucket serves bytes, and MLflow's download is used as is."""
    from mlflow.exceptions import MlflowException

    root = src.get_run(run_id).info.artifact_uri
    if root.startswith("file://") or "://" not in root:
        folder = Path(root.removeprefix("file://")).resolve()
        local = Path(root.removeprefix("file://")) / path
        if local.is_symlink() or not local.resolve().is_relative_to(folder):
            raise ValueError(f"a link to {local.resolve()}, outside the run's artifacts")
        if not local.is_file():
            raise ValueError("not a regular file")
    try:
        return src.download_artifacts(run_id, path, tmp)
    except MlflowException as exc:
        raise ValueError(str(exc).splitlines()[0][:200]) from None
