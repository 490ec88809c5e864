"""Hyperparameter search with Optuna over config.yaml's search_space (kerasflow/experiments/tune/).

Every trial is a nested MLflow run under one search run; the best parameters are retrained, logged
and optionally registered. --trials is the study's total, so rerunning continues an interrupted study.

examples:
  kerasflow tune --trials 20 --set data_source=synthetic --set model=cnn --set image_size=48
  kerasflow tune --trials 40 --workers 2 --study lr-dropout --register malaria-vgg16
  # one study over several machines (a team server: MLFLOW_TRACKING_URI, the study in PostgreSQL):
  export KERASFLOW_STUDY_STORAGE=postgresql://user:pass@db/optuna
  kerasflow tune --study shared --trials 40                 # the first machine: queues, retrains
  kerasflow tune --study shared --trials 40 --role join     # every other machine
"""

from __future__ import annotations

import os

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--trials", type=int, default=20, help="total trials the study should have (default 20)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--study", default="search", help="Optuna study name (default: search)")
    p.add_argument("--storage", default="",
                   help="study storage URL (default: $KERASFLOW_STUDY_STORAGE, else sqlite:///STORE/optuna.db;"
                        " a URL with a password belongs in that variable, not in the command line)")
    cli.store_flags(p)
    p.add_argument("--register", default="", metavar="NAME", help="register the final model under NAME")
    p.add_argument("--alias", default="candidate", help="alias for the registered version")
    p.add_argument("--role", choices=("lead", "join"), default="lead",
                   help="lead (default): start or continue the study, queue its trials, wait for every "
                        "worker, retrain the best; join: only run queued trials of a study led elsewhere")
    p.add_argument("--grace", type=int, default=300,
                   help="seconds without a heartbeat before a trial counts as dead (default 300)")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.experiments.tune import lead

        cfg = cli.load_config(args)
        lead.tune(cfg, trials=args.trials, workers=args.workers, study_name=args.study,
                    # an empty --storage (MLproject's default) falls back to the variable too
                    storage=args.storage or os.environ.get("KERASFLOW_STUDY_STORAGE", ""),
                    store_dir=args.store, experiment=args.experiment,
                    register=args.register, alias=args.alias, grace=args.grace, role=args.role)

    return cli.run(go)
