"""PostgreSQL advisory locks: the one lock that spans machines, for schema creation on a fresh database.

MLflow's and Optuna's first migration, run by several servers or workers at once on an EMPTY database,
race (duplicate tables, a half-written version row). A lock file cannot span machines; a
`pg_advisory_lock` taken in the database itself can, and the server frees it if its holder dies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kerasflow import urlauth
from kerasflow.errors import UserError

# Lazy imports: sqlalchemy, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

# one constant key per schema: every kerasflow process that may create it takes the lock first
MLFLOW_SCHEMA = 0x6B657261  # "kera"
OPTUNA_SCHEMA = 0x6F707475  # "optu"


def is_postgresql(url: str) -> bool:
    return url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://"))


def driver_url(url: str) -> str:
    """The URL with its driver named: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, the lock
    has psycopg2 (the binary wheel)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg2://{rest}" if sep and scheme in ("postgresql", "postgres") else url


@contextmanager
def advisory_lock(url: str, key: int, what: str = "the database") -> Iterator[None]:
    """Hold pg_advisory_lock(key) in the database at `url` for the block; one line (naming `what`) if
    it cannot open."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool)
        conn = engine.connect()
    except sqlalchemy.exc.OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)[:200]
        raise UserError(f"cannot open {what} {urlauth.redact(url)} ({first}): check the URL, that the "
                        "server runs, and the password (PGPASSWORD or ~/.pgpass)") from None
    with conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    engine.dispose()
