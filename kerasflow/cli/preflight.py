"""`make run`'s checks in the foreground, before it detaches or builds (kerasflow/preflight.py).

    python -m kerasflow preflight --root . --entry main --image TAG [--port N] --store store --logs logs
                                  [-P key=value ...]

Prints the port of the store's server on stdout (the one given, else the store's own: see
`kerasflow server`).

Prints a `note:` line for what the user should know (no GPU, the first image build) and ends at the
first failure in one `error:` line with its fix, exit 2. GPU, GPUS, DATA and MLFLOW_TRACKING_URI come
from the environment, as for the driver.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--root", type=Path, required=True, help="the checkout (mounted at /workspace)")
    p.add_argument("--entry", default="main", help="the MLproject entry point")
    p.add_argument("--image", required=True, help="the image tag the run uses")
    p.add_argument("--port", type=int, default=None, help="default: the store's own (kerasflow server)")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--logs", type=Path, required=True)
    p.add_argument("-P", dest="params", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow import preflight
        from kerasflow.errors import UserError
        from kerasflow.storeops import server

        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        port, note = server.server_port(args.store.resolve(), args.port, keep=not uri)
        if note:
            print(f"note: {note}", file=sys.stderr)
        checks = preflight.for_make_run(
            root=args.root.resolve(), entry=args.entry, params=args.params, gpu=os.environ.get("GPU", "auto"),
            image_tag=args.image, uri=uri, port=port,
            store=args.store.resolve(), logs=args.logs.resolve(), data_mount=os.environ.get("DATA", ""))
        for check in checks:
            if check.status == preflight.FAIL:
                raise UserError(check.line)
            if check.status == preflight.NOTE:
                print(f"note: {check.line}", file=sys.stderr)
        print(port)

    return cli.run(go)
