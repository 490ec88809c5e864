"""`kerasflow push` on a store of many runs: the first push, then a second one with nothing new.

    make bench-push      # or: .venv/bin/python bench/bench_push.py --runs 1000 --steps 100

The source is a sqlite store written by MLflow's client: --runs finished runs, each with 2 params,
2 metrics of --steps steps and one small artifact. Pushed with the whole `kerasflow push` process
(start-up included) into a new sqlite store, and into a new store behind `kerasflow server` (HTTP,
proxied artifacts); then again, three times, with nothing new: the median second push as a ratio of
the first says what "only what is new" costs when nothing is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
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


def push(source: Path, dest: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "kerasflow", "push", "--store", str(source), "--to", dest]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, done.stdout.strip()


def server(folder: Path) -> tuple[subprocess.Popen, str]:
    """`kerasflow server` over a new store folder, on a free port, answering /health."""
    from kerasflow import ports

    port = ports.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kerasflow", "server", str(folder), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    if not ports.wait_answers(url, 300, lambda: proc.poll() is None):
        raise SystemExit("the server did not answer in 300 s")
    return proc, url


def measure(source: Path, dest: str) -> dict:
    first, first_out = push(source, dest)
    again = [push(source, dest) for _ in range(3)]
    second = statistics.median(t for t, _ in again)
    return {"first_push_s": round(first, 1), "second_push_s": round(second, 2),
            "second_over_first": round(second / first, 3), "first": first_out, "second": again[0][1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kerasflow-bench-push-") as tmp:
        t0 = time.perf_counter()
        build(Path(tmp) / "source", args.runs, args.steps)
        built = time.perf_counter() - t0
        into_store = measure(Path(tmp) / "source", str(Path(tmp) / "dest"))
        proc, url = server(Path(tmp) / "served")
        try:
            into_server = measure(Path(tmp) / "source", url)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    print(json.dumps({"runs": args.runs, "steps": args.steps, "metric_values": args.runs * args.steps * 2,
                      "build_s": round(built, 1), "into_a_store": into_store, "into_a_server": into_server},
                     indent=2))


if __name__ == "__main__":
    main()
