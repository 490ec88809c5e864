"""The MLflow UI over a store that may come from another machine: relocate it, then its server's command.

The server is kerasflow.storeops.server's (bound to 127.0.0.1; its proxied `mlflow-artifacts:/` runs are
served from STORE/artifacts; a legacy file store needs MLFLOW_ALLOW_FILE_STORE=true since MLflow 3.13).
"""

from __future__ import annotations

from pathlib import Path

from kerasflow import ports
from kerasflow.errors import UserError
from kerasflow.storeops import relocate, server


def ready(store_path: Path, port: int) -> tuple[relocate.Report, list[str], dict[str, str]]:
    """Relocate the store to where it is (its report), then the server command and environment."""
    if not store_path.exists():
        raise UserError(f"no MLflow store at {store_path}: pass the store folder (default ./store), "
                        "e.g. after `make pull FROM=...`")
    ports.check_port(port, "the MLflow UI")
    report = relocate.relocate(store_path)
    cmd, env = server.command(store_path, port)
    return report, cmd, env
