"""This machine's runs in line and running, for every user (kerasflow/runqueue.py).

    kerasflow queue [--watch [SECONDS]]      (`make queue`)

One row per run: name, user, slot (GPUs, or a CPU slot with CPU_SLOTS), state, place in line, time
since it started (or joined the line), current epoch and last validation metric (read from its MLflow
server; '-' when that does not answer within seconds), log file. See docs/gpu-server.md.
"""

from __future__ import annotations

import sys
import time

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 5) until Ctrl-C")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow import runqueue

        while True:
            line = runqueue.tickets(runqueue.folder())
            text = runqueue.table(runqueue.rows(line, runqueue.progress(line)))
            if args.watch is None:
                print(text)
                return
            sys.stdout.write("\033[H\033[2J" + time.strftime("%H:%M:%S ") + f"(every {args.watch:g} s, "
                             "Ctrl-C to stop)\n" + text + "\n")
            sys.stdout.flush()
            time.sleep(max(args.watch, 0.5))

    try:
        return cli.run(go)
    except KeyboardInterrupt:
        return 0
