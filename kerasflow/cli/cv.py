"""Nested cross-validation as MLflow runs: cv -> outer -> inner fold (kerasflow/experiments/cv.py).

Every inner-fold run is a full train_mlflow.py run; the cv run gets the mean and std of every test
metric over the outer folds. Needs a splits file (kerasflow splits).

examples:
  kerasflow cv --set splits_file=outputs/splits.json
  kerasflow cv --set splits_file=outputs/splits.json --n-outer 2 --n-inner 2 --experiment cv
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--n-outer", type=int, default=0, help="outer folds to run (default 0: all in the file)")
    p.add_argument("--n-inner", type=int, default=0, help="inner folds per outer fold (default 0: all)")
    cli.store_flags(p)
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.experiments import cv

        cfg = cli.load_config(args)
        cv.cross_validate(cfg, n_outer=args.n_outer or None, n_inner=args.n_inner or None,
                                store_dir=args.store, experiment=args.experiment)

    return cli.guard(go)
