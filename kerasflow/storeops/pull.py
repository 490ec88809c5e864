"""Copy a CONSISTENT snapshot of a store that may be in use, from a server or a local path, and relocate.

    kerasflow pull SOURCE [DEST]        # `make pull FROM=user@server:path/to/store`

1. The sqlite database is snapshotted ON THE SOURCE SIDE with SQLite's online backup API (a copy of a
   database that another process is writing can be torn; the backup is one consistent state).
2. The snapshot and the artifacts are copied with rsync (over ssh for `host:path`).
3. The copy is relocated to DEST, so its artifacts and models resolve there.

Artifacts are copied after the snapshot, so every artifact the snapshot refers to is there.
A legacy file store has no database: its folders are copied with rsync as they are.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from kerasflow.errors import UserError
from kerasflow.files import atomic_write
from kerasflow.storeops import merge, relocate
from kerasflow.track import store

log = logging.getLogger(__name__)

# Lazy imports: mlflow, inside the functions that use them (seconds to load).

# Run by the source's python3 (any version): find the store (`~` expanded there), refuse what is not
# one, snapshot its database with the backup API into a private mkdtemp folder (mode 700), and print
# one JSON line: {"kind": sqlite|file|missing|other, "root": absolute store path, "tmp": snapshot dir}.
SNAPSHOT = """
import json, os, pathlib, sqlite3, sys, tempfile
DB_FILE = __DB_FILE__
root = os.path.abspath(os.path.expanduser(sys.argv[1]))
out = {"root": root, "tmp": None}
db = root if os.path.isfile(root) else os.path.join(root, DB_FILE)
def file_store(p):
    return any(os.path.isfile(os.path.join(p, d, "meta.yaml")) for d in os.listdir(p) if d.isdigit())
if os.path.isfile(db):
    out["kind"] = "sqlite"
    out["tmp"] = tempfile.mkdtemp(prefix="kerasflow-snapshot-")
    try:
        src = sqlite3.connect(pathlib.Path(db).as_uri() + "?mode=ro", uri=True, timeout=60)
        dst = sqlite3.connect(os.path.join(out["tmp"], DB_FILE))
        src.backup(dst)
        dst.close(); src.close()
    except Exception as exc:
        out["kind"], out["error"] = "other", str(exc)
elif not os.path.isdir(root):
    out["kind"] = "missing"
elif file_store(root):
    out["kind"] = "file"
elif os.path.isdir(os.path.join(root, "mlruns")) and file_store(os.path.join(root, "mlruns")):
    out["kind"], out["root"] = "file", os.path.join(root, "mlruns")
else:
    out["kind"] = "other"
