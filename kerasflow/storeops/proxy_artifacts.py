"""Make an experiment `make track` created usable by `make run`: its new runs get proxied locations.

    proxy_experiment(STORE, EXPERIMENT)      (make run, kerasflow/launch/run.py, before mlflow run)

An experiment created by an embedded command (`make track`, cv, tune) has a host path as its artifact
location, STORE/artifacts/<name>. A run `mlflow run` makes in it inside docker would write its logged
model under that path, which MLflow does not mount into the container (only the run's own folder,
created as root by docker). Rewritten to `mlflow-artifacts:/<name>`, the same folder is reached through
the store's server (`--artifacts-destination STORE/artifacts`) from the container, and directly by
embedded commands (track.store resolves `mlflow-artifacts:` into STORE/artifacts). Runs already in the
experiment keep their locations; nothing moves on disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kerasflow.errors import UserError
from kerasflow.storeops import metayaml, relocate
from kerasflow.track import store


def _seen_from_another_mount(location: str, root: str) -> str | None:
    """The same folder as this store's, written under another mount point: an experiment created inside
    the devcontainer records /workspace/store/artifacts/<id>, which the host sees as ROOT/<id>. Taken
    only when that folder exists here (it holds the experiment's runs), else None."""
    parts = Path(location).parts
    if store.ARTIFACTS not in parts[:-1]:
        return None
    tail = parts[len(parts) - 1 - parts[::-1].index(store.ARTIFACTS) + 1:]
    candidate = Path(root, *tail)
    return str(candidate) if candidate.is_dir() else None


def proxy_experiment(store_dir: Path, name: str) -> str | None:
    """The experiment's new location when it was rewritten, else None (missing, or proxied already)."""
    db = store_dir / store.DB_FILE
    if not db.is_file():
        return None
    root = str((store_dir / store.ARTIFACTS).resolve())
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ?",
                           (name,)).fetchone()
        if row is None:
            return None
        local = metayaml.as_path(row[1])  # the one parser of stored locations
        if local is None:
            return None  # proxied (or remote) already
        path = str(Path(local[1]).resolve())
        if not relocate._under(path, root):
            path = _seen_from_another_mount(local[1], root) or path
        if not relocate._under(path, root):
            raise UserError(f"experiment '{name}' keeps its artifacts outside the store ({row[1]}): a "
                            "container cannot reach them; use another --experiment for make run")
        new = "mlflow-artifacts:/" + path[len(root):].lstrip("/")
        conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, row[0]))
    return new
