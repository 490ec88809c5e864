"""A store opened for looking at it from a notebook (notebooks/explore.ipynb): runs, curves, models.

Why a private MLflow server: a store holds runs of two kinds. Embedded runs (`make track`) have plain
artifact paths; runs made through a tracking server (`make run`) have `mlflow-artifacts:/` locations,
which MLflow resolves only through an HTTP server. A short-lived server on 127.0.0.1 over the store
(the same command `make ui` starts) reads both, and stops with the notebook's kernel.
"""

from __future__ import annotations

import atexit
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerasflow import ports
from kerasflow.errors import UserError
from kerasflow.serve.serving import describe
from kerasflow.storeops import server
from kerasflow.track import store as store_mod
from kerasflow.train.plots import metric_histories

# Lazy imports: matplotlib, mlflow, pandas, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import keras
    import pandas as pd
    from matplotlib.figure import Figure


class Explorer:
    """Runs, curves and models of one store, through a private MLflow server."""

    def __init__(self, store_dir: str | Path = store_mod.DEFAULT_STORE, port: int = 0,
                 start_timeout: float = 90) -> None:
        import mlflow


        self.store = _find_store(Path(store_dir))
        if not (self.store / store_mod.DB_FILE).is_file():
            raise UserError(f"no MLflow store at {self.store} (no {store_mod.DB_FILE}): pass the store "
                            "folder, e.g. explorer('store') after `make track` or `make run`")
        self.port = port or ports.free_port()
        cmd, env = server.command(self.store, self.port)
        log = self.store.parent / "logs" / "explore-server.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self._server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        atexit.register(self.close)
        self.uri = f"http://127.0.0.1:{self.port}"
        if not ports.wait_answers(self.uri, start_timeout, alive=lambda: self._server.poll() is None):
            self.close()
            raise UserError(f"the MLflow server over {self.store} did not start: see {log}")
        mlflow.set_tracking_uri(self.uri)
        self.client = mlflow.MlflowClient(self.uri)

    def runs(self, max_results: int = 200) -> pd.DataFrame:
        """Every finished run of every experiment, newest first, with its test metrics."""
        import mlflow

        experiments = [e.experiment_id for e in self.client.search_experiments()]
        frame = mlflow.search_runs(experiment_ids=experiments, filter_string="attributes.status = 'FINISHED'",
                                   max_results=max_results, order_by=["attributes.start_time DESC"])
        if frame.empty:
            return frame
        names = {e.experiment_id: e.name for e in self.client.search_experiments()}
        frame["experiment"] = frame["experiment_id"].map(names)
        frame["made_by"] = np.where(frame.get("tags.mlflow.project.backend", "").eq("local")
                                    if "tags.mlflow.project.backend" in frame else False,
                                    "mlflow run (make run)", "embedded (make track)")
        metrics = [c for c in frame.columns if c.startswith("metrics.test_")]
        return frame[["run_id", "tags.mlflow.runName", "experiment", "made_by", "status", *metrics]]

    def curves(self, run_ids: list[str], metric: str = "val_accuracy") -> Figure:
        """One line per run: `metric` at every epoch."""
        from matplotlib.figure import Figure


        fig = Figure(figsize=(6, 3.5))  # no pyplot: no global state, any backend (inline in Jupyter)
        ax = fig.subplots()
        names = [(run_id, self.client.get_run(run_id).info.run_name) for run_id in run_ids]
        metric_histories(ax, self.client, names, metric)
        fig.tight_layout()
        return fig

    def load_model(self, model_uri: str) -> tuple[keras.Model, dict[str, Any]]:
        """The Keras model and its metadata (image size, class names) from `models:/NAME@ALIAS` etc."""
        import mlflow

        info = mlflow.models.get_model_info(model_uri)
        return mlflow.keras.load_model(model_uri), dict(info.metadata or {})

    def classify(self, model_uri: str, images: np.ndarray) -> pd.DataFrame:
        """Predicted class and its probability for uint8 images (N, size, size, 3)."""
        import pandas as pd


        model, meta = self.load_model(model_uri)
        probabilities = model.predict(images, verbose=0)
        rows = describe(list(probabilities), list(meta["class_names"]))
        return pd.DataFrame(rows, columns=["predicted", "probability"])

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def explorer(store_dir: str | Path = store_mod.DEFAULT_STORE) -> Explorer:
    return Explorer(store_dir)


def _find_store(path: Path) -> Path:
    """A relative store path from the working folder or the nearest folder above it that has one:
    JupyterLab runs a notebook in notebooks/, VS Code in the workspace root."""
    if path.is_absolute():
        return path
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / path / store_mod.DB_FILE).is_file():
            return folder / path
    return path
