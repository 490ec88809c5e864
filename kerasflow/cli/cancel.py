"""Take a run of yours out of this machine's queue, or stop it (kerasflow/runqueue.py).

    kerasflow cancel NAME      (`make cancel NAME=...`)

A waiting run leaves the line (the runs behind it move up); a running one is stopped like Ctrl-C: its
container stops and its MLflow run ends KILLED. A run sent to Slurm (`make run ON=slurm`, its record in
LOGS/slurm) has its job cancelled (scancel) and its MLflow run ends KILLED. `make queue` lists the names.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("name", help="the run's name (make queue)")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for it to stop")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow import runqueue
        from kerasflow.launch import slurm

        logs = Path(os.environ.get("LOGS") or "logs").resolve()
        if slurm.read_record(slurm.record_path(logs, args.name)) is not None:
            print(slurm.cancel(logs, args.name, timeout=args.timeout))
        else:
            print(runqueue.cancel(args.name, timeout=args.timeout))

    return cli.guard(go)
