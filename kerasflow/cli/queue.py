"""This machine's runs in line and running, for every user (kerasflow/runqueue.py).

    kerasflow queue [--watch [SECONDS]]      (`make queue`)

One row per run: name, user, slot (GPUs, or a CPU slot with CPU_SLOTS), state, place in line, time
since it started (or joined the line), current epoch and last validation metric (read from its MLflow
server; '-' when that does not answer within seconds), log file. Then your runs sent to Slurm (make run
ON=slurm, recorded in LOGS/slurm): state and Slurm's reason, node, GPUs, epoch, metric, job id.
See docs/gpu-server.md and docs/cluster.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 5) until Ctrl-C")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow import cluster, runqueue

        logs = Path(os.environ.get("LOGS") or "logs").resolve()
        while True:
            line = runqueue.tickets(runqueue.folder())
            text = runqueue.table(runqueue.rows(line, runqueue.progress(line)))
            if cluster.available() and (logs / "slurm").is_dir():
                from kerasflow.launch import slurm

                rows = slurm.queue_rows(logs)
                if rows:
                    text += "\n\nSlurm (your runs sent with make run ON=slurm):\n" + slurm.queue_table(rows)
            if args.watch is None:
                print(text)
                return
            sys.stdout.write("\033[H\033[2J" + time.strftime("%H:%M:%S ") + f"(every {args.watch:g} s, "
                             "Ctrl-C to stop)\n" + text + "\n")
            sys.stdout.flush()
            time.sleep(max(args.watch, 0.5))

    try:
        return cli.guard(go)
    except KeyboardInterrupt:
        return 0
