"""Internal (`make run`, before `mlflow run`): an experiment's new runs get proxied artifact locations.

    kerasflow proxy-artifacts STORE EXPERIMENT

An experiment made by an embedded command (`make track`, cv, tune) has a host path as its artifact
location, which `mlflow run` does not mount into the container; see kerasflow/storeops/proxy_artifacts.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("store", type=Path)
    p.add_argument("experiment")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.storeops.proxy_artifacts import proxy_experiment

        new = proxy_experiment(args.store, args.experiment)
        if new:
            print(f"note: experiment '{args.experiment}' now logs new runs to {new} (the same folder, "
                  "through the store's server)", file=sys.stderr)

    return cli.run(go)
