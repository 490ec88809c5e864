"""Serve a logged model over HTTP on 127.0.0.1 with `mlflow models serve`, and a client for it.

    kerasflow serve MODEL_URI [--port 5001]   # `make serve MODEL=models:/NAME@champion`

Request (POST /invocations, Content-Type: application/json): uint8 RGB images already resized to the
model's input size, as nested lists, {"inputs": [[[[r, g, b], ...], ...], ...]}. Response:
{"predictions": [[p], ...]} where p is the probability of class 1 (binary models; class names are in
the model's metadata), or one probability per class otherwise. kerasflow predict does both sides of that.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from kerasflow import ports
from kerasflow.errors import UserError
from kerasflow.track import registry, store, tracking
from kerasflow.train.evaluation import class_probabilities, predicted_classes
from kerasflow.train.examples import resize_uint8

log = logging.getLogger(__name__)

# Lazy imports: mlflow, tensorflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).


def serve_command(uri: str, port: int) -> list[str]:
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return [str(mlflow_bin), "models", "serve", "-m", uri, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port)]


def serve(uri: str, port: int, store_dir: str, any_flavor: bool = False) -> int:
    """Check the port and the model (a bad URI fails here, not inside the server), then serve it.

    Only Keras models by default: a store may come from another machine (`make pull`), and loading a
    pickled python_function model runs whatever code it was pickled with. The model is resolved here,
    where the store is open (a run made through the store's server has `mlflow-artifacts:/` files,
    which `mlflow models serve` on the bare database could not read), into a folder removed at the end.
    """

    import mlflow


    ports.check_port(port, "the model server")
    with registry.opened(store_dir) as c, tempfile.TemporaryDirectory(prefix="kerasflow-serve-") as tmp:
        registry.resolve(uri, c)
        flavors = sorted(mlflow.models.get_model_info(uri).flavors)
        if "keras" not in flavors and not any_flavor:
            raise UserError(f"{uri} is not a Keras model (flavors: {', '.join(flavors)}): loading it may "
                            "run code pickled on another machine; pass --any-flavor if you trust it")
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri(store_dir),
               # uvicorn and mlflow must be found on PATH by the server it starts
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        log.info(f"serving {uri} on http://127.0.0.1:{port}/invocations (Ctrl-C stops)")
        server = subprocess.Popen(serve_command(local, port), env=env)
        try:
            with tracking.signals_as_interrupt():  # SIGTERM/SIGHUP: stop the server, remove the copy
                return server.wait()
        except KeyboardInterrupt:
            server.terminate()
            server.wait(timeout=30)
            raise


def model_metadata(uri: str, store_dir: str) -> dict[str, Any]:
    import mlflow


    with registry.opened(store_dir) as c:
        registry.resolve(uri, c)
        return dict(mlflow.models.get_model_info(uri).metadata or {})


def load_images(paths: list[str], size: int) -> np.ndarray:
    """Files -> (N, size, size, 3) uint8, resized the way training resized them."""
    import tensorflow as tf


    out = []
    for path in paths:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.OpError, ValueError):
            raise UserError(f"cannot read image {path}: give PNG/JPEG/BMP/GIF files") from None
        out.append(resize_uint8(image, size).numpy())
    return np.stack(out)


def request(url: str, images: np.ndarray, timeout: float = 60) -> list[Any]:
    if not url.startswith(("http://", "https://")):
        raise UserError(f"--url {url} is not an http(s) URL: give the model server's, e.g. "
                        "http://127.0.0.1:5001")
    body = json.dumps({"inputs": images.tolist()}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/invocations", data=body,  # noqa: S310 - http(s)
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310 - http(s) checked above
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as exc:
        raise UserError(f"the model server answered {exc.code}: {exc.read().decode()[:300]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot reach the model server at {url} ({getattr(exc, 'reason', exc)}): "
                        "start it with `make serve MODEL=...`") from None


def describe(predictions: list[Any], class_names: list[str]) -> list[tuple[str, float]]:
    """(predicted class, its probability) per image."""

    probs = class_probabilities(np.asarray(predictions, float).reshape(len(predictions), -1))
    return [(class_names[k], float(p[k])) for p, k in zip(probs, predicted_classes(probs), strict=True)]
