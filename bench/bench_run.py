"""`make run` (foreground) against a bare `docker run` of the same tracked training, warm image.

    make bench-run      # or: .venv/bin/python bench/bench_run.py --rounds 5

Three ways to train the same short run (the demo CNN on synthetic images, one epoch, GPU=off) into the
same store's MLflow server, interleaved round by round after a warm-up of each:
  docker run   `docker run --rm --network host -v CHECKOUT:/workspace ... IMAGE python -m kerasflow track`
               (what a user would type by hand: no queue, no checks, no MLflow project)
  mlflow run   `mlflow run . --run-id ID ...` as make run starts it, the run made just before
  make run     `kerasflow run --foreground` (= make run): checks, server, run at queue time, line,
               image check, `kerasflow:latest` under its lock, then the same `mlflow run`
The overhead of make run is (make run - docker run); (mlflow run - docker run) is MLflow's own share.
Needs the engine and this checkout's image (`make image`); a dirty tree rebuilds the code layer each run,
so measure on a clean one. Prints a table and writes bench/results/run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PARAMS = {"data_source": "synthetic", "model": "cnn", "image_size": "32", "epochs": "1",
          "synthetic_examples": "200", "augment": "false", "output_dir": "outputs/bench-run"}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


class Ways:
    """The three ways, sharing one store, its server and the image."""

    def __init__(self, tag: str, tmp: Path) -> None:
        from kerasflow.storeops import server

        self.tag, self.store, self.logs = tag, tmp / "store", tmp / "logs"
        self.env = {**os.environ, "GPU": "off", "STORE": str(self.store), "LOGS": str(self.logs)}
        for key in ("MLFLOW_TRACKING_URI", "KERASFLOW_NOTIFY", "CPU_SLOTS", "SSH_CONNECTION", "TMUX"):
            self.env.pop(key, None)
        from kerasflow.launch import run

        self.logs.mkdir(parents=True)
        port, _ = server.server_port(self.store, None)
        request = run.Request(root=ROOT, store=self.store, logs=self.logs, name="bench")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        self.uri = run.ensure_server(request, port, run.Console(self.logs / "server.log"))  # warm for all
        self.env["PORT"] = self.uri.rsplit(":", 1)[1]

    def make_run(self, name: str) -> float:
        sets = [a for k, v in PARAMS.items() for a in ("-P", f"{k}={v}")]
        return timed([sys.executable, "-m", "kerasflow", "run", "--root", str(ROOT), "--foreground",
                      "--name", name, *sets], self.env)

    def mlflow_run(self, name: str) -> float:
        from kerasflow.launch import image, run

        request = run.Request(root=ROOT, store=self.store, logs=self.logs, name=name,
                              params=[f"{k}={v}" for k, v in PARAMS.items()])
        t0 = time.perf_counter()
        run_id, experiment_id = run.create_run(request, self.uri, self.logs / f"run-{name}.lock")
        image.docker("tag", self.tag, f"{image.repo()}:latest")
        cmd = run.mlflow_command(request, experiment_id, run_id)
        return time.perf_counter() - t0 + timed(cmd, {**self.env, "MLFLOW_TRACKING_URI": self.uri})

    def docker_run(self, name: str) -> float:
        keep = ["PYTHONHASHSEED=0", "TF_DETERMINISTIC_OPS=1", "KERAS_HOME=/opt/keras",
                "TFDS_DATA_DIR=/workspace/data/tfds", f"MLFLOW_TRACKING_URI={self.uri}"]
        cmd = ["docker", "run", "--rm", "--init", "--network", "host", "--name", f"kerasflow-{name}",
               "-v", f"{ROOT}:/workspace", "-w", "/workspace", "-v", "kerasflow-cuda-cache:/cache/nv",
               *[a for e in keep for a in ("-e", e)], self.tag, "python", "-m", "kerasflow", "track",
               *[a for k, v in PARAMS.items() for a in ("--set", f"{k}={v}")], "--set", f"run_name={name}"]
        return timed(cmd, self.env)


def measure(tag: str, rounds: int) -> dict[str, list[float]]:
    from kerasflow.storeops import server

    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        w = Ways(tag, Path(tmp))
        ways = {"docker run": w.docker_run, "mlflow run": w.mlflow_run, "make run": w.make_run}
        times: dict[str, list[float]] = {k: [] for k in ways}
        try:
            for way, fn in ways.items():  # warm-up: the server, the image's page cache, MLflow's imports
                fn(f"bench-warm-{way.split()[0]}")
            for r in range(rounds):
                order = list(ways)[r % 3:] + list(ways)[:r % 3]  # rotate who goes first
                for way in order:
                    times[way].append(ways[way](f"bench-{r}-{way.split()[0]}"))
                    print(f"round {r + 1}: {way} {times[way][-1]:.1f} s", file=sys.stderr)
        finally:
            server.stop(w.store)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from kerasflow.launch import image

    tag = image.tag(ROOT)
    if tag.endswith("-dirty"):
        print(f"note: {tag}: a dirty tree, so every make run rebuilds the code layer (commit first to "
              "measure the launcher alone)", file=sys.stderr)
    if not image.present(tag):
        raise SystemExit(f"no image {tag}: run `make image` first")
    times = measure(tag, args.rounds)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'way':<12} {'median s':>9}  {'over docker run':>16}  (rounds: {args.rounds}, interleaved)")
    for way, m in median.items():
        print(f"{way:<12} {m:>9.1f}  {m - median['docker run']:>+15.1f}s")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"times": times, "median": median, "image": tag}, indent=1))


if __name__ == "__main__":
    main()
