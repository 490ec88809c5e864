"""Write the dataset's nested cross-validation folds to a splits file, once (kerasflow/train/splits.py).

Stratified by class; for an image tree, grouped by patient (group_pattern) so no patient is on both
sides. Training uses a fold with --set splits_file=PATH --set outer_fold=O --set inner_fold=I.

examples:
  kerasflow splits --set data_source=image_dir --set image_dir=data/cell_images
  kerasflow splits --set data_source=synthetic --set n_outer_folds=3 --out outputs/splits.json
"""

from __future__ import annotations

from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--out", type=cli.path, default=Path("outputs/splits.json"),
                   help="where to write the splits file (default: outputs/splits.json)")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.train import sources, splits

        cfg = cli.load_config(args)
        sources.check(cfg)
        splits.make_file(cfg, args.out)

    return cli.guard(go)
