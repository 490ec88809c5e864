"""`kerasflow push` on a store of many runs: the first push, then a second one with nothing new.

    make bench-push      # or: .venv/bin/python bench/bench_push.py --runs 1000 --steps 100

The source is a sqlite store written by MLflow's client: --runs finished runs, each with 2 params,
2 metrics of --steps steps and one small artifact. Pushed into a new sqlite store with the whole
`kerasflow push` process (start-up included), then again; the second push's time as a ratio of the
first says what "only what is new" costs when nothing is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(folder: Path, runs: int, steps: int) -> None:
    import mlflow
    from mlflow.entities import Metric, Param

    from kerasflow.track import store

    uri = store.sqlite_uri(folder / store.DB_FILE)
    store.init_sqlite(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench", artifact_location=store.artifact_root(uri, "bench"))
    for i in range(runs):
        run_id = client.create_run(exp, run_name=f"run-{i}").info.run_id
        metrics = [Metric(k, 0.001 * s + i, 1_700_000_000_000 + s, s) for k in ("loss", "val_accuracy")
                   for s in range(steps)]
        for j in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[j:j + 1000],
                             params=[Param("i", str(i)), Param("lr", "0.01")] if j == 0 else [])
        client.log_text(run_id, f"run {i}", "note.txt")
        client.set_terminated(run_id)


def push(source: Path, dest: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "kerasflow", "push", "--store", str(source), "--to", str(dest)]
    done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, done.stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kerasflow-bench-push-") as tmp:
        t0 = time.perf_counter()
        build(Path(tmp) / "source", args.runs, args.steps)
        built = time.perf_counter() - t0
        first, first_out = push(Path(tmp) / "source", Path(tmp) / "dest")
        second, second_out = push(Path(tmp) / "source", Path(tmp) / "dest")
    print(json.dumps({"runs": args.runs, "steps": args.steps, "metric_values": args.runs * args.steps * 2,
                      "build_s": round(built, 1), "first_push_s": round(first, 1),
                      "second_push_s": round(second, 1), "second_over_first": round(second / first, 3),
                      "first": first_out, "second": second_out}, indent=2))


if __name__ == "__main__":
    main()
