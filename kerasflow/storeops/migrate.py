"""Move a legacy file store (mlruns/) onto sqlite, which MLflow 3 needs for its newer features.

    kerasflow migrate MLRUNS [--db PATH]   # default db: next to mlruns/ (../mlflow.db)

`mlflow migrate-filestore` copies artifact locations verbatim and aborts with a UNIQUE constraint error
on stores where MLflow 3's log_model re-logged step-0 metrics (duplicate lines in <run>/metrics/<key>).
So: relocate the file store to where it is now, drop exact duplicate metric lines, migrate, then check
that every artifact location of the new database exists. Artifacts stay where they are (mlruns/).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kerasflow.errors import UserError
from kerasflow.files import atomic_write, fsync_file
from kerasflow.storeops import relocate
from kerasflow.track import store


def dedupe_metrics(root: Path) -> int:
    """Remove exact duplicate lines from every run's and logged model's metric files; count them."""
    removed = 0
    for metrics_dir in [*root.glob("*/*/metrics"), *root.glob("*/models/*/metrics")]:
        for path in metrics_dir.rglob("*"):
            if not path.is_file():
                continue
            lines = path.read_text().splitlines(keepends=True)
            unique = list(dict.fromkeys(lines))
            if len(unique) != len(lines):
                removed += len(lines) - len(unique)
                atomic_write(path, "".join(unique))
    return removed


def migrate(source: Path, db: Path | None = None) -> tuple[Path, int, relocate.Report]:
    kind, root = store.kind(source)
    if kind != "file":
        raise UserError(f"{source} is already a sqlite store: nothing to migrate")
    db = (db or root.parent / store.DB_FILE).absolute()
    if db.exists():
        raise UserError(f"{db} already exists: pass --db NEW_PATH (migration never overwrites a database)")
    relocate.relocate(root)
    removed = dedupe_metrics(root)
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    # Built under a temporary name and renamed when complete: an interrupted migration leaves no
    # partial mlflow.db that would block the rerun (the temp file is removed, or replaced next time).
    tmp = db.with_name(f".{db.name}.migrating")
    tmp.unlink(missing_ok=True)
    try:
        result = subprocess.run([str(mlflow_bin), "migrate-filestore", "--source", str(root), "--target",
                                 store.sqlite_uri(tmp), "--no-progress"], capture_output=True, text=True,
                                env=env, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            cause = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
            raise UserError(f"mlflow migrate-filestore failed: {cause[:300]}")
        report = relocate.relocate(tmp)
        fsync_file(tmp)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)
    return db, removed, report
