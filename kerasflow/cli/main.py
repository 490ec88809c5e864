"""`kerasflow COMMAND`: the one command surface. `python -m kerasflow COMMAND` and `make COMMAND` run the
same module (kerasflow/cli/COMMAND.py, a hyphen in the name is an underscore there), and so does the
MLproject entry point of the same name where one exists (`main` is `track`).

`kerasflow COMMAND --help` shows each command's options; nothing heavy is imported before it runs.
"""

from __future__ import annotations

import importlib
import sys

# name -> one line for the list, in the groups of `make help`; the module is kerasflow.cli.<name>
COMMANDS: dict[str, str] = {
    "train": "train a model from config.yaml, no MLflow (train.py)",
    "track": "train inside one MLflow run (train_mlflow.py; MLproject main)",
    "data": "download the configured data source (TFDS malaria into tfds_data_dir; internet)",
    "weights": "cache the VGG16 ImageNet weights in ~/.keras/models (internet)",
    "server": "MLflow server over a store on 127.0.0.1 (--auth, --db postgresql://...)",
    "server-stop": "stop this store's MLflow server (the one make run, make server or make ui left)",
    "runs": "table of the best runs and their curves",
    "log-run": "log a finished run folder into the store, afterwards (FOLDER=outputs/NAME)",
    "reproduce": "re-create a tracked run from its record and compare",
    "promote": "point an alias at a registered model's best version by a metric",
    "versions": "a registered model's versions, aliases and test metrics",
    "serve": "serve a model over HTTP on 127.0.0.1",
    "predict": "classify images with a served model",
    "run": "mlflow run in the project image + this store's server; tmux over SSH (make run)",
    "image": "build this checkout's project image for your user, or reuse it; prints its tag",
    "cluster-image": "your image as the file or folder a Slurm cluster's runtime reads (RUNTIME=...)",
    "run-script": "run any command in the project image, this checkout at /workspace",
    "doctor": "check this box before a run: engine, GPUs, driver, disk, data, store, port",
    "queue": "this machine's runs in line and running, every user's (--watch)",
    "cancel": "take your run out of the line, or stop it (its MLflow run ends KILLED)",
    "ui": "MLflow UI over a (copied) store, fixing its paths first",
    "pull": "consistent copy of a store in use, then relocation",
    "push": "merge this store's runs into another store or a server (TO=...)",
    "relocate": "rewrite a moved store's artifact paths",
    "migrate": "legacy mlruns/ file store onto sqlite",
    "splits": "write the nested CV folds to a splits file",
    "cv": "nested cross-validation as MLflow runs",
    "tune": "Optuna search over config.yaml's search_space",
    "analyze": "Youden threshold + mlflow evaluate on runs' predictions",
    "mlproject": "render MLproject from config.yaml",
    "env": "install a pinned lock into this Python and link the checkout (make env)",
}
# Started by other commands, not by hand: listed in docs/architecture.md's table, not in --help.
INTERNAL = {
    "tune-worker": "one worker process of tune",
    "queue-wait": "run any command in this machine's line: wait for its devices, then become it",
    "notify-run": "one message to KERASFLOW_NOTIFY when a command run by hand in the line starts or ends",
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  kerasflow {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "usage: kerasflow COMMAND [options]   (kerasflow COMMAND --help)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name = args[0]
    if name not in COMMANDS and name not in INTERNAL:
        print(f"error: unknown command 'kerasflow {name}': see `kerasflow --help`", file=sys.stderr)
        return 2
    module = importlib.import_module(f"kerasflow.cli.{name.replace('-', '_')}")
    sys.argv[0] = f"kerasflow {name}"  # argparse's prog in usage and errors
    return int(module.main(args[1:]) or 0)
