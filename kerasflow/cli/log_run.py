"""Log a finished run folder into a store, afterwards: a run trained by `kerasflow train`, on a box
without a server, or while the tracking server was away.

    kerasflow log-run outputs/NAME [--store DIR] [--experiment NAME] [--register NAME]
    (`make log-run FOLDER=outputs/NAME`)

One MLflow run, as `kerasflow track` would have made it from the same training: params, data tags,
config, the environment recorded when it trained, every epoch's metrics with their steps and times,
test metrics, figures, the model; tagged kerasflow.logged_afterwards. Once per store: a second call
finds it (or completes it, after a kill); a folder tracked live is completed, not copied.
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("run_dir", type=cli.path, help="the run folder (output_dir/run_name, e.g. outputs/NAME)")
    cli.store_flags(p)
    p.add_argument("--register", default="", metavar="NAME",
                   help="register the model under this name (default: do not register)")
    p.add_argument("--alias", default="candidate", help="alias for the registered version")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.track import store, tracking

        with store.open_store(args.store) as uri:
            run_id, now = tracking.log_folder(args.run_dir, uri=uri, experiment=args.experiment,
                                              register=args.register, alias=args.alias)
        print(f"{'logged' if now else 'already logged:'} {args.run_dir} as MLflow run {run_id} "
              f"(experiment '{args.experiment}')")

    return cli.guard(go)
