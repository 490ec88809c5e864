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

import contextlib
import importlib.util
import logging
import os
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

from kerasflow import urlauth
from kerasflow.errors import UserError
from kerasflow.files import can_write, exclusive, fsync_file
from kerasflow.track import orphans

log = logging.getLogger(__name__)

# Lazy imports: mlflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

DEFAULT_STORE = "store"
DEFAULT_EXPERIMENT = "kerasflow"
DB_FILE = "mlflow.db"
ARTIFACTS = "artifacts"
PORT_FILE = "server-port"  # the port this store's server got when it first started (storeops/server.py)


def tracking_uri(store: str | Path = DEFAULT_STORE) -> str:
    """MLFLOW_TRACKING_URI if set (its user:password moved to MLflow's credential variables), else the
    sqlite database inside the store folder."""
    env = urlauth.tracking_uri_from_env()
    if env:
        return env
    return sqlite_uri(Path(store) / DB_FILE)


# Characters SQLAlchemy reads as URL syntax in `sqlite:///PATH` ('?' starts a query, '%XX' is decoded):
# such a path would open a different, new, empty database, so it is refused instead.
URL_SYNTAX = ("?", "%", "#")


def sqlite_uri(db: str | Path) -> str:
    """`sqlite:///ABSOLUTE` for MLflow/SQLAlchemy, refusing paths it would read as something else."""
    path = Path(db).resolve()
    bad = [c for c in URL_SYNTAX if c in str(path)]
    if bad:
        raise UserError(f"store path {path} holds {' '.join(repr(c) for c in bad)}, which a database URL "
                        "reads as syntax: move or rename the store folder without it")
    if len(os.fsencode(path)) > SQLITE_MAX_PATH:  # MLflow retried opening it for 100 s, then a traceback
        raise UserError(f"store path {str(path)[:60]}... is {len(os.fsencode(path))} bytes long; SQLite "
                        f"opens paths of up to {SQLITE_MAX_PATH}: use a store folder with a shorter path")
    return f"sqlite:///{path}"


SQLITE_MAX_PATH = 504  # SQLite's unix VFS: MAX_PATHNAME 512, less its "-journal" suffix (tried: 505 fails)


def readonly_uri(db: str | Path) -> str:
    """SQLite `file:` URI that opens exactly `db`, read-only (as_uri quotes '?', '#', '%', spaces)."""
    return Path(db).resolve().as_uri() + "?mode=ro"


@contextmanager
def open_store(store_dir: str | Path = DEFAULT_STORE, *, create: bool = True,
               write: bool = True) -> Iterator[str]:
    """The store's tracking URI, checked (seconds, before anything slow), created when `create` (else it
    must exist), and active for the block (the previous one restored after): every command that opens
    a store. `write=False` (listing, looking, copying from it): a store one may only read is fine."""
    uri = tracking_uri(store_dir)
    check_backend(uri, write=write)
    db = sqlite_path(uri)
    if db is not None:
        proxied_artifacts_in_the_store()
    if create:
        init_sqlite(uri)
    elif db is not None and not db.is_file():  # a typo'd STORE would otherwise become a new, empty store
        raise UserError(f"no MLflow store at {Path(store_dir)} (no {DB_FILE}): check STORE=/--store; runs "
                        "are written there by `make track` or `make run`")
    if db is None and not uri.startswith(("http://", "https://")):
        _probe(uri)
    with activated(uri):
        _close_orphans()
        yield uri


def _probe(uri: str) -> None:
    """A database URL or another backend MLflow opens itself: opened once here, so that a wrong one (no
    driver, no server, a file store MLflow no longer opens) is one line, not a traceback at first use."""
    import mlflow

    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure to open it is the user's URI to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"the tracking store {urlauth.redact(uri)} cannot be opened ({first}): fix or unset "
                        "MLFLOW_TRACKING_URI") from None


def _close_orphans() -> None:
    """Runs a gone process of this machine left RUNNING end FAILED (track.orphans); a store this command
    cannot write to (a pulled, read-only one) keeps them as they are."""
    import mlflow

    try:
        orphans.close(mlflow.MlflowClient())
    except Exception as exc:  # noqa: BLE001 - reading or listing must not fail for this
        log.warning(f"runs left RUNNING by gone processes could not be marked FAILED "
                    f"({str(exc).splitlines()[0][:150]})")


