"""Copy a CONSISTENT snapshot of a store that may be in use, from a server or a local path, and relocate.

    python -m kerasflow.storeops.pull SOURCE [DEST]        # `make pull FROM=user@server:path/to/store`

1. The sqlite database is snapshotted ON THE SOURCE SIDE with SQLite's online backup API (a copy of a
   database that another process is writing can be torn; the backup is one consistent state).
2. The snapshot and the artifacts are copied with rsync (over ssh for `host:path`).
3. The copy is relocated to DEST, so its artifacts and models resolve there.

Artifacts are copied after the snapshot, so every artifact the snapshot refers to is there.
A legacy file store has no database: its folders are copied with rsync as they are.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from kerasflow import cli
from kerasflow.errors import UserError
from kerasflow.storeops import relocate
from kerasflow.track import store

# Run by the source's python3: snapshot DB to OUT with the backup API, print the store kind.
SNAPSHOT = """
import os, sqlite3, sys
root, out = sys.argv[1], sys.argv[2]
db = root if os.path.isfile(root) else os.path.join(root, "mlflow.db")
if not os.path.isfile(db):
    print("file" if os.path.isdir(root) else "missing"); sys.exit(0)
src = sqlite3.connect("file:" + db + "?mode=ro", uri=True, timeout=60)
dst = sqlite3.connect(out)
src.backup(dst)
dst.close(); src.close()
print("sqlite")
"""


def split_source(source: str) -> tuple[str | None, str]:
    """`user@host:path` -> (user@host, path); a local path -> (None, path)."""
    match = re.fullmatch(r"([^/:]+):(.+)", source)
    if match and not Path(source).exists():
        return match.group(1), match.group(2)
    return None, source


def _run(args: list[str], what: str) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise UserError(f"{args[0]} is not installed: install it to {what}") from None
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{what} failed ({args[0]} exit {exc.returncode}: {last[0][:200]})") from None
    return out.stdout


def pull(source: str, dest: Path, ssh: str = "ssh") -> relocate.Report:
    host, path = split_source(source)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()) and not (dest / store.DB_FILE).exists():
        raise UserError(f"{dest} is not empty and not a sqlite store: pull into an empty folder")
    rsync_ssh = ["-e", ssh] if host else []
    with tempfile.TemporaryDirectory() as tmp:
        if host:
            remote_tmp = f"/tmp/kerasflow-snapshot-{os.getpid()}.db"
            kind = _snapshot_remote(ssh, host, path, remote_tmp)
        else:
            src = Path(path)
            if not src.exists():
                raise UserError(f"no store at {src}: give the store folder to pull")
            db = src if src.is_file() else src / store.DB_FILE
            kind = "sqlite" if db.is_file() else "file"
            if kind == "sqlite":
                _backup_local(db, Path(tmp) / store.DB_FILE)
        if kind == "missing":
            raise UserError(f"no store at {source}: check the path")
        src_root = path.rstrip("/") + "/"
        if kind == "sqlite":
            snapshot = Path(tmp) / store.DB_FILE
            if host:
                _run(["rsync", "-a", *rsync_ssh, f"{host}:{remote_tmp}", str(snapshot)],
                     "copying the snapshot")
                _run([*shlex.split(ssh), host, "rm", "-f", remote_tmp], "removing the remote snapshot")
            src_artifacts = f"{src_root}{store.ARTIFACTS}/"
            _rsync(host, src_artifacts, dest / store.ARTIFACTS, rsync_ssh)
            shutil.move(snapshot, dest / store.DB_FILE)  # last: a store appears whole or not at all
        else:
            _rsync(host, src_root, dest, rsync_ssh)
    return relocate.relocate(dest)


def _snapshot_remote(ssh: str, host: str, path: str, remote_tmp: str) -> str:
    args = [*shlex.split(ssh), host, "python3", "-c", shlex.quote(SNAPSHOT), shlex.quote(path),
            shlex.quote(remote_tmp)]
    return _run(args, f"snapshot of {host}:{path}").strip().splitlines()[-1]


def _backup_local(db: Path, out: Path) -> None:
    try:
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
        dst = sqlite3.connect(out)
        src.backup(dst)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot snapshot {db} ({exc}): is it a sqlite MLflow store?") from None
    finally:
        dst.close()
        src.close()


def _rsync(host: str | None, src: str, dest: Path, ssh_args: list[str]) -> None:
    if host is None and not Path(src).exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    origin = f"{host}:{src}" if host else src
    if shutil.which("rsync") is None:
        if host:
            raise UserError("rsync is not installed: install it (apt-get install rsync) to pull from "
                            "a server")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return
    _run(["rsync", "-a", *ssh_args, origin, f"{dest}/"], f"copying {origin}")


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("source", help="user@host:path/to/store, or a local store folder")
    p.add_argument("dest", nargs="?", default=store.DEFAULT_STORE, type=Path,
                   help="where the copy goes (default: ./store)")
    p.add_argument("--ssh", default=os.environ.get("KERASFLOW_SSH", "ssh"), help="ssh command (-e of rsync)")
    args = p.parse_args(argv)

    def go() -> None:
        report = pull(args.source, args.dest, args.ssh)
        print(f"pulled {args.source} -> {args.dest}; {report.summary()}")

    return cli.run(go)


if __name__ == "__main__":
    sys.exit(main())
