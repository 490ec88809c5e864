"""A run and its copy in another store compared field by field: what `kerasflow push` must keep."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from kerasflow.track import orphans

# tags a copy has of its own (where it came from, its own nesting ids)
COPY_TAGS = {"mlflow.parentRunId", orphans.SOURCE_TAG, "kerasflow.source_store", "kerasflow.copy_of_running"}


def files(client: Any, run_id: str, path: str | None = None) -> dict[str, str]:
    """Every artifact file of a run -> its sha256."""
    out = {}
    for entry in client.list_artifacts(run_id, path):
        if entry.is_dir:
            out |= files(client, run_id, entry.path)
        else:
            local = client.download_artifacts(run_id, entry.path)
            out[entry.path] = hashlib.sha256(Path(local).read_bytes()).hexdigest()
    return out


def history(client: Any, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))


def fingerprint(client: Any, run_id: str) -> tuple:
    run = client.get_run(run_id)
    histories = {k: history(client, run_id, k) for k in run.data.metrics}
    return run.info.run_name, run.info.status, run.data.params, histories, files(client, run_id)


def same_run(src: Any, dst: Any, run_id: str, copy: Any) -> None:
    """Every copied field of one run, compared value by value and byte by byte."""
    run = src.get_run(run_id)
    assert copy.info.run_name == run.info.run_name
    assert copy.info.status == run.info.status and copy.info.start_time == run.info.start_time
    assert copy.info.end_time == run.info.end_time
    assert copy.data.params == run.data.params
    assert {k: v for k, v in copy.data.tags.items() if k not in COPY_TAGS} == \
        {k: v for k, v in run.data.tags.items() if k not in COPY_TAGS}
    for key in run.data.metrics:
        assert history(dst, copy.info.run_id, key) == history(src, run_id, key), key
    assert [d.dataset.digest for d in copy.inputs.dataset_inputs] == \
        [d.dataset.digest for d in run.inputs.dataset_inputs]
    assert files(dst, copy.info.run_id) == files(src, run_id)


def copies_by_source(client: Any, experiment: str = "kerasflow") -> dict[str, Any]:
    """The runs of an experiment that are copies, by the source run id each carries."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return {r.data.tags[orphans.SOURCE_TAG]: r for r in runs if orphans.SOURCE_TAG in r.data.tags}
