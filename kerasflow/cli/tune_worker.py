"""Internal: one worker process of `kerasflow tune` (started by it, one per GPU or CPU slot).

    kerasflow tune-worker CONFIG ARGS_JSON WORKER      (the study's storage URL in the environment)
"""

from __future__ import annotations

import json
import os

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("config")
    p.add_argument("args_json")
    p.add_argument("worker", type=int)
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow import config
        from kerasflow.experiments.tune import study, workers
        from kerasflow.track import store
        from kerasflow.train import data

        cfg = config.load(args.config)
        run_args = {**json.loads(args.args_json), "storage_url": os.environ[study.STORAGE_ENV]}
        with store.activated(run_args["uri"]), data.reusing_loaded_examples():
            workers.run_worker(cfg, worker=args.worker, **run_args)

    return cli.guard(go)
