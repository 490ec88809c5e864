"""Stop this store's MLflow server: the one `make run`, `make server` or `make ui` started and left running.

    kerasflow server-stop [STORE]      (`make server-stop`)

Only your own processes serving this store are stopped (found by their command line, not a pid file);
runs logging to it should be finished first (`make queue`). A stopped server starts again with the next
`make run` or `make server`, on the same port.
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    from kerasflow.track import store

    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("store", nargs="?", default=store.DEFAULT_STORE, type=cli.store_path)
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.storeops import server

        stopped = server.stop(args.store)
        if not stopped:
            print(f"server-stop: no server of yours serves {args.store}")
        for found in stopped:
            print(f"server-stop: stopped the server of {args.store} on 127.0.0.1:{found.port} "
                  f"(pid {found.pid})")

    return cli.guard(go)
