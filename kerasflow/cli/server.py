"""The store's MLflow server on 127.0.0.1 (`make server [AUTH=1]`; `make run` starts the same one).

    kerasflow server [STORE] [--port N] [--auth] [--db postgresql://...] [--print-command]

The port: the one this store's server got when it first started (first free from 5000, kept in
STORE/server-port), so two users' stores never ask for the same one; `kerasflow server-stop` stops it.

Bound to 127.0.0.1, Host and CORS checks limited to the local names, artifacts proxied from
STORE/artifacts; `--auth` turns on MLflow's basic auth (users in STORE/auth, kept with the store);
`--db` keeps the runs in PostgreSQL (a team server). Over SSH: ssh -L PORT:127.0.0.1:PORT HOST.
"""

from __future__ import annotations

import os
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
    p.add_argument("--db", default=os.environ.get("DB", ""), metavar="URL",
                   help="a PostgreSQL database for runs (postgresql://USER@HOST:PORT/DB; password in "
                        "PGPASSWORD or ~/.pgpass); artifacts stay in STORE/artifacts")
    p.add_argument("--auth", action="store_true",
                   help="MLflow basic auth (users in STORE/auth; the first start needs "
                        "MLFLOW_AUTH_ADMIN_PASSWORD)")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.storeops import server

        port, note = server.server_port(args.store, args.port)
        if note:
            print(f"note: {note}", file=sys.stderr)
        cmd, env = server.checked_command(args.store, port, auth=args.auth, db=args.db)
        if args.print_command:
            print(" ".join(cmd))
            return
        server.make_ready(args.store, args.db)
        print(f"MLflow server over {args.store}: {cli.ssh_hint(port)}; stop it: make server-stop",
              file=sys.stderr)
        cli.exec_server(cmd, env)

    return cli.guard(go)
