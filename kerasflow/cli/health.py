"""Internal (`make run`): does the MLflow server at URL answer /health? Exit 0 when it does, else 1.

    kerasflow health URL [--wait SECONDS] [--pid PID]

With --wait it polls until the server answers, SECONDS pass, or process PID (the server starting) dies.
"""

from __future__ import annotations

import os

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("url")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS")
    p.add_argument("--pid", type=int, default=0, help="stop waiting when this process is gone")
    args = p.parse_args(argv)

    def alive() -> bool:
        if not args.pid:
            return True
        try:
            os.kill(args.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    from kerasflow import ports

    return 0 if ports.wait_answers(args.url, args.wait, alive) else 1
