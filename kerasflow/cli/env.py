"""Install a pinned lock into this Python's environment and link this checkout as `kerasflow`.

    python -m kerasflow env requirements.txt | --link-only      (`make env`, `make host-env`, the image)

Runs in a new, empty venv (stdlib only): uv with your pip's settings when it can, else pip.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("lock", nargs="?", help="the pinned requirements file")
    p.add_argument("--link-only", action="store_true", help="only link the checkout (the image's build)")
    args = p.parse_args(argv)
    if not args.link_only and not args.lock:
        p.error("give the lock (requirements.txt) or --link-only")

    def go() -> None:
        from kerasflow import env

        project = Path(env.__file__).resolve().parent.parent
        if not args.link_only:
            t0 = time.monotonic()
            used = env.install(sys.executable, args.lock)
            print(f"env: installed {args.lock} with {used} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        env.link_project(project)
        print(f"env: kerasflow linked from {project}", file=sys.stderr)

    return cli.guard(go)
