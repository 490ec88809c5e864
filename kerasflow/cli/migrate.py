"""Move a legacy file store (mlruns/) onto sqlite, which MLflow 3 needs for its newer features.

    kerasflow migrate MLRUNS [--db PATH]      (`make migrate STORE=path/to/mlruns`)

Relocates the file store to where it is now, drops exact duplicate metric lines (which make
`mlflow migrate-filestore` abort), migrates, then checks that every artifact location of the new
database exists. Artifacts stay where they are (mlruns/).
"""

from __future__ import annotations

from kerasflow import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.add_argument("source", type=cli.path, help="the legacy store (mlruns/ or its parent)")
    p.add_argument("--db", type=cli.path, help="new sqlite database (default: mlflow.db next to mlruns/)")
    args = p.parse_args(argv)

    def go() -> None:
        from kerasflow.storeops import migrate, relocate

        db, removed, report = migrate.migrate(args.source, args.db)
        total, missing = relocate.check(db)
        print(f"migrated into {db} (dropped {removed} duplicate metric lines); {report.summary()}; "
              f"{total - len(missing)}/{total} artifact locations exist")
        print(f"open it: kerasflow ui {db.parent}   (make ui STORE={db.parent})")

    return cli.guard(go)
