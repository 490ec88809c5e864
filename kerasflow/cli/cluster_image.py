"""Make this user's project image into the file or folder a Slurm cluster's runtime reads
(kerasflow/launch/slurm.py), in a folder the nodes share.

    kerasflow cluster-image [--runtime docker|charliecloud|apptainer|enroot] [--out DIR]
                                                   (`make cluster-image RUNTIME=... CLUSTER_IMAGES=...`)

  docker        `docker save` to DIR/<tag>.tar: a node without the image loads it before the run
  charliecloud  the image unpacked to DIR/<tag>.ch (ch-run, no root), with the image's environment
  apptainer     DIR/<tag>.sif (`apptainer build ... docker-daemon://`; Apptainer or Singularity)
  enroot        DIR/<tag>.sqsh (`enroot import dockerd://`; pyxis: srun --container-image)

DIR: --out, else CLUSTER_IMAGES, else .cluster-images in the checkout. The image is built first with
`make image`. See docs/cluster.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--runtime", choices=("docker", "charliecloud", "apptainer", "enroot"),
                   default=os.environ.get("RUNTIME") or "docker")
    p.add_argument("--out", type=cli.path, default=None, metavar="DIR",
                   help="the folder (default: CLUSTER_IMAGES, else .cluster-images)")
    p.add_argument("--root", type=cli.path, default=Path("."), help="the checkout (default: here)")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.launch import slurm

        shared = os.environ.get("CLUSTER_IMAGES", "")
        folder = args.out or (Path(shared) if shared else None)
        slurm.cluster_image(args.root.resolve(), args.runtime, folder.resolve() if folder else None,
                            say=print)

    return cli.guard(go)
