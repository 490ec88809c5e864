"""Build MLflow stores with real MLflow (in a separate process, as a user's training would).

    python tests/helpers/store_builder.py full sqlite|file PATH     experiments, runs, PNGs, models, registry
    python tests/helpers/store_builder.py bulk sqlite|file PATH N   N small runs, each with one artifact
    python tests/helpers/store_builder.py write PATH SECONDS        keep writing runs into a sqlite store

Prints a JSON summary (ids) on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"


def tracking_uri(kind: str, path: Path) -> str:
    from kerasflow.track import store

    if kind == "sqlite":
        uri = f"sqlite:///{path / 'mlflow.db'}"
        store.init_sqlite(uri)
        return uri
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def experiment(client, uri: str, name: str) -> str:
    from kerasflow.track import store

    return client.create_experiment(name, artifact_location=store.artifact_root(uri, name))


def png(path: Path, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def full(kind: str, path: Path) -> dict:
    import keras
    import mlflow
    import numpy as np

    uri = tracking_uri(kind, path)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    out: dict = {"experiments": {}, "runs": {}}
    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    y = (x.sum(axis=1) > 2).astype("float32")
    tmp = path.parent / f".{path.name}-build"
    tmp.mkdir(exist_ok=True)
    for e, name in enumerate(("alpha", "beta")):
        exp_id = experiment(client, uri, name)
        out["experiments"][name] = exp_id
        for r in range(2):
            with mlflow.start_run(experiment_id=exp_id, run_name=f"{name}-{r}") as run:
                mlflow.log_params({"lr": 0.1 * (r + 1), "name": name})
                for step in range(3):
                    mlflow.log_metric("score", 0.5 + 0.1 * step + r, step=step)
                mlflow.log_artifact(str(png(tmp / "plot.png", e * 10 + r)))
                mlflow.log_text(f"notes of {name}-{r}", "notes/readme.txt")
                model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
                model.compile("adam", "binary_crossentropy")
                if (e, r) == (0, 0):  # a LoggedModel written by autolog, as a user's training would
                    mlflow.keras.autolog(log_datasets=False, silent=True)
                    model.fit(x, y, epochs=2, verbose=0)
                    mlflow.keras.autolog(disable=True)
                    logged = mlflow.last_logged_model()
                    version = mlflow.register_model(f"models:/{logged.model_id}", "cells")
                    client.set_registered_model_alias("cells", "champion", version.version)
                elif (e, r) == (1, 0):
                    model.fit(x, y, epochs=1, verbose=0)
                    info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
                    version = mlflow.register_model(info.model_uri, "cells")
                    client.set_registered_model_alias("cells", "candidate", version.version)
                out["runs"][f"{name}-{r}"] = run.info.run_id
    out["sample_input"] = x[:3].tolist()
    return out


def bulk(kind: str, path: Path, n: int) -> dict:
    import mlflow
    from mlflow.entities import Metric, Param

    uri = tracking_uri(kind, path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = experiment(client, uri, "bulk")
    ids = []
    for i in range(n):
        run = client.create_run(exp_id)
        client.log_batch(run.info.run_id, metrics=[Metric("m", float(i), 0, 0)], params=[Param("i", str(i))])
        client.log_text(run.info.run_id, f"run {i}", "note.txt")
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return {"experiment": exp_id, "runs": len(ids), "first": ids[0]}


def write(path: Path, seconds: float) -> dict:
    import mlflow
    from mlflow.entities import Metric

    uri = tracking_uri("sqlite", path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("live") or None
    exp_id = exp.experiment_id if exp else experiment(client, uri, "live")
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        run = client.create_run(exp_id)
        client.log_batch(run.info.run_id, metrics=[Metric("m", float(s), 0, s) for s in range(20)])
        client.set_terminated(run.info.run_id)
        n += 1
    return {"written": n}


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "full":
        result = full(sys.argv[2], Path(sys.argv[3]))
    elif what == "bulk":
        result = bulk(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    else:
        result = write(Path(sys.argv[2]), float(sys.argv[3]))
    print(json.dumps(result))
