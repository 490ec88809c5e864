"""Evaluate finished runs' test predictions: Youden threshold, mlflow.models.evaluate metrics, ROC/PR.

Results are logged back to each run (metrics analysis_*, figure analysis/roc_pr.png, confusion matrix).
See kerasflow/experiments/analyze.py.

examples:
  kerasflow analyze --filter "tags.kerasflow.level = 'inner_fold'"
  kerasflow analyze --filter "metrics.test_accuracy > 0.9" --positive parasitized
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("--filter", default="", help="MLflow search filter, e.g. \"metrics.test_accuracy > 0.9\"")
    p.add_argument("--positive", default="",
                   help="positive class for the threshold (default: the first class, parasitized)")
    cli.store_flags(p)
    p.add_argument("--max-runs", type=int, default=200, help="analyse at most this many runs")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.experiments import analyze

        analyze.analyze(args.filter, store_dir=args.store, experiment=args.experiment,
                         positive=args.positive or None, max_runs=args.max_runs)

    return cli.guard(go)
