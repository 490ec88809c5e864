"""`make run`: the MLflow run a user stopped ends KILLED, not FAILED.

    python -m kerasflow end-run --log FILE [--status KILLED]

`mlflow run` marks its run FAILED when the container stops with a non-zero code, which is also what a
user's stop (make cancel, Ctrl-C, a hangup) looks like to it. The driver, which knows the stop was
asked for, then runs this: the run named in the log (`... in run with ID '<id>'`) on the server in
MLFLOW_TRACKING_URI is set to the given status, unless it FINISHED.
"""

from __future__ import annotations

from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--status", default="KILLED", choices=["KILLED", "FAILED"])
    args = p.parse_args(argv)

    def go() -> None:
        import os

        import mlflow

        from kerasflow import runqueue, urlauth
        from kerasflow.track import orphans

        run_id = runqueue.run_id_in_log(str(args.log))
        if not run_id:
            return
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        client = mlflow.MlflowClient(tracking_uri=urlauth.tracking_uri_from_env())
        if orphans.mark_stopped(client, run_id, args.status):
            print(f"driver: MLflow run {run_id} ends {args.status} (stopped by its user)")

    return cli.run(go)
