"""The speed keys on this CPU: precision, XLA, steps_per_execution and MirroredStrategy, as ratios to
float32 measured in one run.

    make bench-speed         # or: .venv/bin/python bench/bench_speed.py --rounds 2 --epochs 3

Every variant trains the same model on the same synthetic images in a fresh process (dtype policy,
XLA and logical devices are process-wide), rounds interleaved; the figure is the median steady epoch
(epochs 2+, so XLA's compilation and tf.function tracing are left out) as training images per second.
All variants use deterministic: false and rotation: 0, the settings jit_compile needs, so the ratios
compare like with like. `mirrored` splits this CPU into 2 logical devices: it shows the mechanics'
cost, not a speed-up (both replicas share the same 2 cores). A CPU says little about a GPU: see
BENCHMARKS.md for what to expect on an H100 and why (not measured: no GPU with TensorFlow here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    "float32": [],
    "mixed_bfloat16": ["precision=mixed_bfloat16"],
    "mixed_float16": ["precision=mixed_float16"],
    "jit_compile": ["jit_compile=true"],
    "steps_per_execution=8": ["steps_per_execution=8"],
    "mirrored (2 CPU devices)": ["distribute=mirrored"],
}

CHILD = r"""
import json, sys, time
devices = int(sys.argv[1])
import tensorflow as tf
if devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
import keras
from kerasflow import config
from kerasflow.train import training

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.t0)

times = []
cfg = config.load(None, sys.argv[2:])
prep = training.prepare(cfg)
history = training.fit(prep, extra_callbacks=[Timer()], verbose=0)
print(json.dumps({"epoch_s": times, "train_images": len(prep.splits.train),
                  "val_accuracy": max(history["val_accuracy"])}))
"""


def run_variant(name: str, sets: list[str], common: list[str], tmp: str, index: int) -> dict:
    devices = 2 if "distribute=mirrored" in sets else 1
    args = [*common, *sets, f"output_dir={tmp}/out", f"run_name={index}", f"cache_dir={tmp}/cache"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(devices), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    steady = statistics.median(result["epoch_s"][1:])
    return {"images_per_s": result["train_images"] / steady, "first_epoch_s": result["epoch_s"][0],
            "val_accuracy": result["val_accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed.json"))
    args = p.parse_args()
    import tempfile

    common = ["data_source=synthetic", "model=cnn", "synthetic_examples=2000",
              f"image_size={args.image_size}",
              f"epochs={args.epochs}", "deterministic=false", "rotation=0", "batch_size=32"]
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        index = 0
        for _ in range(args.rounds):
            for name, sets in VARIANTS.items():
                index += 1
                runs[name].append(run_variant(name, sets, common, tmp, index))
                print(name, json.dumps(runs[name][-1]), flush=True)
    base = statistics.median(r["images_per_s"] for r in runs["float32"])
    table = {name: {"images_per_s": round(statistics.median(r["images_per_s"] for r in rs)),
                    "ratio_to_float32": round(statistics.median(r["images_per_s"] for r in rs) / base, 2),
                    "first_epoch_s": round(statistics.median(r["first_epoch_s"] for r in rs), 1),
                    "val_accuracy": [round(r["val_accuracy"], 3) for r in rs]}
             for name, rs in runs.items()}
    print(json.dumps(table, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "common": common, "table": table,
                                          "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
