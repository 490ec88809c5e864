"""One store, any order: runs made through the store's server (`make run`, `make server`:
`mlflow-artifacts:/` locations) and embedded runs (`make track`: plain paths) live in the same
experiments, and every command reads every run, whichever came first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT, TINY, free_port, set_args, wait_http

pytestmark = pytest.mark.slow


def train(tmp: Path, name: str, experiment: str, server: str | None) -> subprocess.CompletedProcess[str]:
    sets = [*TINY, f"output_dir={tmp / 'out'}", f"cache_dir={tmp / 'cache'}", f"run_name={name}", "epochs=1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if server:
        env["MLFLOW_TRACKING_URI"] = server
    cmd = [sys.executable, "train_mlflow.py", "--store", str(tmp / "store"), "--experiment", experiment,
           *set_args(sets)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.heavy  # test_engine's one-store test proves it through make run
def test_embedded_and_server_runs_in_both_orders_and_every_model_loads_both_ways(tmp_path):
    import mlflow
    import numpy as np

    from kerasflow.track import store

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "kerasflow", "server", str(tmp_path / "store"),
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_http(f"{url}/health", proc=server)
        steps = [("server-first", "a1", url), ("server-first", "a2", None),  # server, then embedded
                 ("embedded-first", "b1", None), ("embedded-first", "b2", url)]  # and the other order
        for experiment, name, via in steps:
            result = train(tmp_path, name, experiment, via)
            assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        client = mlflow.MlflowClient(url)
        runs = {r.info.run_name: r for e in ("server-first", "embedded-first")
                for r in client.search_runs([client.get_experiment_by_name(e).experiment_id])}
        assert sorted(runs) == ["a1", "a2", "b1", "b2"]
        assert runs["a1"].info.artifact_uri.startswith("mlflow-artifacts:/")
        assert runs["b1"].info.artifact_uri.startswith("/")
        images = np.zeros((2, 32, 32, 3), np.uint8)
        models = {name: f"models:/{r.outputs.model_outputs[0].model_id}" for name, r in runs.items()}
        for name, uri in models.items():  # through the server (the UI, the notebook)
            mlflow.set_tracking_uri(url)
            assert mlflow.keras.load_model(uri).predict(images, verbose=0).shape[0] == 2, name
        with store.open_store(tmp_path / "store", create=False):  # opened directly (make serve, analyze)
            for name, uri in models.items():
                assert mlflow.keras.load_model(uri).predict(images, verbose=0).shape[0] == 2, name
                listed = mlflow.MlflowClient().list_artifacts(runs[name].info.run_id)
                assert "config.yaml" in {a.path for a in listed}, name
        # make serve on the store (no server) serves the model of a run the server made
        serve_port = free_port()
        copies = set(Path(tempfile.gettempdir()).glob("kerasflow-serve-*"))
        serving = subprocess.Popen([sys.executable, "-m", "kerasflow", "serve", models["a1"], "--port",
                                    str(serve_port), "--store", str(tmp_path / "store")], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{serve_port}/ping", proc=serving)
        finally:
            os.killpg(serving.pid, signal.SIGTERM)
            serving.wait(timeout=60)
        assert set(Path(tempfile.gettempdir()).glob("kerasflow-serve-*")) <= copies  # its copy is removed
    finally:
        mlflow.set_tracking_uri(None)
        server.terminate()
        server.wait(timeout=30)


def test_an_embedded_experiment_is_switched_to_proxied_locations_in_place(tmp_path):
    """What project_driver.bash does before `mlflow run` into an experiment `make track` created."""
    import mlflow

    from kerasflow.storeops.proxy_artifacts import proxy_experiment
    from kerasflow.track import store, tracking

    with store.open_store(tmp_path / "store") as uri:
        client = mlflow.MlflowClient()
        exp = tracking.experiment_id(client, uri, "made-by-track")
        old_run = client.create_run(exp).info.artifact_uri
    assert old_run.startswith(str(tmp_path / "store" / "artifacts" / "made-by-track"))
    assert proxy_experiment(tmp_path / "store", "made-by-track") == "mlflow-artifacts:/made-by-track"
    assert proxy_experiment(tmp_path / "store", "made-by-track") is None  # once
    assert proxy_experiment(tmp_path / "store", "no-such") is None
    with store.open_store(tmp_path / "store"):
        client = mlflow.MlflowClient()
        run = client.create_run(exp)
        client.log_text(run.info.run_id, "hello", "note.txt")
        assert run.info.artifact_uri == f"mlflow-artifacts:/made-by-track/{run.info.run_id}/artifacts"
    written = tmp_path / "store" / "artifacts" / "made-by-track" / run.info.run_id / "artifacts" / "note.txt"
    assert written.read_text() == "hello"  # the same folder the experiment always had


def test_an_experiment_made_in_the_devcontainer_is_switched_too(tmp_path):
    """`make track-demo` inside the devcontainer records /workspace/store/artifacts/<id>; `make run` on
    the host then refused the experiment ('keeps its artifacts outside the store'). It is the same folder
    under another mount: switched when that folder exists here, refused when it does not."""
    import mlflow

    from kerasflow.errors import UserError
    from kerasflow.storeops.proxy_artifacts import proxy_experiment
    from kerasflow.track import store

    with store.open_store(tmp_path / "store"):
        client = mlflow.MlflowClient()
        inside = client.create_experiment("in-container", artifact_location="/workspace/store/artifacts/7")
        client.create_experiment("elsewhere", artifact_location="/workspace/store/artifacts/8")
    (tmp_path / "store" / "artifacts" / "7").mkdir(parents=True)  # its runs' folder, seen from the host
    assert proxy_experiment(tmp_path / "store", "in-container") == "mlflow-artifacts:/7"
    with store.open_store(tmp_path / "store"):
        assert mlflow.MlflowClient().get_experiment(inside).artifact_location == "mlflow-artifacts:/7"
    with pytest.raises(UserError, match="outside the store"):
        proxy_experiment(tmp_path / "store", "elsewhere")  # no such folder here: not ours to take
