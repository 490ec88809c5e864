"""Internal (`make run`, just before `mlflow run`): the experiment's id, once what the tracking server
says about it is safe in MLflow's shell line (kerasflow/track/shell_line.py).

    kerasflow experiment-id NAME        (MLFLOW_TRACKING_URI: the server the run logs to)

Prints the id; an unsafe artifact location or id ends in one line and exit 2, and nothing is run.
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("name", help="the experiment `make run --experiment` names")
    args = p.parse_args(argv)

    def go() -> None:
        import mlflow

        from kerasflow import urlauth
        from kerasflow.track.shell_line import experiment_for_docker

        print(experiment_for_docker(mlflow.MlflowClient(urlauth.tracking_uri_from_env()), args.name))

    return cli.run(go)
