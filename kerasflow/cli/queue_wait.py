"""Any command in this machine's line, as `make run` waits in it: wait for its devices, then become it.

    python -m kerasflow queue-wait --name NAME --log FILE --status FILE [--no-wait] -- COMMAND ...

GPU, GPUS and CPU_SLOTS come from the environment, as for make run. When it is this run's turn the
device locks and the ticket are left open (inheritable) and COMMAND replaces this process: they are
held until the run ends, however it ends. Cancelled while waiting (SIGTERM, `make cancel`): one line in
the log, exit status 143 in the status file. A run that needs no slot (a CPU run without CPU_SLOTS)
execs COMMAND at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        argv = [*argv, "--"]
    split = argv.index("--")
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--name", required=True)
    p.add_argument("--log", type=cli.path, required=True)
    p.add_argument("--status", type=cli.path, required=True)
    p.add_argument("--session", default="")
    p.add_argument("--tracking", default="")
    p.add_argument("--no-wait", action="store_true")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        p.error("give the command to run after `--`")

    def say(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, file=sys.stderr, flush=True)
        with open(args.log, "a") as f:
            f.write(line + "\n")

    def go() -> None:
        from kerasflow import runqueue
        from kerasflow.errors import Terminated

        pool, devices = runqueue.wanted(os.environ.get("GPU", "auto"), os.environ.get("GPUS", "all"),
                                        os.environ.get("CPU_SLOTS", ""))
        if not pool:
            os.execvp(command[0], command)  # noqa: S606 - the user's own argv
        me = runqueue.Ticket(name=args.name, user=runqueue.user_name(), devices=devices, pool=pool,
                             log=str(args.log.resolve()), session=args.session, tracking=args.tracking)

        def stop(signum: int, frame: FrameType | None) -> None:
            raise Terminated(signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, stop)
        try:
            ticket, fds = runqueue.wait(me, no_wait=args.no_wait, say=say)
        except Terminated as exc:
            say(f"queue: {args.name} left the line (signal {exc.signum}: make cancel, or its session ended)")
            args.status.write_text(f"{exc.exit_code}\n")
            raise
        for fd in [*fds, *ticket.fds()]:
            os.set_inheritable(fd, True)
        os.environ["KF_QUEUE_DEVICES"] = ",".join(me.devices)
        say(f"queue: {args.name} starts on {', '.join(me.devices)}")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(command[0], command)  # noqa: S606 - the user's own argv

    return cli.guard(go)
