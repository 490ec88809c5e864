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

import argparse
import os
import sys
from pathlib import Path

from kerasflow import cli
from kerasflow.config import Config


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
    p.add_argument("--on", choices=("box", "slurm"), default=os.environ.get("ON") or "box",
                   help="slurm: the lead and --workers joiners as one Slurm job array (ON=slurm; the study "
                        "in PostgreSQL: KERASFLOW_STUDY_STORAGE; RUNTIME, SBATCH, GPUS as for make run)")
    p.add_argument("--runtime", default=os.environ.get("RUNTIME") or "docker", help=argparse.SUPPRESS)
    p.add_argument("--sbatch", default=os.environ.get("SBATCH", ""), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    status = {"code": 0}

    def go() -> None:
        from kerasflow.experiments.tune import lead

        cfg = cli.load_config(args)
        if args.on == "slurm":
            status["code"] = on_slurm(args, cfg)
            return
        lead.tune(cfg, trials=args.trials, workers=args.workers, study_name=args.study,
                    # an empty --storage (MLproject's default) falls back to the variable too
                    storage=args.storage or os.environ.get("KERASFLOW_STUDY_STORAGE", ""),
                    store_dir=args.store, experiment=args.experiment,
                    register=args.register, alias=args.alias, grace=args.grace, role=args.role)

    return cli.guard(go) or status["code"]


def on_slurm(args: argparse.Namespace, cfg: Config) -> int:
    """`make tune ON=slurm WORKERS=K`: one job array, task 0 the lead (queues the trials, retrains the
    best), tasks 1..K joiners, each its own MLflow run, over one study in PostgreSQL."""
    from kerasflow.errors import UserError
    from kerasflow.launch import run, slurm

    storage = args.storage or os.environ.get("KERASFLOW_STUDY_STORAGE", "")
    if not storage.startswith(("postgresql://", "postgresql+")):
        raise UserError("a search on Slurm keeps its study where every node reaches it: set "
                        "KERASFLOW_STUDY_STORAGE=postgresql://user:pass@host/db (docs/team-server.md)")
    if args.workers < 1 or args.trials < 1:
        raise UserError("--trials and --workers must be 1 or more")
    root = Path(".").resolve()
    params = [*slurm.config_params(root, "tune", cfg), f"trials={args.trials}", "workers=1",
              f"study={args.study}", f"register_model={args.register}", f"model_alias={args.alias}"]
    port = os.environ.get("PORT", "")
    request = run.Request(root=root, store=Path(os.environ.get("STORE") or args.store).resolve(),
                          logs=Path(os.environ.get("LOGS") or "logs").resolve(), entry="tune",
                          experiment=args.experiment, port=int(port) if port.isdigit() else None,
                          params=params, out=print, err=lambda text: print(text, file=sys.stderr))
    roles = [["role=lead"], *[["role=join"]] * args.workers]
    return slurm.start(request, slurm.options(args.runtime, args.sbatch), roles=roles)
