"""Train with `mlflow run` in the project image, tracked by this store's MLflow server (kerasflow/launch/).

    kerasflow run [-e ENTRY] [--experiment NAME] [--name RUN] [--detach|--foreground] [--no-wait]
                  [--on box|slurm] [--runtime R] [--sbatch OPTS]
                  [-P key=value ...]                       (`make run ARGS=...`, ./project_driver.bash)

  -e ENTRY        the MLproject entry point: main (default), splits, cv, tune, analyze, reproduce
  --experiment    the MLflow experiment (default: kerasflow)
  --name RUN      the run's name: its tmux session, log and container (default: ENTRY-<time>)
  --detach        start in a detached tmux session (the default over SSH); --foreground: never
  --no-wait       refuse to start when the run's GPUs (or CPU slot) are busy, instead of waiting in line
  -P key=value    a parameter of the entry point (a config.yaml key, e.g. -P epochs=3), repeatable;
                  -P register_model=NAME registers the trained model under NAME
  --on slurm      submit the run as one Slurm batch job instead (`make run ON=slurm`; docs/cluster.md):
                  --runtime docker|charliecloud|apptainer|enroot (RUNTIME, default docker) runs the image
                  on the nodes, --sbatch '--partition=gpu --time=2:00:00' (SBATCH) passes options to
                  sbatch, GPUS=N GPUs per run (default 1; GPU=off: none), CLUSTER_IMAGES the folder of
                  `make cluster-image`'s files; --no-wait: refused unless its GPUs are free now; it
                  returns once sbatch took the job (--detach/--foreground do not apply)

Environment: GPU=auto|on|off, GPUS=all|0|0,1, CPU_SLOTS=N (a line for CPU runs too), DATA=/host/dataset
(mounted at /data, read-only), PORT (default: the store's own, first free from 5000, kept in
STORE/server-port), STORE (./store), LOGS (./logs), MLFLOW_TRACKING_URI (a team server;
http://user:pass@host works), KERASFLOW_QUEUE_DIR (the machine's line, /tmp/kerasflow-queue),
KERASFLOW_NOTIFY (a message when it ends).

First, in the foreground: the engine answers, the NVIDIA runtime is there when a GPU is asked for, the
dataset the config needs is present, the server port is free or this store's own; each failure is one
line with its fix and nothing is started. Then: the store's server (or MLFLOW_TRACKING_URI), the MLflow
run (SCHEDULED while it waits: `make queue` shows its id), the machine's line (one slot per GPU), the
user's image (built when missing or stale: kerasflow:<commit>-u<UID>.<GID>), `mlflow run --run-id` in the
container. Detached, it logs to logs/<name>.log and writes the exit status to logs/<name>.status.
A stopped run (make cancel, Ctrl-C, a hangup) ends KILLED. See docs/gpu-server.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--root", type=cli.path, default=Path("."), help="the checkout (default: here)")
    p.add_argument("-e", "--entry", default="main")
    p.add_argument("--experiment", default="kerasflow")
    p.add_argument("--name", default="")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--detach", dest="mode", action="store_const", const="detach", default="auto")
    mode.add_argument("--foreground", dest="mode", action="store_const", const="foreground")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("-P", dest="params", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--on", choices=("box", "slurm"), default=os.environ.get("ON") or "box",
                   help="where the run goes: this box (default) or a Slurm cluster (ON=slurm)")
    p.add_argument("--runtime", default=os.environ.get("RUNTIME") or "docker",
                   help="the container runtime of the Slurm nodes (RUNTIME)")
    p.add_argument("--sbatch", default=os.environ.get("SBATCH", ""), metavar="OPTS",
                   help="options passed to sbatch, e.g. '--partition=gpu --time=2:00:00' (SBATCH)")
    args = p.parse_args(argv)

    def go() -> int:
        from kerasflow.errors import UserError
        from kerasflow.launch import run

        run.read_detached_env()
        port = os.environ.get("PORT", "")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise UserError(f"PORT={port} is not a port number (1-65535): unset PORT (the store then keeps "
                            "a port of its own) or set another")
        root = args.root.resolve()
        request = run.Request(
            root=root, store=Path(os.environ.get("STORE") or root / "store").resolve(),
            logs=Path(os.environ.get("LOGS") or root / "logs").resolve(), entry=args.entry,
            experiment=args.experiment, name=args.name, mode=args.mode, no_wait=args.no_wait,
            port=int(port) if port else None, params=args.params, out=print,
            err=lambda text: print(text, file=sys.stderr))
        if args.on == "slurm":
            from kerasflow.launch import slurm

            return slurm.start(request, slurm.options(args.runtime, args.sbatch))
        return run.start(request)

    result: dict[str, int] = {}
    code = cli.guard(lambda: result.setdefault("code", go()))
    return code or result.get("code", 0)
