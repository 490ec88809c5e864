"""The MLflow UI over a store that may come from another machine (`make ui`, ./run_mlflow_ui.bash).

    kerasflow ui [STORE] [--port N] [--print-command]

Relocates the store's artifact locations to where the store now is, then starts the store's server
(`kerasflow server`: 127.0.0.1 only; proxied `mlflow-artifacts:/` runs are served from STORE/artifacts).
"""

from __future__ import annotations

import sys

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    from kerasflow.track import store

    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("store", nargs="?", default=store.DEFAULT_STORE, type=cli.store_path)
    p.add_argument("--port", type=int, default=None,
                   help="default: the port this store's server keeps (STORE/server-port), else the first "
                        "free one from 5000")
    p.add_argument("--print-command", action="store_true", help="print the command instead of running it")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.storeops import server, ui

        port, note = server.server_port(args.store, args.port, keep=args.store.exists())
        if note:
            print(f"note: {note}", file=sys.stderr)
        report, cmd, env = ui.ready(args.store, port)
        print(report.summary(), file=sys.stderr)
        if args.print_command:
            print(" ".join(cmd))
            return
        print(f"MLflow UI: {cli.ssh_hint(port)}", file=sys.stderr)
        cli.exec_server(cmd, env)

    return cli.guard(go)