def proxied_artifacts_in_the_store() -> None:
    """Let a store opened directly read and write the runs a server made in it.

    A store serves two kinds of runs: embedded ones (`make track`: plain artifact paths) and runs
    logged through its server (`make run`, `make server`: `mlflow-artifacts:/<path>`, which the server
    keeps in STORE/artifacts/<path>). MLflow resolves `mlflow-artifacts:` only through an HTTP server,
    so `make analyze`/`serve`/`promote`, or `make track` into an experiment the server created, died on
    such runs. Here they resolve to that same folder whenever the tracking URI is this sqlite store;
    with an http(s) tracking URI MLflow's own repository is used, unchanged.
    """
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
    from mlflow.tracking import get_tracking_uri

    def repository(artifact_uri: str, tracking_uri: str | None = None,
                   registry_uri: str | None = None) -> Any:
        db = sqlite_path(tracking_uri or get_tracking_uri())
        if db is None:
            return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri,
                                             registry_uri=registry_uri)
        relative = urllib.parse.urlparse(artifact_uri).path.lstrip("/")
        local = (db.parent / ARTIFACTS / relative).as_uri()
        return LocalArtifactRepository(local, tracking_uri=tracking_uri, registry_uri=registry_uri)

    _artifact_repository_registry.register("mlflow-artifacts", repository)


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
    # one plain folder name under artifacts/: no '/', and no '.' or '..' (an experiment named '..' had
    # its runs' files in the store's own folder, beside mlflow.db)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-").lstrip(".") or "experiment"
    return str(db.parent / ARTIFACTS / slug)



def mlflow_schema_revisions() -> tuple[set[str], str]:
    """(every schema revision the installed MLflow knows, its head), read from its migration scripts.

    Parsing the files instead of importing mlflow + alembic keeps a check or a relocation at ~0.1 s.
    """

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

    return version("mlflow")


def check_sqlite_schema(db: Path) -> None:
    """Refuse a database this MLflow cannot use, naming the fix (MLflow's own errors come mid-run)."""
    try:
        with sqlite3.connect(readonly_uri(db), uri=True, timeout=30) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if any(t.startswith("_alembic_tmp_") for t in tables):
                raise UserError(f"store {db} was left half-migrated by a crashed MLflow (tables "
                                "_alembic_tmp_*): restore it from a backup, or move it away and start a new "
                                "store")
            if "alembic_version" not in tables:
                if tables:
                    raise UserError(f"{db} is a sqlite file but not an MLflow store: point the store "
                                    "elsewhere")
                return  # empty database: MLflow creates its tables
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise UserError(f"store {db} is locked by another process for more than 30 s (a long "
                            "write or a stuck process): wait and retry, or stop that process") from None
        raise UserError(f"{db} is not a readable sqlite database ({exc}): restore it from a backup "
                        "or use another store") from None
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
    Serialised by a lock file in the store folder, and built under a temporary name then renamed:
    MLflow's own first migration, run by several processes at once (4 `make track` on a new store),
    crashes and leaves a half-migrated database that nothing can open again.
    """
    db = sqlite_path(uri)
    if db is None or db.exists():
        return

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(db.parent / f".{db.name}.lock"):  # freed when the process dies, however it dies
        if db.exists():
            return  # another process made it while this one waited
        tmp = db.with_name(f".{db.name}.new-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            created = SqlAlchemyStore(sqlite_uri(tmp), str(db.parent / ARTIFACTS))  # Default -> artifacts/0
            created.engine.dispose()
            fsync_file(tmp)
            os.replace(tmp, db)
        finally:
            tmp.unlink(missing_ok=True)


def check_backend(uri: str, *, choose: str = "--store DIR", write: bool = True) -> None:
    """Fail in seconds, before training, when runs could not be recorded; `choose`: how the caller's
    command names another store (push writes to `--to DEST`, the server takes a folder argument);
    `write=False`: a store one may only read passes (its schema is still checked)."""
    db = sqlite_path(uri)
    if db is not None:
        _check_sqlite(db, choose, write)
        return
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        return
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", uri)  # `models:/x` is a URI too, not a folder
    scheme = found[1].split("+")[0].lower() if found else ""
    if scheme and scheme not in OTHER_BACKENDS:
        raise UserError(f"tracking URI {urlauth.redact(uri)} is neither an http(s) server nor a sqlite "
                        "database: set MLFLOW_TRACKING_URI=http://HOST:PORT, or unset it to use ./store")


def _check_sqlite(db: Path, choose: str, write: bool) -> None:
    """check_backend's part for an embedded store (see there)."""
    if not write:
        if db.is_file():
            check_sqlite_schema(db)
        return
    folder = db.parent
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == folder else f"is inside a file ({probe})"
        raise UserError(f"MLflow store {folder} {where}: a store is a folder; choose one with {choose}")
    if not can_write(probe):
        raise UserError(f"MLflow store folder {folder} is not writable: fix its permissions or "
                        f"choose another with {choose}")
    if db.exists():
        if not os.access(db, os.W_OK) or not can_write(folder):
            raise UserError(f"MLflow store {db} is read-only: fix its permissions or choose "
                            f"another with {choose}")
        check_sqlite_schema(db)


