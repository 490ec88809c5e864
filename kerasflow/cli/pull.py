"""Copy a consistent snapshot of a store that may be in use, then fix its paths (`make pull FROM=...`).

    kerasflow pull SOURCE [DEST] [--ssh CMD] [--force]     SOURCE: user@host:path/to/store or a folder

The database is snapshotted on the source side (SQLite's backup API), copied with its artifacts by
rsync (over ssh for host:path), and relocated to DEST; see kerasflow/storeops/pull.py.
"""

from __future__ import annotations

import os

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    from kerasflow.track import store

    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("source", help="user@host:path/to/store, or a local store folder")
    p.add_argument("dest", nargs="?", default=store.DEFAULT_STORE, type=cli.path,
                   help="where the copy goes (default: ./store)")
    p.add_argument("--ssh", default=os.environ.get("KERASFLOW_SSH", "ssh"), help="ssh command (-e of rsync)")
    p.add_argument("--force", action="store_true",
                   help="replace a DEST that holds another store, keeping it as DEST.backup-TIME")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.storeops import pull

        report = pull.pull(args.source, args.dest, args.ssh, args.force)
        print(f"pulled {args.source} -> {args.dest}; {report.summary()}")

    return cli.guard(go)
