"""Open the MLflow UI on a store that may have been copied from another machine.

    ./run_mlflow_ui.bash [STORE] [--port N]      (python -m kerasflow.storeops.ui ...)

Relocates the store's artifact locations to where the store now is, then starts the store's MLflow server
(kerasflow.storeops.server: bound to 127.0.0.1; its proxied `mlflow-artifacts:/` runs are served from
STORE/artifacts; a legacy file store needs MLFLOW_ALLOW_FILE_STORE=true since MLflow 3.13).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kerasflow import cli, ports
from kerasflow.errors import UserError
from kerasflow.storeops import relocate, server
from kerasflow.track import store


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
        ports.check_port(args.port, "the MLflow UI")
        report = relocate.relocate(args.store)
        print(report.summary(), file=sys.stderr)
        cmd, env = server.command(args.store, args.port)
        if args.print_command:
            print(" ".join(cmd))
            return
        print(f"MLflow UI: http://127.0.0.1:{args.port} (over SSH: ssh -L {args.port}:127.0.0.1:"
              f"{args.port} HOST)", file=sys.stderr)
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)  # noqa: S606 - an argv list, no shell

    return cli.run(go)


if __name__ == "__main__":
    sys.exit(main())
