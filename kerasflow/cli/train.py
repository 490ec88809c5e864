"""Train an image classifier (VGG16 transfer or a small CNN) with plain Keras, no MLflow.

Writes one folder per run under output_dir: model.keras, config.yaml, history.json, metrics.json,
curves.png, confusion_matrix.png, roc.png. Rerunning with the same --set run_name=NAME after a crash
resumes from the last finished epoch. The steps, top to bottom, are in kerasflow/train/training.py.

examples:
  python train.py                                   # VGG16 on TFDS malaria (after `make data`)
  python train.py --set data_source=synthetic --set model=cnn --set image_size=48
  python train.py --config my.yaml --set epochs=10 --set run_name=long
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    args = cli.parser(__doc__).parse_args(argv)

    def go() -> None:
        from kerasflow.train import training

        training.train(cli.load_config(args))

    return cli.guard(go)
