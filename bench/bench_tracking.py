"""MLflow tracking overhead, and the cost of logging the model vs a plain `model.save`.

    make bench-tracking      # or: .venv/bin/python bench/bench_tracking.py --epochs 15 --pairs 3

Overhead: the same synthetic training (>= 30 s) untracked (`training.train`) and tracked
(`tracking.train_tracked`, sqlite store), interleaved in one process after a warm-up run; the tracked
time is split into the model logging and the rest. Model logging: `model.save` vs `mlflow.keras.log_model`
with our pinned requirements vs with MLflow inferring them, for the demo CNN and a VGG16 (weights=None).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def overhead(epochs: int, pairs: int) -> dict:
    from kerasflow import config
    from kerasflow.track import tracking
    from kerasflow.train import training

    model_log_s: list[float] = []
    original = tracking.log_model

    def timed_log_model(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            model_log_s.append(time.perf_counter() - t0)

    tracking.log_model = timed_log_model
    rows: dict[str, list[float]] = {"untracked": [], "tracked": [], "tracked_without_model": []}
    with tempfile.TemporaryDirectory() as tmp:
        def cfg(name: str) -> config.Config:
            return config.load(None, ["data_source=synthetic", "model=cnn", "image_size=48",
                                      f"epochs={epochs}", "synthetic_examples=2000",
                                      f"output_dir={tmp}/out", f"run_name={name}",
                                      f"cache_dir={tmp}/cache"])

        training.train(cfg("warmup"), verbose=0)
        for i in range(pairs):
            t0 = time.perf_counter()
            training.train(cfg(f"plain{i}"), verbose=0)
            rows["untracked"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tracking.train_tracked(cfg(f"tracked{i}"), store_dir=f"{tmp}/store", verbose=0)
            rows["tracked"].append(time.perf_counter() - t0)
            rows["tracked_without_model"].append(rows["tracked"][-1] - model_log_s[-1])
    tracking.log_model = original
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "epochs": epochs, "pairs": pairs,
        "seconds": {k: [round(x, 2) for x in v] for k, v in rows.items()},
        "median_s": {k: round(v, 2) for k, v in med.items()},
        "model_log_s": [round(x, 2) for x in model_log_s],
        "overhead_without_model_pct": round(100 * (med["tracked_without_model"] / med["untracked"] - 1), 1),
        "overhead_with_model_pct": round(100 * (med["tracked"] / med["untracked"] - 1), 1),
    }


def model_logging(repeats: int) -> dict:
    import keras
    import mlflow

    from kerasflow import config
    from kerasflow.track import store, tracking
    from kerasflow.train import models

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, store.activated(f"sqlite:///{tmp}/mlflow.db"):
        mlflow.set_experiment("bench")
        cnn = models.build(config.load(None, ["model=cnn", "image_size=48"]), 2)
        vgg = models.build(config.load(None, ["model=vgg16", "weights=none", "image_size=96"]), 2)
        for name, model in (("cnn", cnn), ("vgg16", vgg)):
            times: dict[str, list[float]] = {"model.save": [], "log_model (pinned)": [],
                                             "log_model (inferred)": []}
            with mlflow.start_run():
                for i in range(repeats):
                    t0 = time.perf_counter()
                    model.save(f"{tmp}/{name}{i}.keras")
                    times["model.save"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    mlflow.keras.log_model(model, name=f"p{i}", pip_requirements=tracking._requirements())
                    times["log_model (pinned)"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    mlflow.keras.log_model(model, name=f"i{i}")
                    times["log_model (inferred)"].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            out[name] = {"params": model.count_params(), "median_s": {k: round(v, 3) for k, v in med.items()},
                         "pinned_vs_save": round(med["log_model (pinned)"] / med["model.save"], 2),
                         "inferred_vs_save": round(med["log_model (inferred)"] / med["model.save"], 2)}
        keras.backend.clear_session()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=["overhead", "model"], action="append")
    args = p.parse_args()
    only = set(args.only or ["overhead", "model"])
    result: dict = {"cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if "model" in only:
        result["model_logging"] = model_logging(args.repeats)
    if "overhead" in only:
        result["overhead"] = overhead(args.epochs, args.pairs)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracking.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
