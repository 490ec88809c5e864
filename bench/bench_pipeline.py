"""Input-pipeline throughput vs a generator pipeline, `train.py --help` time, one demo epoch, and the
start-up cost of an environment without .pyc files (`--only bytecode`).

    make bench                      # or: .venv/bin/python bench/bench_pipeline.py --images 3000 --repeats 3

Both pipelines read the same PNG files (drawn by the synthetic generator at 100-150 px, like the NIH
cell images), resize to --size and batch by 32. The baseline is the style of older templates: a Python
generator that decodes and `tf.image.resize`s each file, wrapped in `from_generator`, paying the decode
every epoch. Ours decodes once (`sources/image_dir.py`) and then gathers batches from memory
(`pipeline.to_tf_dataset`). Rounds are interleaved; medians are reported. Results: bench/results/*.json.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_pngs(root: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    from kerasflow.train.sources.synthetic import draw

    rng = np.random.default_rng(seed)
    for label, name in enumerate(("Parasitized", "Uninfected")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        sizes = rng.integers(100, 151, n // 2)
        for size in np.unique(sizes):
            count = int((sizes == size).sum())
            images, _ = draw(count, int(size), seed * 1000 + label * 200 + int(size))
            for i, image in enumerate(images):
                Image.fromarray(image).save(folder / f"s{size}_{i}.png")


def generator_pipeline(root: Path, size: int, batch: int):
    import tensorflow as tf

    files = sorted((p, label) for label, name in enumerate(("Parasitized", "Uninfected"))
                   for p in (root / name).glob("*.png"))

    def gen():
        for path, label in files:
            image = tf.io.decode_png(tf.io.read_file(str(path)), channels=3)
            yield tf.image.resize(image, (size, size)).numpy(), label

    spec = (tf.TensorSpec((size, size, 3), tf.float32), tf.TensorSpec((), tf.int32))
    return tf.data.Dataset.from_generator(gen, output_signature=spec).batch(batch).prefetch(2), len(files)


def count_pass(ds) -> int:
    n = 0
    for x, _ in ds:
        n += int(x.shape[0])
    return n


def bench_pipelines(images: int, size: int, batch: int, repeats: int, epochs: int) -> dict:
    import tensorflow as tf

    from kerasflow import config
    from kerasflow.train import pipeline
    from kerasflow.train.sources import image_dir

    rows: dict[str, list[float]] = {"generator": [], "ours_first_epoch": [], "ours_steady": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cells"
        make_pngs(root, images)
        cfg = config.load(None, ["data_source=image_dir", f"image_dir={root}", f"image_size={size}",
                                 f"cache_dir={Path(tmp) / 'cache'}", "cache_ram_mb=8192"])
        warm, _ = generator_pipeline(root, size, batch)  # start TF's runtime before any timing
        next(iter(warm))
        for _ in range(repeats):
            ds, n = generator_pipeline(root, size, batch)
            t0 = time.perf_counter()
            assert count_pass(ds) == n
            rows["generator"].append(n / (time.perf_counter() - t0))

            t0 = time.perf_counter()
            examples = image_dir.load(cfg)
            epoch = tf.Variable(0, dtype=tf.int64)
            idx = np.arange(len(examples))
            ds = pipeline.to_tf_dataset(examples, idx, batch, shuffle_seed=1, epoch=epoch)
            assert count_pass(ds) == len(idx)
            rows["ours_first_epoch"].append(len(idx) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for e in range(1, epochs):
                epoch.assign(e)
                count_pass(ds)
            rows["ours_steady"].append(len(idx) * (epochs - 1) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "images": images, "size": size, "batch": batch, "repeats": repeats, "epochs": epochs,
        "images_per_s": {k: round(v) for k, v in med.items()},
        "rounds": {k: [round(x) for x in v] for k, v in rows.items()},
        "steady_vs_generator": round(med["ours_steady"] / med["generator"], 1),
        "first_epoch_vs_generator": round(med["ours_first_epoch"] / med["generator"], 1),
    }


def bench_help(repeats: int = 5) -> dict:
    def timed(args: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True, cwd=ROOT)
        return time.perf_counter() - t0

    helps, imports = [], []
    for _ in range(repeats):
        helps.append(timed(["train.py", "--help"]))
        imports.append(timed(["-c", "import tensorflow"]))
    return {"train_help_s": round(statistics.median(helps), 3),
            "import_tensorflow_s": round(statistics.median(imports), 3)}


def bench_bytecode(repeats: int = 3) -> dict:
    """`import mlflow, tensorflow, keras` with the environment's .pyc files (what `make env` now writes)
    and without them (a pycache prefix pointing at an empty folder: Python compiles every module, as it
    did in an environment uv installed where PYTHONDONTWRITEBYTECODE=1), interleaved, medians."""
    code = "import mlflow, tensorflow, keras"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    compiled, source = [], []
    with tempfile.TemporaryDirectory() as empty:
        for _ in range(repeats):
            for into, extra in ((compiled, []), (source, ["-X", f"pycache_prefix={empty}"])):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, *extra, "-c", code], check=True, capture_output=True, env=env)
                into.append(time.perf_counter() - t0)
    with_pyc, without = statistics.median(compiled), statistics.median(source)
    return {"with_pyc_s": round(with_pyc, 2), "without_pyc_s": round(without, 2),
            "ratio": round(without / with_pyc, 1),
            "rounds": {"with_pyc": [round(x, 2) for x in compiled],
                       "without_pyc": [round(x, 2) for x in source]}}


def bench_demo_epoch() -> dict:
    import keras

    from kerasflow import config
    from kerasflow.train import training

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load(None, ["data_source=synthetic", "model=cnn", "image_size=48", "epochs=3",
                                 "synthetic_examples=2000", f"output_dir={tmp}", "run_name=bench"])
        prep = training.prepare(cfg)
        timer = Timer()
        training.fit(prep, extra_callbacks=[timer], verbose=0)
    return {"demo_epoch_s": [round(t, 2) for t in timer.times],
            "demo_epoch_s_steady_median": round(statistics.median(timer.times[1:]), 2),
            "demo_train_images": len(prep.splits.train)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4, help="epochs of our pipeline per round (1 + steady)")
    p.add_argument("--only", choices=["pipeline", "help", "demo", "bytecode"], action="append")
    args = p.parse_args()
    only = set(args.only or ["pipeline", "help", "demo"])
    result: dict = {"cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if "help" in only:
        result["help"] = bench_help()
    if "pipeline" in only:
        result["pipeline"] = bench_pipelines(args.images, args.size, args.batch, args.repeats, args.epochs)
    if "demo" in only:
        result["demo"] = bench_demo_epoch()
    if "bytecode" in only:
        result["bytecode"] = bench_bytecode()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
