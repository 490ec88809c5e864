"""Make a copied MLflow store work where it now is, by rewriting its ABSOLUTE artifact locations.

    kerasflow relocate STORE [--from OLD] [--to NEW] [--dry-run] [--check]

MLflow records where artifacts live as absolute paths; after an rsync to another machine or folder the
UI shows no artifacts and models do not load, silently (mlflow#3144). This rewrites exactly the fields
that hold those locations and nothing else:

- sqlite store (STORE/mlflow.db, or the .db file): experiments.artifact_location, runs.artifact_uri,
  logged_models.artifact_location, model_versions.storage_location and .source (when a path), trace tag
  mlflow.artifactLocation; in ONE transaction.
- legacy file store (STORE/<experiment id>/meta.yaml): the artifact_location / artifact_uri /
  storage_location / source line of experiment, run, logged-model and registry version meta.yaml files;
  every file is written to a temp file and renamed, so a crash leaves each file old or new and a rerun
  completes. Other meta.yaml files (run outputs, registered models) hold no paths and are not touched.

`mlflow-artifacts:/` (proxied) and remote (s3://, ...) locations are left alone and counted. The old
prefix is detected from the stored locations; the new one is the store's folder. Idempotent.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from kerasflow.errors import UserError
from kerasflow.files import atomic_write, can_write, leftover_temps
from kerasflow.storeops import metayaml
from kerasflow.track import store as store_layout  # `store` is every function's parameter here


@dataclass
class Report:
    """What a relocation found and did, per kind of record."""

    kind: str
    old: str | None = None
    new: str | None = None
    changed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # proxied / remote locations
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        parts = ", ".join(f"{self.changed[k]} {k}" for k in ("experiments", "runs", "models",
                                                             "versions", "traces"))
        text = f"{self.kind} store: {verb} {parts}"
        if self.old and self.changed.total():
            text += f" ({self.old} -> {self.new})"
        if self.skipped:
            text += "; left alone: " + ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
        return text


# --- locations: plain paths and file:// URIs --------------------------------------------------------

def _classify(value: str) -> str:
    if metayaml.as_path(value) is not None:
        return "local"
    if value.startswith("mlflow-artifacts:"):
        return "proxied"
    if value.startswith(("models:/", "runs:/")):
        return "reference"
    return "remote"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _moved(value: str, old: str, new: str) -> str | None:
    local = metayaml.as_path(value)
    if local is None:
        return None
    form, path = local
    if not _under(path, old) or (_under(new, old) and _under(path, new)):  # not ours, or already moved
        return None
    result = new.rstrip("/") + path[len(old.rstrip("/")):]
    return form + result if result != path else None


def detect_old_prefix(locations: list[str], new: Path) -> str | None:
    """The prefix that, swapped for `new`, makes the most stored locations exist (None: nothing to do)."""
    votes: Counter[str] = Counter()
    new_s = str(new).rstrip("/")
    for value in locations:
        local = metayaml.as_path(value)
        if local is None or _under(local[1], new_s):
            continue
        path = local[1]
        # Nearly every location shares one prefix: try those already found before walking the parts.
        known = next((p for p, _ in votes.most_common(3) if _under(path, p)
                      and os.path.exists(new_s + path[len(p.rstrip("/")):])), None)
        if known is not None:
            votes[known] += 1
            continue
        parts = Path(path).parts
        for k in range(1, len(parts)):
            if (new.joinpath(*parts[k:])).exists():
                votes[str(Path(*parts[:k]))] += 1
                break
    return votes.most_common(1)[0][0] if votes else None


# --- sqlite ----------------------------------------------------------------------------------------

SQL_FIELDS = [  # (report key, table, column, row filter)
    ("experiments", "experiments", "artifact_location", ""),
    ("runs", "runs", "artifact_uri", ""),
    ("models", "logged_models", "artifact_location", ""),
    ("versions", "model_versions", "storage_location", ""),
    ("versions", "model_versions", "source", ""),
    ("traces", "trace_tags", "value", "key = 'mlflow.artifactLocation'"),
]


def _sqlite_values(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, Any, str]]:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    rows = []
    for key, table, column, where in SQL_FIELDS:
        if table not in tables:
            continue
        sql = f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL"  # noqa: S608 - names from SQL_FIELDS
        if where:
            sql += f" AND {where}"
        rows += [(key, table, column, where, rowid, value) for rowid, value in conn.execute(sql)]
    return rows


def relocate_sqlite(db: Path, old: str | None, new: Path, dry_run: bool) -> Report:
    store_layout.check_sqlite_schema(db)  # corrupt / foreign / newer-schema databases stop here
    report = Report("sqlite", dry_run=dry_run)
    if not dry_run and (not os.access(db, os.W_OK) or not can_write(db.parent)):
        raise UserError(f"store {db} is read-only: copy it somewhere writable, or fix its permissions")
    try:
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # one writer; readers see all of it or none of it
    except sqlite3.OperationalError as exc:
        raise UserError(f"cannot open {db} for writing ({exc}): is it read-only or locked?") from None
    try:
        rows = _sqlite_values(conn)
        report.old, report.new = _resolve_prefixes([r[5] for r in rows], old, new)
        updates: dict[str, list[tuple[str, Any]]] = {}
        for key, table, column, _, rowid, value in rows:
            moved = _relocated(report, key, value)
            if moved is not None:
                updates.setdefault(f"{table}.{column}", []).append((moved, rowid))
                report.changed[key] += 1
        for target, pairs in updates.items():
            table, column = target.split(".")
            conn.executemany(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", pairs)  # noqa: S608 - names from SQL_FIELDS, values bound
        conn.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return report


# --- legacy file store -----------------------------------------------------------------------------

FILE_KEYS = {"experiments": ("artifact_location",), "runs": ("artifact_uri",),
             "models": ("artifact_location",), "versions": ("storage_location", "source")}


def _meta_files(root: Path) -> list[tuple[str, Path]]:
    """The meta.yaml files that hold artifact locations, by kind (and nothing else)."""
    out: list[tuple[str, Path]] = []
    exp_dirs = [p for p in root.iterdir() if _real_dir(p) and p.name.isdigit()]
    trash = root / ".trash"
    if _real_dir(trash):
        exp_dirs += [p for p in trash.iterdir() if _real_dir(p)]
    for exp in exp_dirs:
        if _real_file(exp / "meta.yaml"):
            out.append(("experiments", exp / "meta.yaml"))
        with os.scandir(exp) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False) or entry.name in ("tags", "datasets", "traces"):
                    continue
                if entry.name == "models":
                    out += [("models", m / "meta.yaml") for m in Path(entry.path).iterdir()
                            if _real_dir(m) and _real_file(m / "meta.yaml")]
                elif _real_file(Path(entry.path) / "meta.yaml"):
                    out.append(("runs", Path(entry.path) / "meta.yaml"))
    registry = root / "models"
    if _real_dir(registry):
        out += [("versions", v / "meta.yaml") for m in registry.iterdir() if _real_dir(m)
                for v in m.iterdir() if v.name.startswith("version-") and _real_dir(v)
                and _real_file(v / "meta.yaml")]
    return out


# A copied store is data from another machine: a symlink in it may point anywhere on this one, so
# relocation neither reads nor writes through one.
def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _real_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _read_meta(path: Path, keys: tuple[str, ...]) -> tuple[str, dict[str, str]]:

    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    fast = metayaml.fast_meta(text, keys)
    if fast is not None:
        return text, fast
    try:
        data = yaml.load(text, Loader=metayaml.yaml_loader())  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: restore it from the source store") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not an MLflow meta.yaml (not a mapping): restore it")
    return text, {k: data[k] for k in keys if isinstance(data.get(k), str)}


def _write_all(plan: list[tuple[Path, str]]) -> None:
    """Write the planned files; creating and syncing files is kernel time, so a few threads overlap it."""

    bar = _progress(plan, "writing")  # a tqdm bar on a terminal, else the plan itself
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in pool.map(lambda item: atomic_write(*item, sync_folder=False), plan):
                if bar is not plan:
                    bar.update(1)
    finally:
        if bar is not plan:
            bar.close()


def relocate_files(root: Path, old: str | None, new: Path, dry_run: bool) -> Report:
    report = Report("file", dry_run=dry_run)
    files = _meta_files(root)
    for _, path in files:  # a temp file left by a killed earlier run: its rename never happened
        for stale in [] if dry_run else leftover_temps(path):
            stale.unlink(missing_ok=True)
    parsed = [(kind, path, *_read_meta(path, FILE_KEYS[kind])) for kind, path in _progress(files, "reading")]
    report.old, report.new = _resolve_prefixes([v for *_, values in parsed for v in values.values()],
                                               old, new)
    if not dry_run and not can_write(root):
        raise UserError(f"store {root} is read-only: copy it somewhere writable, or fix its permissions")
    plan: list[tuple[Path, str]] = []
    for kind, path, text, values in parsed:
        new_text = text
        for key, value in values.items():
            moved = _relocated(report, kind, value)
            if moved is not None:
                new_text = metayaml.replace_line(new_text, key, moved)
        if new_text != text:
            plan.append((path, new_text))
            report.changed[kind] += 1
    if not dry_run:
        unwritable = [p for p, _ in plan if not os.access(p, os.W_OK)]
        if unwritable:
            raise UserError(f"{unwritable[0]} is read-only: fix the store's permissions; nothing was changed")
        _write_all(plan)
    return report


# --- shared ----------------------------------------------------------------------------------------

def _relocated(report: Report, label: str, value: str) -> str | None:
    """Where `value` moves to, or None: a proxied/remote location is counted as skipped under `label`,
    one outside the old prefix stays."""
    kind = _classify(value)
    if kind in ("proxied", "remote"):
        report.skipped[f"{kind} {label}"] += 1
        return None
    return _moved(value, report.old, report.new) if report.old else None


def _resolve_prefixes(values: list[str], old: str | None, new: Path) -> tuple[str | None, str]:
    new_s = str(new)
    locals_ = [p for v in values if (p := metayaml.as_path(v)) is not None]
    if old is not None:
        old = old[len("file://"):] if old.startswith("file://") else old
        old = old.strip()
        if not old.startswith("/") or not old.rstrip("/"):
            raise UserError(f"--from {old!r} is not the store's old folder: give the absolute path the "
                            "store had (e.g. /home/me/project/store), not '/' or an empty or relative one")
        old = old.rstrip("/")
        if not any(_under(path, old) or _under(path, new_s) for _, path in locals_):
            sample = next((path for _, path in locals_), "none")
            raise UserError(f"--from {old} matches no stored location (e.g. {sample}): check the old path")
        return old, new_s
    return detect_old_prefix(values, new), new_s


def stored_locations(store: Path) -> list[tuple[str, str]]:
    """(kind, location) of every run, logged model, model version and trace in the store."""
    kind, path = store_layout.kind(store)
    if kind == "sqlite":
        store_layout.check_sqlite_schema(path)
        with sqlite3.connect(store_layout.readonly_uri(path), uri=True, timeout=30) as conn:
            return [(r[0], r[5]) for r in _sqlite_values(conn)]
    return [(k, v) for k, p in _meta_files(path) for v in _read_meta(p, FILE_KEYS[k])[1].values()]


def check(store: Path) -> tuple[int, list[str]]:
    """Local artifact locations that point nowhere: MLflow shows such runs with no artifacts, silently.

    A missing folder INSIDE the store is a run that never logged an artifact (MLflow creates the folder
    with the first one); a missing location outside the store is what a move leaves behind.
    Experiments are not checked: MLflow creates an experiment's folder with its first run.
    """
    kind, path = store_layout.kind(store)
    root = str((path.parent if kind == "sqlite" else path).absolute())
    values = [v for k, v in stored_locations(store) if k != "experiments"]
    local = [(v, p[1]) for v in values if (p := metayaml.as_path(v)) is not None]
    return len(local), [v for v, p in local if not _under(p, root) and not Path(p).exists()]


def outside(store: Path) -> list[str]:
    """Local artifact locations outside the store's folder. In a store from another machine such a
    location makes MLflow read and write wherever it points on this one: /etc, a home folder, ..."""
    kind, path = store_layout.kind(store)
    root = str((path.parent if kind == "sqlite" else path).absolute())
    local = [(v, p[1]) for _, v in stored_locations(store) if (p := metayaml.as_path(v)) is not None]
    return [v for v, p in local if not _under(p, root)]


def _progress(items: list[Any], what: str) -> Any:
    if len(items) < 2000 or not sys.stderr.isatty():
        return items

    return tqdm(items, desc=what, unit="file", file=sys.stderr)


def relocate(store: Path, old: str | None = None, to: Path | None = None, dry_run: bool = False) -> Report:
    """Rewrite the store's artifact locations from `old` (detected) to `to` (the store's folder), under
    the store's operation lock."""
    store_layout.kind(store)  # not a store: its one line, before a lock file is made beside it
    with store_layout.operation_lock(store):
        kind, path = store_layout.kind(store)
        root = path.parent if kind == "sqlite" else path
        new = (to or root).absolute()
        if kind == "sqlite":
            return relocate_sqlite(path, old, new, dry_run)
        return relocate_files(root, old, new, dry_run)
