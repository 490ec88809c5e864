"""Serve a logged model over HTTP on 127.0.0.1 with `mlflow models serve`.

    kerasflow serve MODEL_URI [--port 5001] [--any-flavor]   (`make serve MODEL=models:/NAME@champion`)

Request and response formats: kerasflow/serve/serving.py; `kerasflow predict` is the client.
"""

from __future__ import annotations

from kerasflow import cli, ports


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("model", help="models:/NAME@ALIAS, models:/NAME/VERSION, models:/<id>, runs:/<id>/model")
    p.add_argument("--port", type=int, default=ports.SERVE_PORT)
    p.add_argument("--any-flavor", action="store_true",
                   help="also serve non-Keras models (a pickled model runs its code when loaded)")
    cli.store_flags(p, experiment=False)
    args = p.parse_args(argv)
    code = 0

    def go() -> None:
        nonlocal code
        from kerasflow.serve import serving

        code = serving.serve(args.model, args.port, args.store, args.any_flavor)

    return cli.guard(go) or code
