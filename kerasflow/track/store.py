"""Where MLflow data lives, and a fast check that the tracking backend works before any training.

The default store is embedded (no server) and self-contained: ONE folder holds the sqlite database and
every artifact, so copying the folder moves everything:

    store/
      mlflow.db                      runs, params, metrics, tags, inputs, registry (sqlite)
      artifacts/<experiment>/<run_id>/artifacts/...      run artifacts (figures, config, lock, ...)
      artifacts/<experiment>/models/<model_id>/...       logged models (MLflow 3 LoggedModels)
      artifacts/<id>/...             the same, for experiments created through `make server`

`MLFLOW_TRACKING_URI`, when set, wins (an `http://` server, another database, ...).
"""

from __future__ import annotations

import os
import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kerasflow.errors import UserError
from kerasflow.files import can_write

DEFAULT_STORE = "store"
DEFAULT_EXPERIMENT = "kerasflow"
DB_FILE = "mlflow.db"
ARTIFACTS = "artifacts"


def tracking_uri(store: str | Path = DEFAULT_STORE) -> str:
    """MLFLOW_TRACKING_URI if set, else the sqlite database inside the store folder."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(Path(store) / DB_FILE).resolve()}"


@contextmanager
def open_store(store_dir: str | Path = DEFAULT_STORE, *, create: bool = True) -> Iterator[str]:
    """The store's tracking URI, checked (seconds, before anything slow), created when `create`, and
    active for the block (the previous one restored after): every command that opens a store."""
    uri = tracking_uri(store_dir)
    check_backend(uri)
    if create:
        init_sqlite(uri)
    with activated(uri):
        yield uri


@contextmanager
def activated(uri: str) -> Iterator[None]:
    """Make `uri` MLflow's tracking URI for a block, then put back what was there.

    mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ, which would otherwise
    make every later run in the same process (a notebook, the tests, a search) use this store.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def artifact_root(uri: str, experiment: str) -> str | None:
    """Artifact folder for a new experiment in an embedded store (None: let the server decide)."""
    db = sqlite_path(uri)
    if db is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-") or "experiment"
    return str(db.parent / ARTIFACTS / slug)



def mlflow_schema_revisions() -> tuple[set[str], str]:
    """(every schema revision the installed MLflow knows, its head), read from its migration scripts.

    Parsing the files instead of importing mlflow + alembic keeps a check or a relocation at ~0.1 s.
    """
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("MLflow is not installed in this environment: run `make env`")
    versions = Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions"
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        text = script.read_text()
        rev = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.M)
        down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.M)
        if rev:
            revisions.add(rev.group(1))
        if down:
            parents.update(re.findall(r"['\"](\w+)['\"]", down.group(1)))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"cannot tell MLflow's schema head from {versions}: {sorted(heads)}")
    return revisions, heads.pop()


def installed_mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


def check_sqlite_schema(db: Path) -> None:
    """Refuse a database this MLflow cannot use, naming the fix (MLflow's own errors come mid-run)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "alembic_version" not in tables:
                if tables:
                    raise UserError(f"{db} is a sqlite file but not an MLflow store: point the store "
                                    "elsewhere")
                return  # empty database: MLflow creates its tables
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{db} is not a readable sqlite database ({exc}): restore it from a backup "
                        "or use another store") from None
    found = row[0] if row else None
    known, head = mlflow_schema_revisions()
    if found == head:
        return
    if found not in known:
        raise UserError(
            f"store {db} was written by a newer MLflow (schema {found}; MLflow "
            f"{installed_mlflow_version()} here knows up to {head}): use the MLflow version that wrote "
            "it, or upgrade this one"
        )
    raise UserError(
        f"store {db} has an older MLflow schema ({found}, this MLflow needs {head}): back it up, then "
        f"run `mlflow db upgrade sqlite:///{db}`"
    )


def init_sqlite(uri: str) -> None:
    """Create a new store's database with MLflow's Default experiment INSIDE the store folder.

    Left to MLflow, experiment 0 would point at ./mlruns of whatever directory the first run started in.
    """
    db = sqlite_path(uri)
    if db is None or db.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    SqlAlchemyStore(uri, str(db.parent / ARTIFACTS))  # the Default experiment gets artifacts/0


def check_backend(uri: str) -> None:
    """Fail in seconds, before training, when runs could not be recorded."""
    db = sqlite_path(uri)
    if db is not None:
        folder = db.parent
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not can_write(probe):
            raise UserError(f"MLflow store folder {folder} is not writable: fix its permissions or "
                            "choose another with --store DIR")
        if db.exists():
            if not os.access(db, os.W_OK) or not can_write(folder):
                raise UserError(f"MLflow store {db} is read-only: fix its permissions or choose "
                                "another with --store DIR")
            check_sqlite_schema(db)
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                ok = response.status == 200
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}): start it with "
                "`make server`, or fix/unset MLFLOW_TRACKING_URI"
            ) from None
        if not ok:
            raise UserError(f"the MLflow server at {uri} is not healthy: check its log")
