"""Look at tracked runs: filter, compare in a table, plot the best runs' validation curves.

    kerasflow runs --filter "metrics.test_accuracy > 0.9" --top 5 --plot best.png
    (`make runs FILTER="metrics.test_accuracy > 0.9"`)

The filter is MLflow's search syntax: metrics.X, params.X, tags.X, attributes.status, ...
"""

from __future__ import annotations

import sys

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    cli.store_flags(p)
    p.add_argument("--filter", default="", help="MLflow search filter")
    p.add_argument("--order-by", default="metrics.test_accuracy DESC")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--plot", type=cli.path, help="write the best runs' validation curves to this PNG")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.track import registry, runs

        if args.plot:
            runs.checked_plot_path(args.plot)
        with registry.opened(args.store) as c:
            found = runs.search(c, args.experiment, args.filter, args.order_by, args.top)
            print(runs.table(found))
            if args.plot:
                print(f"curves: {runs.plot_curves(c, found, args.plot)}", file=sys.stderr)

    return cli.guard(go)
