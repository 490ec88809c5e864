"""Re-create a tracked run from its MLflow records and say whether the result matches.

    make reproduce RUN=<run id>          (kerasflow reproduce RUN_ID [--strict] [--check] [--apply-diff])

See kerasflow/experiments/reproduce.py for what is checked and compared.
"""

from __future__ import annotations

from kerasflow import cli
from kerasflow.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("run_id", help="the run to re-create (its id, as `make runs` or the UI shows it)")
    p.add_argument("--strict", action="store_true", help="refuse to train when any check differs")
    p.add_argument("--check", action="store_true", help="print the checks only; train nothing")
    p.add_argument("--apply-diff", action="store_true",
                   help="apply and run the run's logged uncommitted diff (code that came with the store: "
                        "read it first); without it such a run is not re-created")
    p.add_argument("--tolerance", type=float, default=1e-6,
                   help="largest absolute metric difference still 'within tolerance' (default 1e-6)")
    p.add_argument("--output-dir", default="outputs/reproduce", help="where the new run's folder goes")
    cli.store_flags(p, experiment=False)
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.experiments import reproduce

        if not args.tolerance >= 0:
            raise UserError(f"--tolerance {args.tolerance} must be a number >= 0")
        result = reproduce.reproduce(args.run_id, store_dir=args.store, strict=args.strict,
                                     check_only=args.check, tolerance=args.tolerance,
                                     output_dir=args.output_dir, apply_diff=args.apply_diff)
        if result is not None:
            print(result.line(args.run_id))

    return cli.guard(go)
