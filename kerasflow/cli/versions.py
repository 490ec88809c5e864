"""A registered model's versions, one a line: its run, aliases and test metrics.

    kerasflow versions NAME      (`make versions NAME=demo`)
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    cli.store_flags(p, experiment=False)
    p.add_argument("name")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.track import registry

        with registry.opened(args.store) as c:
            for v in registry.versions(c, args.name):
                aliases = " ".join(f"@{a}" for a in v["aliases"])
                shown = " ".join(f"{k}={x:.4f}" for k, x in sorted(v["metrics"].items()))
                print(" ".join(part for part in (f"v{v['version']}", f"run {v['run_id']}", aliases, shown)
                               if part))

    return cli.guard(go)
