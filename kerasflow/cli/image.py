"""Build this checkout's image for your user, or reuse it (kerasflow/launch/image.py); prints its tag.

    kerasflow image          (`make image`)

The tag is kerasflow:<commit>[-dirty]-u<UID>.<GID>: each user of a shared engine has their own (files it
writes in the checkout are theirs). Build arguments come from the environment (BASE_IMAGE, TF_VARIANT,
PIP_INDEX_URL, ...: docs/gpu-server.md); the first build takes minutes, later ones reuse its layers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--root", type=cli.path, default=Path("."), help="the checkout (default: here)")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow import preflight
        from kerasflow.errors import UserError
        from kerasflow.launch import image

        engine = preflight.engine()
        if engine.status == preflight.FAIL:
            raise UserError(engine.line)

        def build(cmd: list[str], env: dict[str, str]) -> int:
            return subprocess.run(cmd, env=env, stdout=sys.stderr).returncode

        print(image.ensure(args.root.resolve(), build, lambda text: print(text, file=sys.stderr)))

    return cli.guard(go)
