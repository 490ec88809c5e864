"""The one place that builds the `mlflow server` command line over a store.

    python -m kerasflow.storeops.server [STORE] [--port N]      (`make server`, `make run`'s server)

`make server`, the server `make run` starts (project_driver.bash), `make ui` (run_mlflow_ui.bash) and
the notebook's private server (kerasflow.track.explore) all serve a store the same way: bound to
127.0.0.1, Host and CORS checks limited to the local names, artifacts proxied from STORE/artifacts
(runs logged through it get `mlflow-artifacts:/` locations), the sqlite database created under the
store's lock before MLflow sees it (MLflow's own first migration races when two processes start at once).
A legacy file store needs MLFLOW_ALLOW_FILE_STORE=true since MLflow 3.13.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from kerasflow import cli
from kerasflow.errors import UserError
from kerasflow.track import store

HOST = "127.0.0.1"


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"port {port} is out of range: give a port from 1024 to 65535 (--port N / PORT=N)")
    if not port_free(port):
        raise UserError(f"port {port} on {HOST} is busy (another MLflow server or UI?): choose another "
                        "with --port N (make: PORT=N)")


def locate(store_path: Path) -> tuple[str, Path]:
    """('sqlite', db file) or ('file', legacy root); a missing or empty folder is a new sqlite store."""
    from kerasflow.storeops import relocate

    if not store_path.exists() or (store_path.is_dir() and not any(store_path.iterdir())):
        return "sqlite", store_path / store.DB_FILE
    return relocate.detect(store_path)


def prepare(store_path: Path) -> None:
    """Create a new sqlite store (under its lock) so that MLflow only ever opens a migrated database."""
    kind, path = locate(store_path)
    if kind == "sqlite":
        uri = store.sqlite_uri(path)
        store.check_backend(uri)
        store.init_sqlite(uri)
        (path.parent / store.ARTIFACTS).mkdir(exist_ok=True)


def command(store_path: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and environment for this store (sqlite, or a legacy file store)."""
    kind, path = locate(store_path)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if kind == "sqlite":
        args = ["--backend-store-uri", store.sqlite_uri(path),
                "--artifacts-destination", str(path.parent.resolve() / store.ARTIFACTS)]
    else:
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
        root = path.resolve()
        args = ["--backend-store-uri", str(root), "--default-artifact-root", str(root)]
    local = f"{HOST}:{port},localhost:{port}"
    origins = f"http://{HOST}:{port},http://localhost:{port}"
    return [str(bindir / "mlflow"), "server", *args, "--host", HOST, "--port", str(port),
            "--allowed-hosts", local, "--cors-allowed-origins", origins], env


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("store", nargs="?", default=store.DEFAULT_STORE, type=Path)
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--print-command", action="store_true", help="print the command instead of running it")
    args = p.parse_args(argv)

    def go() -> None:
        check_port(args.port)
        cmd, env = command(args.store, args.port)
        if args.print_command:
            print(" ".join(cmd))
            return
        prepare(args.store)
        print(f"MLflow server over {args.store}: http://{HOST}:{args.port} (over SSH: ssh -L "
              f"{args.port}:{HOST}:{args.port} HOST)", file=sys.stderr)
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)

    return cli.run(go)


if __name__ == "__main__":
    sys.exit(main())