# Database backends MLflow opens itself (SQLAlchemy URLs, a file store, Databricks).
OTHER_BACKENDS = ("postgresql", "mysql", "mssql", "file", "databricks")


def check_server(uri: str) -> None:
    """The server answers, is an MLflow server, and accepts our login: MLflow itself would fail only at
    the first log call, after the slow data load."""
    clean, _, _ = urlauth.split_credentials(uri)
    shown = urlauth.redact(uri)
    base = clean.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:  # noqa: S310 - http(s): checked by check_backend
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot reach the MLflow tracking server at {shown} ({reason}): start it with "
            "`make server`, or fix/unset MLFLOW_TRACKING_URI"
        ) from None
    api = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1",  # noqa: S310
                                 headers=urlauth.basic_auth_header())
    try:
        with urllib.request.urlopen(api, timeout=10) as response:  # noqa: S310 - same URL
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise UserError(f"the MLflow server at {shown} refused the login (HTTP {exc.code}): set "
                            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        raise UserError(f"{shown} answered HTTP {exc.code} to MLflow's API: is it an MLflow server? "
                        "fix MLFLOW_TRACKING_URI") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"the MLflow server at {shown} did not answer its API ({exc}): check its "
                        "log") from None


def kind(store: Path) -> tuple[str, Path]:
    """('sqlite', db file) or ('file', root folder); refuses anything else with the reason."""
    if store.is_file():
        with open(store, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise UserError(f"{store} is not a sqlite database: give an MLflow store folder or .db file")
        return "sqlite", store
    if not store.is_dir():
        raise UserError(f"no MLflow store at {store}: give the folder you copied (e.g. ./store)")
    if (store / DB_FILE).is_file():
        return "sqlite", store / DB_FILE
    if any((p / "meta.yaml").is_file() for p in store.iterdir() if p.is_dir() and p.name.isdigit()):
        return "file", store
    if (store / "mlruns").is_dir() and any(
            (p / "meta.yaml").is_file() for p in (store / "mlruns").iterdir() if p.is_dir()):
        return "file", store / "mlruns"
    if not any(store.iterdir()):
        raise UserError(f"{store} is empty: copy the store into it first (e.g. make pull FROM=...)")
    raise UserError(
        f"{store} is not an MLflow store (no {DB_FILE}, no <experiment id>/meta.yaml): point at the "
        "store folder"
    )


def locate(store: Path) -> tuple[str, Path]:
    """`kind`, where a missing or empty folder is a new sqlite store (what a server creates there); a
    folder that holds only the port its server will use is still empty."""
    if not store.exists() or (store.is_dir() and not any(p.name != PORT_FILE for p in store.iterdir())):
        return "sqlite", store / DB_FILE
    return kind(store)


def operation_lock(store: Path) -> contextlib.AbstractContextManager[bool]:
    """Whole-store operations one at a time: relocation (also the one `make ui` does first) and a pull
    into the store. Two at once crashed both (one deleted the other's temp files) and left runs with old
    paths; now the second waits, then finds nothing to do. The lock file sits beside the store folder
    (`.NAME.kerasflow-lock`), so it exists before a pull creates the store and stays when a pull moves
    an old store aside."""
    folder = (store.parent if store.is_file() else store).absolute()
    lock_file = folder.parent / f".{folder.name}.kerasflow-lock"
    return exclusive(lock_file, waiting=lambda: log.info(
        f"waiting for another relocation or pull of {folder} to finish (lock: {lock_file})"))
