"""Train exactly as train.py does, inside ONE MLflow run that records everything needed to trust it.

Logged: every config key as a param; per-epoch metrics; test metrics; figures, config, history and
model summary; data lineage (one input per split with its digest); git commit (and diff when dirty),
the dependency lock, TF/CUDA build, GPUs, container image and host; the model (keras flavor, signature),
optionally registered with an alias. The store defaults to ./store (sqlite + artifacts in one folder);
MLFLOW_TRACKING_URI overrides it (e.g. the server of `make server`).

examples:
  python train_mlflow.py --set data_source=synthetic --set model=cnn --set image_size=48
  python train_mlflow.py --register malaria-vgg16 --alias candidate
  MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python train_mlflow.py
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    cli.store_flags(p)
    p.add_argument("--register", default="", metavar="NAME",
                   help="register the model under this name (default: do not register)")
    p.add_argument("--alias", default="candidate", help="alias for the registered version")
    p.add_argument("--system-metrics", action="store_true",
                   help="log CPU/memory (and GPU with nvidia-ml-py) usage every 10 s")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.track import tracking

        cfg = cli.load_config(args)
        tracking.train_tracked(cfg, store_dir=args.store, experiment=args.experiment,
                               register=args.register, alias=args.alias,
                               system_metrics=args.system_metrics)

    return cli.guard(go)
