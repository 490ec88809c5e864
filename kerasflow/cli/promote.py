"""Point an alias (default @champion) at the best version of a registered model by a test metric.

    kerasflow promote NAME [--metric test_accuracy] [--alias champion] [--mode max|min]
    (`make promote NAME=demo METRIC=test_accuracy`; `--mode min` for losses)
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    cli.store_flags(p, experiment=False)
    p.add_argument("name")
    p.add_argument("--metric", default="test_accuracy")
    p.add_argument("--alias", default="champion")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.track import registry

        with registry.opened(args.store, write=True) as c:
            r = registry.promote(c, args.name, args.metric, args.alias, args.mode)
        was = f"; was v{r['previous']}" if r["previous"] else ""
        print(f"{r['name']}@{r['alias']} -> version {r['version']} ({r['metric']}={r['value']:.4f}, "
              f"best of {r['candidates']}{was})")

    return cli.guard(go)
