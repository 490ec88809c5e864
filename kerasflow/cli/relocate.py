"""Make a copied MLflow store work where it now is, by rewriting its absolute artifact locations.

    kerasflow relocate STORE [--from OLD] [--to NEW] [--dry-run] [--check] [--kind]   (`make relocate`)

The old prefix is detected from the stored locations; the new one is the store's folder. Idempotent;
exactly the fields that hold locations change (see kerasflow/storeops/relocate.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("store", type=cli.store_path,
                   help="store folder (with mlflow.db, or a legacy mlruns/) or .db file")
    p.add_argument("--from", dest="old", help="old prefix (default: detected from the stored locations)")
    p.add_argument("--to", type=cli.path, help="new prefix (default: the store's folder)")
    p.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    p.add_argument("--check", action="store_true",
                   help="change nothing; list artifact locations that point nowhere (exit 1 if any)")
    p.add_argument("--kind", action="store_true", help="print the store kind (sqlite|file) and exit")
    args = p.parse_args(argv)
    broken = False

    def go() -> None:
        nonlocal broken
        from kerasflow.storeops import relocate
        from kerasflow.track import store

        if args.kind:
            print(store.kind(args.store)[0])
            return
        if args.check:
            broken = _check(args.store)
            return
        t0 = time.perf_counter()
        report = relocate.relocate(args.store, args.old, args.to, args.dry_run)
        print(f"{report.summary()} in {time.perf_counter() - t0:.2f} s")

    code = cli.guard(go)
    return 1 if code == 0 and broken else code


def _check(root: Path) -> bool:
    """Print what points nowhere or outside the store; True when something points nowhere."""
    from kerasflow.storeops import relocate

    total, missing = relocate.check(root)
    if missing:
        print(f"check: {len(missing)} of {total} artifact locations point nowhere, e.g. {missing[0]} "
              f"(fix: kerasflow relocate {root})")
    else:
        print(f"check: all {total} artifact locations exist")
    away = relocate.outside(root)
    if away:
        print(f"check: {len(away)} artifact locations point outside the store, e.g. {away[0]}: "
              "MLflow reads and writes there; relocate with --from, or remove those runs")
    return bool(missing)
