"""Credentials in URLs: kept out of printed lines, logs, MLflow params/tags and process arguments.

A user may write `http://user:pass@host:5000` (MLflow tracking) or `postgresql://user:pass@db/x` (an
Optuna storage). Anything we print shows the URL without its password; MLflow gets the tracking
credentials the way its client reads them (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD),
and worker processes get a URL with a password through their environment, never their argv (which
every user on the machine can read in `ps`).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from kerasflow.errors import UserError
from kerasflow.files import atomic_write


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without user:password, user, password); a URL without them comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None, None
    if not parts.scheme or "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=hostport))
    return clean, unquote(user) or None, unquote(password) if sep else None


def redact(url: str) -> str:
    """The URL as it may be shown: `user:***@` instead of the password."""
    clean, user, password = split_credentials(url)
    if user is None and password is None:
        return url
    parts = urlsplit(clean)
    shown = f"{user or ''}{':***' if password is not None else ''}@"
    return urlunsplit(parts._replace(netloc=shown + parts.netloc))


def tracking_uri_from_env() -> str:
    """MLFLOW_TRACKING_URI with any user:password moved into MLflow's own credential variables."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    clean, user, password = split_credentials(uri)
    if clean != uri:
        if user is not None:
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
        if password is not None:
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
        os.environ["MLFLOW_TRACKING_URI"] = clean
    return clean


def basic_auth_header() -> dict[str, str]:
    """The Authorization header MLflow's client would send, for our own /health check."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is None or password is None:
        return {}
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_env_file(path: str) -> str:
    """For `mlflow run` in docker: the tracking credentials (and the study URL) into a 0600 env file
    (docker --env-file), because MLflow puts every `-e NAME=VALUE` it passes on the docker command line
    it prints and logs. Returns the tracking URI without credentials; an empty file when there are none."""
    clean = tracking_uri_from_env()
    # and the Optuna study's database URL (tune workers in containers; it may hold a password)
    lines = [f"{name}={os.environ[name]}" for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                                        "KERASFLOW_STUDY_STORAGE")
             if os.environ.get(name)]
    if any("\n" in line for line in lines):
        raise UserError("a tracking credential or KERASFLOW_STUDY_STORAGE holds a newline: an env file "
                        "cannot carry it; set the value without one")
    atomic_write(Path(path), "".join(f"{line}\n" for line in lines), mode=0o600)
    return clean
