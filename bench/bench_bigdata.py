"""A decoded dataset larger than the RAM budget: the cache file path vs the RAM path.

    make bench-bigdata       # or: .venv/bin/python bench/bench_bigdata.py --images 27558 --size 128

The NIH malaria set's size by default: 27,558 PNG cells (drawn at 100-150 px, as bench_pipeline.py
does) decoded to 128x128 uint8 = 1.35 GB. Each mode runs in a fresh process, so its peak RSS is its own:
- ram: cache_ram_mb above the data size (the images live in one array in RAM);
- file, first run: cache_ram_mb=256, so the decoded images go to the cache file in cache_dir;
- file, later run: the same cache file, reused (what every run after the first does);
- file through a memory map: the previous code (numpy fancy indexing of the np.memmap in parallel
  numpy_function calls), for comparison.
The first run fills the cache; then the other three modes run interleaved, `--rounds` times.
Per mode: the load (decode, or opening the cache), the first shuffled epoch of `pipeline.to_tf_dataset`
(load + one pass), the median of the next epochs (steady images/s) and the peak RSS (ru_maxrss).
The input pipeline alone: no model, so the figures are the ceiling a training can consume.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np
import tensorflow as tf
from kerasflow import config
from kerasflow.train import data
from kerasflow.train import pipeline
from kerasflow.train.sources import image_dir

root, cache = sys.argv[1], sys.argv[2]
size, ram_mb, epochs = (int(a) for a in sys.argv[3:6])
mode = sys.argv[6]
cfg = config.load(None, ["data_source=image_dir", f"image_dir={root}", f"image_size={size}",
                         f"cache_dir={cache}", f"cache_ram_mb={ram_mb}"])
t0 = time.perf_counter()
examples = image_dir.load(cfg)
load_s = time.perf_counter() - t0
epoch = tf.Variable(0, dtype=tf.int64)
idx = np.arange(len(examples))
if mode == "memmap":  # the previous code, for comparison: numpy fancy indexing through the memory map
    images, labels = examples.images, examples.labels
    order = tf.constant(idx)
    def permute(_):
        key = tf.stack([tf.constant(1, tf.int64), epoch])
        return tf.random.experimental.stateless_shuffle(order, seed=key)
    def gather(i):
        x, y = tf.numpy_function(lambda j: (images[j], labels[j]), [i], (tf.uint8, tf.int32), stateful=False)
        x.set_shape((None, size, size, 3))
        return x, y
    ds = (tf.data.Dataset.range(1).map(permute).unbatch().batch(32)
          .map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
else:
    ds = pipeline.to_tf_dataset(examples, idx, 32, shuffle_seed=1, epoch=epoch)
def one_pass():
    n = 0
    for x, _ in ds:
        n += int(x.shape[0])
    assert n == len(idx)
one_pass()
first_s = time.perf_counter() - t0
steady = []
for e in range(1, epochs):
    epoch.assign(e)
    t1 = time.perf_counter()
    one_pass()
    steady.append(len(idx) / (time.perf_counter() - t1))
print(json.dumps({"images": len(idx), "in_file": isinstance(examples.images, np.memmap),
                  "data_mb": round(examples.images.nbytes / 2**20), "load_s": round(load_s, 1),
                  "first_epoch_images_per_s": round(len(idx) / first_s),
                  "steady_images_per_s": round(statistics.median(steady)),
                  "steady_rounds": [round(s) for s in steady],
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def run_mode(root: Path, cache: Path, size: int, ram_mb: int, epochs: int,  # noqa: PLR0913
             mode: str = "ours") -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(root), str(cache), str(size), str(ram_mb),
                           str(epochs), mode], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=27558)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4, help="passes per mode: the first, then steady ones")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "bigdata.json"))
    args = p.parse_args()
    from bench_pipeline import make_pngs

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "cells", Path(tmp) / "cache"
        t0 = time.perf_counter()
        make_pngs(root, args.images)
        print(f"{args.images} PNGs drawn in {time.perf_counter() - t0:.0f} s", flush=True)
        rows["file, first run"] = run_mode(root, cache, args.size, 256, args.epochs)  # fills the cache
        print("file, first run", json.dumps(rows["file, first run"]), flush=True)
        modes = (("ram", 1 << 16, "ours"), ("file, later run", 256, "ours"),
                 ("file through a memory map (the previous code)", 256, "memmap"))
        for round_ in range(args.rounds):  # interleaved: this VM's speed drifts between two levels
            for name, ram_mb, mode in modes:
                rows[f"{name} #{round_ + 1}"] = run_mode(root, cache, args.size, ram_mb, args.epochs, mode)
                print(name, json.dumps(rows[f"{name} #{round_ + 1}"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "modes": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
