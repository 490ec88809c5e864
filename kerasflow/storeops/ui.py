"""Open the MLflow UI on a store that may have been copied from another machine.

    ./run_mlflow_ui.bash [STORE] [--port N]      (python -m kerasflow.storeops.ui ...)

Relocates the store's artifact locations to where the store now is, then starts `mlflow ui` bound to
127.0.0.1 with the backend and artifact options the store's kind needs: a sqlite store is opened
directly (its proxied `mlflow-artifacts:/` runs are served from STORE/artifacts); a legacy file store
needs MLFLOW_ALLOW_FILE_STORE=true since MLflow 3.13.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from kerasflow import cli
from kerasflow.errors import UserError
from kerasflow.storeops import relocate
from kerasflow.track import store


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def command(store_path: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The `mlflow ui` command line and environment for this store."""
    kind, path = relocate.detect(store_path)
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if kind == "sqlite":
        root = path.parent.absolute()
        args = ["--backend-store-uri", f"sqlite:///{path.absolute()}",
                "--artifacts-destination", str(root / store.ARTIFACTS)]
    else:
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
        args = ["--backend-store-uri", str(path.absolute()), "--default-artifact-root", str(path.absolute())]
    return [mlflow_bin, "ui", *args, "--host", "127.0.0.1", "--port", str(port)], env


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("store", nargs="?", default=store.DEFAULT_STORE, type=Path)
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--print-command", action="store_true", help="print the command instead of running it")
    args = p.parse_args(argv)

    def go() -> None:
        if not args.store.exists():
            raise UserError(f"no MLflow store at {args.store}: pass the store folder (default ./store), "
                            "e.g. after `make pull FROM=...`")
        if not port_free(args.port):
            raise UserError(f"port {args.port} on 127.0.0.1 is busy: pass --port N (another UI running?)")
        report = relocate.relocate(args.store)
        print(report.summary(), file=sys.stderr)
        cmd, env = command(args.store, args.port)
        if args.print_command:
            print(" ".join(cmd))
            return
        print(f"MLflow UI: http://127.0.0.1:{args.port} (over SSH: ssh -L {args.port}:127.0.0.1:"
              f"{args.port} HOST)", file=sys.stderr)
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)

    return cli.run(go)


if __name__ == "__main__":
    sys.exit(main())
