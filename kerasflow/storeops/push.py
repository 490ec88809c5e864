"""`make push` (= `kerasflow push`): merge the runs of a store into another store, a tracking server
(basic auth too) or a team server's PostgreSQL, idempotently; the merge itself is storeops/merge.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from kerasflow import urlauth
from kerasflow.errors import UserError
from kerasflow.storeops.merge import Report, merge
from kerasflow.track import store

# Lazy imports: mlflow, inside the functions that use it (seconds to load).


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


def push(source: str, dest: str, *, experiments: list[str] | None = None, filter_string: str = "",  # noqa: PLR0913
         since: int | None = None, full: bool = False) -> Report:
    """Merge the runs of store `source` (a folder, or MLFLOW_TRACKING_URI) into `dest`; `since` (epoch
    ms) keeps the runs started then or later."""
    import mlflow

    if since is not None:
        started = f"attributes.start_time >= {since}"
        filter_string = f"{started} and {filter_string}" if filter_string.strip() else started

    with store.open_store(source, create=False, write=False) as src_uri:
        dst_uri = destination_uri(dest)
        if dst_uri == src_uri:
            raise UserError(f"the destination {urlauth.redact(dest)} is the source store: give another "
                            "with TO=/--to")
        store.check_backend(dst_uri, choose="--to DEST (TO= for make push)")
        store.init_sqlite(dst_uri)
        src = mlflow.MlflowClient(tracking_uri=src_uri)
        dst = mlflow.MlflowClient(tracking_uri=dst_uri)
        # artifact repositories resolve through the active store; MLflow's client would print two
        # "View run" lines (and fetch the run again) for each copy it ends on a server
        with store.activated(dst_uri), _env("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"):
            return merge(src, dst, dst_uri, experiments=experiments, filter_string=filter_string,
                         label=urlauth.redact(src_uri), src_uri=src_uri, full=full)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """`name`=`value` in os.environ for a block (MLflow reads some settings only from there)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
