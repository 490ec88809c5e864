"""Internal: the one message to KERASFLOW_NOTIFY a run sends when it starts (--started) or ends
(kerasflow/notify.py), for a command run in the machine's line by hand (`kerasflow queue-wait -- ...`);
`make run` sends its own.

    python -m kerasflow notify-run --name NAME --log FILE --exit N [--run-id ID] [--started]

With --run-id (and MLFLOW_TRACKING_URI) the message has the MLflow run's status, duration, final and best
metrics and UI link; a run that did not end FINISHED gets the log's last lines, secrets redacted.
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--name", required=True)
    p.add_argument("--log", type=cli.path, required=True)
    p.add_argument("--exit", type=int, default=0, help="the run's exit status")
    p.add_argument("--run-id", default="", help="the MLflow run (on MLFLOW_TRACKING_URI)")
    p.add_argument("--started", action="store_true")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow import notify, urlauth

        if not notify.wanted(start=args.started):
            return
        if args.started:
            notify.send(notify.Message(name=args.name, status="STARTED"))
            return
        notify.run_ended(args.name, args.exit, str(args.log), urlauth.tracking_uri_from_env(), args.run_id)

    return cli.guard(go)
