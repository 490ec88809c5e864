"""Relocation speed on 10,000-run stores, and the sed one-liner people use instead, side by side.

    make bench-relocate      # or: .venv/bin/python bench/bench_relocate.py --runs 10000 --rounds 3

File store: written by real MLflow (tests/helpers/store_builder.py bulk), moved; then per round, on fresh
copies of the moved store: `find STORE -name meta.yaml -exec sed -i 's#OLD#NEW#g' {} +` vs
`kerasflow relocate STORE` (whole process, start-up included), interleaved. sqlite store:
100 runs written by MLflow, their rows replicated in SQL to --runs, moved, then relocated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "store_builder.py"), *args], check=True,
                   capture_output=True)


def timed(cmd: list[str] | str, shell: bool = False) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, shell=shell, cwd=ROOT)
    return time.perf_counter() - t0


def file_store(tmp: Path, runs: int, rounds: int) -> dict:
    old = tmp / "server" / "mlruns"
    build("bulk", "file", str(old), str(runs))
    moved = tmp / "laptop" / "mlruns"
    moved.parent.mkdir(parents=True)
    old.rename(moved)
    rows: dict[str, list[float]] = {"sed": [], "kerasflow relocate": []}
    for _ in range(rounds):
        for name in rows:
            copy = tmp / f"copy-{name}" / "mlruns"
            shutil.rmtree(copy.parent, ignore_errors=True)
            shutil.copytree(moved, copy)
            if name == "sed":
                sed = f"find '{copy}' -name meta.yaml -exec sed -i 's#{old}#{copy}#g' {{}} +"
                rows[name].append(timed(sed, shell=True))
            else:
                rows[name].append(timed([sys.executable, "-m", "kerasflow", "relocate", str(copy)]))
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {"runs": runs, "seconds": {k: [round(x, 3) for x in v] for k, v in rows.items()},
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "ratio_vs_sed": round(med["kerasflow relocate"] / med["sed"], 2)}


def sqlite_store(tmp: Path, runs: int, rounds: int) -> dict:
    old = tmp / "server-db" / "store"
    build("bulk", "sqlite", str(old), "100")
    with sqlite3.connect(old / "mlflow.db") as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
        others = ", ".join(c for c in cols if c != "run_uuid")
        while db.execute("SELECT count(*) FROM runs").fetchone()[0] < runs:
            db.execute(f"INSERT INTO runs (run_uuid, {others}) SELECT lower(hex(randomblob(16))), {others} "
                       "FROM runs")
        total = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    moved = tmp / "laptop-db" / "store"
    moved.parent.mkdir(parents=True)
    old.rename(moved)
    process, inside = [], []
    for _ in range(rounds):
        copy = tmp / "copy-db" / "store"
        shutil.rmtree(copy.parent, ignore_errors=True)
        shutil.copytree(moved, copy)
        process.append(timed([sys.executable, "-m", "kerasflow", "relocate", str(copy)]))
        shutil.rmtree(copy.parent)
        shutil.copytree(moved, copy)
        from kerasflow.storeops import relocate

        t0 = time.perf_counter()
        report = relocate.relocate(copy)
        inside.append(time.perf_counter() - t0)
        assert report.changed["runs"] == total
    return {"runs": total, "process_s": [round(x, 3) for x in process],
            "relocate_call_s": [round(x, 3) for x in inside],
            "median_process_s": round(statistics.median(process), 3),
            "median_relocate_call_s": round(statistics.median(inside), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = sqlite_store(Path(tmp), args.runs, args.rounds)
        result["file"] = file_store(Path(tmp), args.runs, args.rounds)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "relocate.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
