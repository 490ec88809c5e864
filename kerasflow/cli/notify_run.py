"""`make run`: one message to KERASFLOW_NOTIFY when the run starts (--started) or ends (kerasflow/notify.py).

    python -m kerasflow notify-run --name NAME --log FILE --exit N [--started]

The driver runs this on the host, since the container may never start (an image that fails to build) and
its end is the driver's to see. The MLflow run named in the log gives the status, duration, final and best
metrics and the UI link; a run that did not end FINISHED gets the log's last lines, secrets redacted.
"""

from __future__ import annotations

from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--name", required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--exit", type=int, default=0, help="the run's exit status")
    p.add_argument("--started", action="store_true")
    args = p.parse_args(argv)

    def go() -> None:
        import os

        from kerasflow import notify, runqueue, urlauth

        if not notify.wanted(start=args.started):
            return
        if args.started:
            notify.send(notify.Message(name=args.name, status="STARTED"))
            return
        status = "FINISHED" if args.exit == 0 else f"FAILED (exit {args.exit})"
        message = notify.Message(name=args.name, status=status)
        run_id = runqueue.run_id_in_log(str(args.log))
        if run_id:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            try:
                import mlflow

                uri = urlauth.tracking_uri_from_env()
                run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
                status = run.info.status if run.info.status != "RUNNING" else status
                message = notify.of_run(run, args.name, status,
                                        link=notify.run_link(uri, run.info.experiment_id, run_id))
            except Exception:  # noqa: BLE001, S110 - the server may be what failed: send what we know
                pass
        if message.status != "FINISHED":
            message.tail = notify.tail_of(str(args.log))
        notify.send(message)

    return cli.run(go)
