"""`kerasflow`: one command, a subcommand per capability (the scripts and make targets call the same code).

    kerasflow train [--set k=v ...]          kerasflow track ...          kerasflow splits ...
    kerasflow cv ...    kerasflow tune ...    kerasflow analyze ...        kerasflow predict IMAGE ...
    kerasflow runs ...    kerasflow reproduce RUN_ID    kerasflow model promote|show ...   kerasflow serve URI
    kerasflow store ui|relocate|pull|migrate ...    kerasflow fetch data|weights    kerasflow preflight ...

`kerasflow COMMAND --help` shows each command's options; nothing heavy is imported before it runs.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module whose main(argv) runs it, one line for the list)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("kerasflow.cli.train", "train a model (train.py)"),
    "track": ("kerasflow.cli.track", "train inside one MLflow run (train_mlflow.py)"),
    "splits": ("kerasflow.cli.splits", "write the nested CV folds to a splits file (make_splits.py)"),
    "cv": ("kerasflow.cli.cv", "nested cross-validation as MLflow runs (cv.py)"),
    "tune": ("kerasflow.cli.tune", "Optuna search over config.yaml's search_space (tune.py)"),
    "analyze": ("kerasflow.cli.analyze", "threshold + models.evaluate on runs (analyze_predictions.py)"),
    "predict": ("kerasflow.cli.predict", "classify images with a served model (predict.py)"),
    "runs": ("kerasflow.track.runs", "table of the best runs and their curves"),
    "reproduce": ("kerasflow.cli.reproduce", "re-create a tracked run from MLflow, compare (make reproduce)"),
    "model": ("kerasflow.track.registry", "registered models: promote an alias, show versions"),
    "serve": ("kerasflow.serve.serving", "serve a model over HTTP on 127.0.0.1"),
    "store ui": ("kerasflow.storeops.ui", "MLflow UI over a (copied) store, fixing its paths first"),
    "store relocate": ("kerasflow.storeops.relocate", "rewrite a moved store's artifact paths"),
    "store pull": ("kerasflow.storeops.pull", "consistent copy of a store in use, then relocation"),
    "store migrate": ("kerasflow.storeops.migrate", "legacy mlruns/ file store onto sqlite"),
    "fetch": ("kerasflow.train.fetch", "download malaria (data) or the VGG16 weights (weights)"),
    "preflight": ("kerasflow.cli.preflight", "make run's checks before it detaches or builds"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  kerasflow {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: kerasflow COMMAND [options]   (kerasflow COMMAND --help)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    words = 2 if args[0] == "store" and len(args) > 1 else 1
    name = " ".join(args[:words])
    if name == "store":
        print("error: `kerasflow store` needs one of: ui, relocate, pull, migrate (e.g. kerasflow store ui "
              "store)", file=sys.stderr)
        return 2
    if name not in COMMANDS:
        print(f"error: unknown command 'kerasflow {name}': see `kerasflow --help`", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"kerasflow {name}"  # argparse's prog in usage and errors
    return int(module.main(args[words:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
