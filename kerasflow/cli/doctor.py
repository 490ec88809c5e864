"""Check this box before a run: one table, each row PASS / WARN / FAIL with its fix (kerasflow/doctor.py).

    kerasflow doctor [--root .] [--port N] [--store store] [--logs logs] [--image TAG]     (`make doctor`)

Rows: the Docker engine and its version (and that you may use it), the NVIDIA runtime, `--gpus` in our
image (once it is built), the image, the NVIDIA driver against the minimum for the image's CUDA and each
GPU's architecture, free memory per GPU and who holds it, disk for the image and the data, the data the
config needs (what training lists), a write through MLflow into the store, the server port bindable or
this store's own, your running MLflow servers,
tmux, flock, a host Python for the light env, the notifier (--notify-test sends a test message).
With --on slurm (ON=slurm) the cluster instead: the controller and how it keeps end states, GPUs as
GRES, the image for RUNTIME, and one short test job: the runtime on a node, the checkout and store seen
there, the tracking server reachable from there (docs/cluster.md). Exit
status: 0 all pass, 1 warnings, 2 a failure. `make run` runs the fast subset before it queues or
detaches. GPU, DATA and MLFLOW_TRACKING_URI come from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--root", type=cli.path, default=Path("."), help="the checkout")
    p.add_argument("--image", default=None, help="the image tag (default: the one make run uses)")
    p.add_argument("--port", type=int, default=None, help="default: the store's own (kerasflow server)")
    p.add_argument("--store", type=cli.store_path, default=Path("store"))
    p.add_argument("--logs", type=cli.path, default=Path("logs"))
    p.add_argument("--notify-test", action="store_true", help="send a test message to KERASFLOW_NOTIFY")
    p.add_argument("--on", choices=("box", "slurm"), default=os.environ.get("ON") or "box",
                   help="slurm: check the cluster instead (ON=slurm; RUNTIME, CLUSTER_IMAGES)")
    p.add_argument("--runtime", default=os.environ.get("RUNTIME") or "docker",
                   help="the Slurm nodes' container runtime (RUNTIME)")
    args = p.parse_args(argv)
    status = {"code": 0}

    def go() -> None:
        from kerasflow import doctor
        from kerasflow.launch import image
        from kerasflow.storeops import server

        port, _ = server.server_port(args.store.resolve(), args.port, keep=False)
        root = args.root.resolve()
        if args.on == "slurm":
            from kerasflow.launch import slurm

            shared = os.environ.get("CLUSTER_IMAGES", "")
            uri = os.environ.get("MLFLOW_TRACKING_URI", "") or f"http://127.0.0.1:{port}"
            file = slurm.image_file(root, args.runtime, Path(shared).resolve() if shared else None)
            checks = doctor.for_cluster(root=root, store=args.store.resolve(), runtime=args.runtime,
                                           uri=uri, image_file=file)
            text, status["code"] = doctor.table(checks)
            print(text)
            return
        checks = doctor.for_box(root=root, image_tag=args.image or image.tag(root),
                                      uri=os.environ.get("MLFLOW_TRACKING_URI", ""), port=port,
                                      store=args.store.resolve(), logs=args.logs.resolve(),
                                      data_mount=os.environ.get("DATA", ""), notify_test=args.notify_test)
        text, status["code"] = doctor.table(checks)
        print(text)

    return cli.guard(go) or status["code"]
