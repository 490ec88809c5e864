"""Concurrent writers: sqlite vs PostgreSQL, which store a team should track into.

    make bench-stores        # or: .venv/bin/python bench/bench_stores.py --writers 1 4 8 --steps 150

Each writer is a process that creates a run, logs 20 params, then `--steps` steps of 5 metrics (one
log_batch per step, as our per-epoch logger does) and ends the run; all writers of a round start
together at a barrier. Three stores, each fresh per round:
- sqlite, embedded: every writer opens store/mlflow.db itself (what `make track` processes do);
- sqlite through a server: `kerasflow server STORE` (what `make server` runs);
- PostgreSQL through a server: the same with `--db`, on a throwaway PostgreSQL 15 cluster on 127.0.0.1.
Servers run MLflow's default of 4 uvicorn workers. Throughput is logged metric values per second of
wall time (from the barrier to the last writer's end); errors are writer calls that raised, by message.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PASSWORD = "bench-" + os.urandom(6).hex()
METRICS_PER_STEP = 5


def writer(uri: str, steps: int, index: int, barrier: mp.Barrier, out: mp.Queue) -> None:
    """One training's worth of tracking calls; every failing call is counted, none stops the writer."""
    import mlflow
    from mlflow.entities import Metric, Param

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    errors: Counter[str] = Counter()
    barrier.wait()
    t0 = time.perf_counter()
    logged = 0
    try:
        exp = client.get_experiment_by_name("bench")
        exp_id = exp.experiment_id if exp else None
        if exp_id is None:
            try:
                exp_id = client.create_experiment("bench")
            except mlflow.exceptions.MlflowException:  # another writer made it first
                exp_id = client.get_experiment_by_name("bench").experiment_id
        run_id = client.create_run(exp_id, run_name=f"w{index}").info.run_id
        client.log_batch(run_id, params=[Param(f"p{i}", str(i)) for i in range(20)])
        for step in range(steps):
            now = int(time.time() * 1000)
            try:
                client.log_batch(run_id, metrics=[Metric(f"m{k}", step * 0.1 + k, now, step)
                                                  for k in range(METRICS_PER_STEP)])
                logged += METRICS_PER_STEP
            except Exception as exc:  # noqa: BLE001  (counted and reported: the point of the benchmark)
                errors[_short(exc)] += 1
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001
        errors[_short(exc)] += 1
    out.put({"logged": logged, "seconds": time.perf_counter() - t0, "errors": dict(errors)})


def _short(exc: BaseException) -> str:
    text = str(exc)
    for known in ("database is locked", "Max retries exceeded", "timed out", "deadlock"):
        if known in text:
            return known
    return f"{type(exc).__name__}: {text.splitlines()[0][:80] if text else ''}"


def round_of(uri: str, writers: int, steps: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(uri, steps, i, barrier, out)) for i in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    results = [out.get(timeout=1800) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    logged = sum(r["logged"] for r in results)
    return {"writers": writers, "metric_values": logged, "expected": writers * steps * METRICS_PER_STEP,
            "wall_s": round(wall, 2), "values_per_s": round(logged / wall), "errors": dict(errors)}


def _server(store: Path, db: str | None) -> tuple[subprocess.Popen, str]:
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "kerasflow", "server", str(store), "--port", str(port)]
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([*cmd, *(["--db", db] if db else [])], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):  # noqa: S310  (http, ours)
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("the MLflow server did not answer")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "stores.json"))
    args = p.parse_args()
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # an error is an error, not a silent retry
    from helpers import pgcluster

    rows = []
    with pgcluster.throwaway_cluster(PASSWORD) as cluster, tempfile.TemporaryDirectory() as tmp:
        for n in args.writers:
            for store in ("sqlite, embedded", "sqlite, server", "postgresql, server"):
                folder = Path(tmp) / f"{store.replace(', ', '-')}-{n}"
                folder.mkdir()
                if store == "sqlite, embedded":
                    from kerasflow.track import store as store_mod

                    with store_mod.open_store(folder) as uri:  # created once, as `make track` does
                        pass
                    row = round_of(uri, n, args.steps)
                else:
                    db = cluster.createdb(f"bench{n}") if store.startswith("postgresql") else None
                    server, url = _server(folder, db)
                    try:
                        row = round_of(url, n, args.steps)
                    finally:
                        server.terminate()
                        server.wait(timeout=60)
                row["store"] = store
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
