"""Run any command inside the project image, with this checkout mounted at /workspace.

    kerasflow run-script python train.py --set epochs=3        (./run_script.bash ...)
    GPU=off kerasflow run-script make test                      GPU=auto (default) | on | off; GPUS=all|0|0,1
    DATA=/srv/cells kerasflow run-script python train.py --set data_source=image_dir --set image_dir=/data
    PORTS="8888 5000" kerasflow run-script jupyter lab --ip 0.0.0.0 --no-browser

Builds the image when it is missing or stale (kerasflow image), runs as your UID:GID (files it writes are
yours), --rm --init, the GPU when one is usable, every published port bound to 127.0.0.1 only, and the
CUDA JIT cache in the volume kerasflow-cuda-cache. The label finds this checkout's containers:
docker ps --filter label=kerasflow.checkout=PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kerasflow import cli


def docker_run(root: Path) -> list[str]:
    """`docker run ... IMAGE` for this checkout, the image built or reused first."""
    from kerasflow import ports, preflight
    from kerasflow.errors import UserError
    from kerasflow.launch import image, run

    for check in (preflight.engine(), preflight.gpu_runtime(os.environ.get("GPU", "auto"))):
        if check.status == preflight.FAIL:
            raise UserError(check.line)
        if check.status == preflight.NOTE:
            print(f"note: {check.line}", file=sys.stderr)
    tag = image.ensure(root, lambda cmd, env: subprocess.run(cmd, env=env, stdout=sys.stderr).returncode,
                       lambda text: print(text, file=sys.stderr))
    args = ["docker", "run", "--rm", "--init", "--user", f"{os.getuid()}:{os.getgid()}", "--volume",
            f"{root}:/workspace", "--workdir", "/workspace", "--volume", "kerasflow-cuda-cache:/cache/nv",
            "--label", f"kerasflow.checkout={root}"]
    if sys.stdin.isatty() and sys.stdout.isatty():
        args += ["--interactive", "--tty"]
    gpus = run.gpu_value()
    args += ["--gpus", gpus] if gpus else []
    data = os.environ.get("DATA", "")
    if data and not Path(data).is_dir():
        raise UserError(f"DATA={data} is not a folder: give the dataset folder to mount at /data (read-only)")
    args += ["--volume", f"{Path(data).resolve()}:/data:ro"] if data else []
    for port in os.environ.get("PORTS", "").split():
        if not port.isdigit():
            raise UserError(f"PORTS must be port numbers, got '{port}'")
        args += ["--publish", f"{ports.HOST}:{port}:{port}"]
    return [*args, tag]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(".").resolve()
    if argv[:1] == ["--root"] and len(argv) > 1:
        root, argv = Path(argv[1]).resolve(), argv[2:]
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: kerasflow run-script COMMAND [ARGUMENT ...]\n\n{__doc__}")
        return 0

    def go() -> None:
        from kerasflow.errors import UserError

        if not argv:
            raise UserError("give the command to run: ./run_script.bash python train.py --set epochs=3")
        args = docker_run(root)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp("docker", [*args, *argv])  # noqa: S606 - an argv list, no shell

    return cli.guard(go)
