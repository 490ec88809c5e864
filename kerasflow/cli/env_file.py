"""Internal (`make run`): tracking credentials into a 0600 env file for docker; prints the clean URI.

    kerasflow env-file PATH

MLflow prints and logs the `docker run -e NAME=VALUE ...` it builds, so credentials (and the study's
database URL) travel in a file handed to docker with --env-file (kerasflow/urlauth.py).
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("path")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow import urlauth

        print(urlauth.write_env_file(args.path))

    return cli.run(go)