print(json.dumps(out))
""".replace("__DB_FILE__", repr(store.DB_FILE))  # the store layout's one name, templated in

MARKER = ".kerasflow-pull.json"  # in a pulled store: where it came from, and whether the pull completed


def split_source(source: str) -> tuple[str | None, str]:
    """`user@host:path` -> (user@host, path); a local path -> (None, path)."""
    match = re.fullmatch(r"([^/:]+):(.+)", source)
    if match and not Path(source).exists():
        if match.group(1).startswith("-"):
            raise UserError(f"host '{match.group(1)}' starts with '-' (ssh would read it as an option): "
                            "give user@host:path")
        return match.group(1), match.group(2)
    return None, source


def first_error(text: str) -> str:
    """The first line that names the problem (rsync and ssh end with a generic summary line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    real = [line for line in lines if not line.startswith("rsync error:")] or lines or ["no output"]
    return real[0][:300]


def _run(args: list[str], what: str) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise UserError(f"{args[0]} is not installed: install it to {what}") from None
    except subprocess.CalledProcessError as exc:
        raise UserError(f"{what} failed ({args[0]} exit {exc.returncode}: "
                        f"{first_error(exc.stderr or exc.stdout or '')})") from None
    return out.stdout


def _pulled_from(dest: Path) -> str | None:
    try:
        return json.loads((dest / MARKER).read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def make_room(dest: Path, source: str, force: bool) -> Path | None:
    """Refuse to replace a store that holds other runs; with `force`, move it aside first (returned)."""
    if not dest.exists():
        return None
    if not dest.is_dir():
        raise UserError(f"{dest} is a file: give a folder for the pulled store")
    if not any(dest.iterdir()) or _pulled_from(dest) == source:
        return None  # empty, or an earlier (maybe interrupted) pull of the same source: update it
    if not force:
        what = "another store" if (dest / store.DB_FILE).exists() else "other files"
        raise UserError(f"{dest} holds {what} that this pull would replace: pull into another folder "
                        "(make pull STORE=path/new), or pass --force to keep it as a timestamped backup")
    backup = dest.with_name(f"{dest.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
    dest.rename(backup)
    return backup


def pull(source: str, dest: Path, ssh: str = "ssh", force: bool = False) -> relocate.Report:
    host, path = split_source(source)
    ssh_cmd = [*shlex.split(ssh), "--", host] if host else []
    if host:
        info = json.loads(_run([*ssh_cmd, "python3", "-c", shlex.quote(SNAPSHOT), shlex.quote(path)],
                               f"reading the store at {host}:{path}").strip().splitlines()[-1])
    else:
        info = _local_info(Path(path))
    try:
        if info["kind"] == "missing":
            raise UserError(f"no store at {source}: check the path")
        if info["kind"] != "sqlite" and info["kind"] != "file":
            why = f": {info['error']}" if info.get("error") else ""
            raise UserError(f"{source} is not an MLflow store (no {store.DB_FILE}, no <experiment "
                            f"id>/meta.yaml){why}: give the store folder")
        dest.absolute().parent.mkdir(parents=True, exist_ok=True)
        with store.operation_lock(dest):  # a second pull (or a relocation, `make ui`) into dest waits
            _recover(dest)
            if _updates(dest, source):
                return _pull_merged(host, ssh, info, source, dest)
            backup = make_room(dest, source, force)
            if backup is not None:
                log.info(f"kept the store that was at {dest} as {backup}")
            dest.mkdir(parents=True, exist_ok=True)
            atomic_write(dest / MARKER, json.dumps({"source": source, "complete": False}))
            _copy(host, ssh, info, dest)
            report = relocate.relocate(dest)
            atomic_write(dest / MARKER, json.dumps({"source": source, "complete": True}))
    finally:
        if host and info.get("tmp"):
            subprocess.run([*ssh_cmd, "rm", "-rf", "--", shlex.quote(info["tmp"])], capture_output=True)
        elif info.get("tmp"):
            shutil.rmtree(info["tmp"], ignore_errors=True)
    return report


def _aside(dest: Path, what: str) -> Path:
    return dest.with_name(f".{dest.name}.pull-{what}")


def _updates(dest: Path, source: str) -> bool:
    """A complete earlier pull of the same source, with a database: the pull merges instead."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    complete = marker.get("source") == source and marker.get("complete") is True
    return complete and (dest / store.DB_FILE).is_file()


def _recover(dest: Path) -> None:
    """Finish or undo what a killed merging pull left: its old store put back, or (once the new one is
    in place) its relocation completed and the old one removed."""
    old, new = _aside(dest, "old"), _aside(dest, "new")
    if old.exists() and not dest.exists():
        os.rename(old, dest)
    elif old.exists():
        relocate.relocate(dest)
        atomic_write(dest / MARKER, json.dumps({**json.loads((dest / MARKER).read_text()), "complete": True}))
        shutil.rmtree(old)
    shutil.rmtree(new, ignore_errors=True)


def _pull_merged(host: str | None, ssh: str, info: dict, source: str, dest: Path) -> relocate.Report:
    """Pull the same source again without losing what was done here since: the new snapshot is made
    beside the store, the local store is merged into it (runs logged here, tags and aliases set here;
    storeops.merge), then it takes the store's place. Before, a re-pull replaced the store: local runs,
    their experiment and aliases set with `make promote` were gone, with no backup."""
    import mlflow

    new, old = _aside(dest, "new"), _aside(dest, "old")
    new.mkdir()
    atomic_write(new / MARKER, json.dumps({"source": source, "complete": False}))
    _copy(host, ssh, info, new)
    relocate.relocate(new)
    local_uri, new_uri = (store.sqlite_uri(folder / store.DB_FILE) for folder in (dest, new))
    with store.activated(new_uri):
        local, fresh = mlflow.MlflowClient(tracking_uri=local_uri), mlflow.MlflowClient(tracking_uri=new_uri)
        kept = merge.merge(local, fresh, new_uri, label="this store before the pull", src_uri=local_uri)
    log.info(f"kept what this store had that the source has not: {kept.summary()}")
    os.rename(dest, old)  # a kill from here on is finished by the next pull (_recover)
    os.rename(new, dest)
    report = relocate.relocate(dest)
    atomic_write(dest / MARKER, json.dumps({"source": source, "complete": True}))
    shutil.rmtree(old)
    return report


def _local_info(src: Path) -> dict:
    if not src.exists():
        return {"kind": "missing"}
    kind, found = store.kind(src)  # refuses what is not a store, naming it
    info = {"kind": kind, "root": str(found.parent if kind == "sqlite" else found), "tmp": None}
    if kind == "sqlite":
        info["tmp"] = tempfile.mkdtemp(prefix="kerasflow-snapshot-")
        _backup_local(found, Path(info["tmp"]) / store.DB_FILE)
    return info


def _copy(host: str | None, ssh: str, info: dict, dest: Path) -> None:
    """Artifacts first, the database snapshot last: a store appears whole or not at all."""
    rsync_ssh = ["-e", ssh] if host else []
    src_root = info["root"].rstrip("/") + "/"
    if info["kind"] == "file":
        _rsync(host, src_root, dest, rsync_ssh)
        return
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pull-") as tmp:
        snapshot = Path(tmp) / store.DB_FILE
        if host:
            _run(["rsync", "-a", *rsync_ssh, "--", f"{host}:{info['tmp']}/{store.DB_FILE}", str(snapshot)],
                 "copying the snapshot")
        else:
            shutil.copy2(Path(info["tmp"]) / store.DB_FILE, snapshot)
        _rsync(host, f"{src_root}{store.ARTIFACTS}/", dest / store.ARTIFACTS, rsync_ssh)
        os.replace(snapshot, dest / store.DB_FILE)


def _backup_local(db: Path, out: Path) -> None:
    src = dst = None
    try:
        src = sqlite3.connect(store.readonly_uri(db), uri=True, timeout=60)
        dst = sqlite3.connect(out)
        src.backup(dst)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot snapshot {db} ({exc}): is it a sqlite MLflow store?") from None
    finally:
        for conn in (dst, src):
            if conn is not None:
                conn.close()


def _rsync(host: str | None, src: str, dest: Path, ssh_args: list[str]) -> None:
    if host is None and not Path(src).exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    origin = f"{host}:{src}" if host else src
    if shutil.which("rsync") is None:
        if host:
            raise UserError("rsync is not installed: install it (apt-get install rsync) to pull from "
                            "a server")
        shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True)
        return
    _run(["rsync", "-a", *ssh_args, "--", origin, f"{dest}/"], f"copying {origin}")
