"""Merge this store's runs into another store: a team server, a teammate's store folder, a backup.

    kerasflow push --to http://server:5000 [--store DIR] [--experiment NAME] [--filter F] [--since WHEN]
    (`make push TO=...`)

Copies what the destination lacks and updates what grew (new runs, metric steps, params, tags,
artifacts, a status that changed); a second push of the same runs copies nothing. Runs keep their
experiment (by name), nesting, history and artifacts; each copy is tagged with its source run id.
See docs/stores.md.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

from kerasflow import cli
from kerasflow.errors import UserError

AGE_UNITS = {"m": 60, "h": 3600, "d": 86400}


def since_ms(text: str, now: float | None = None) -> int:
    """--since as epoch milliseconds: a date or local time (2026-12-01, 2026-12-01T14:30) or an age
    (90m, 12h, 7d)."""
    now = time.time() if now is None else now
    age = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if age:
        return int((now - int(age[1]) * AGE_UNITS[age[2]]) * 1000)
    try:
        return int(datetime.fromisoformat(text.strip()).timestamp() * 1000)
    except ValueError:
        raise UserError(f"bad --since {text!r}: give a date (2026-12-01), a time (2026-12-01T14:30) "
                        "or an age (90m, 12h, 7d)") from None


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    cli.store_flags(p, experiment=False)
    p.add_argument("--to", required=True, metavar="DEST", type=cli.nonempty,
                   help="destination: a store folder, or a server URL (http[s]://[user:password@]host:port)")
    p.add_argument("--experiment", action="append", default=None, metavar="NAME", type=cli.nonempty,
                   help="only this experiment (repeatable; default: every experiment)")
    p.add_argument("--filter", default="", help="only runs matching this MLflow search filter")
    p.add_argument("--since", default="", metavar="WHEN",
                   help="only runs started since WHEN: a date, a time (2026-12-01T14:30) or an age (12h, 7d)")
    p.add_argument("--full", action="store_true",
                   help="compare every history and file of runs already copied (default: a finished run "
                        "whose status, params, tags and latest metrics match its copy is skipped)")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.storeops import push

        t0 = time.perf_counter()
        since = since_ms(args.since) if args.since else None
        report = push.push(args.store, args.to, experiments=args.experiment, filter_string=args.filter,
                            since=since, full=args.full)
        print(f"push: {report.summary()} in {time.perf_counter() - t0:.1f} s")

    return cli.guard(go)
