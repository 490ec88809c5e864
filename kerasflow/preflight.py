"""What `make run` checks in the foreground before it detaches, builds or pulls anything.

A run that detaches into tmux and only then finds no engine, no NVIDIA runtime, no dataset or a foreign
server on its port fails where nobody looks (logs/NAME.log), after minutes of building an 8 GB image.
These checks take seconds and end in one line with the fix. Each returns a `Check`; `make doctor`
(kerasflow/doctor.py) shows them in its table beside the rows only it has. No TensorFlow here: the light
host env (Python >= 3.10, MLflow and NumPy, no TensorFlow) runs them.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerasflow import box, config, notify, ports
from kerasflow.errors import UserError
from kerasflow.storeops import server
from kerasflow.train import sources

# Lazy imports: mlflow, inside the store row's write (seconds to load; `make run`'s checks skip that row).

PASS, NOTE, FAIL = "pass", "note", "fail"

# entry points whose training reads the config's dataset (analyze and reproduce read runs, not data)
NEEDS_DATA = ("main", "splits", "cv", "tune")
# what the first `make run` builds (BENCHMARKS.md, "Image builds")
IMAGE_SIZE = "8.1 GB (GPU variant; TF_VARIANT=cpu: 3.6 GB)"
IMAGE_TIME = "a few minutes with a fast link to the package index, longer on a slow one"


@dataclass(frozen=True)
class Check:
    """One check's verdict; `line` is the problem and its fix (FAIL) or what the user should know."""

    name: str
    status: str
    line: str


ENGINE_TIMEOUT = 15.0  # seconds for `docker info`: a healthy engine answers in under one


def docker(*args: str, timeout: float = ENGINE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`docker ARGS`, never raising: no docker binary is status 127, no answer within `timeout` 124 (a
    DOCKER_HOST socket that accepts and never answers hung doctor for a minute, then a traceback)."""
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                              errors="replace")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], 124, "", f"no answer within {timeout:.0f} s")
    except OSError as exc:
        return subprocess.CompletedProcess([], 127, "", f"docker cannot run ({exc.strerror or exc})")


def engine() -> Check:
    """The docker CLI is installed and its daemon answers (as this user)."""
    if not shutil.which("docker"):
        return Check("engine", FAIL, "docker is not installed: install Docker Engine "
                                     "(https://docs.docker.com/engine/install/)")
    out = docker("info", "--format", "{{.ServerVersion}}")
    if out.returncode != 0 or not out.stdout.strip():
        why = (out.stderr.strip().splitlines() or ["no answer"])[0]
        return Check("engine", FAIL, f"the Docker daemon is not reachable ({why}): start it (sudo systemctl "
                                     "start docker) or check DOCKER_HOST and your docker group membership")
    return Check("engine", PASS, f"Docker engine {out.stdout.strip()}")


def gpu_runtime(mode: str) -> Check:
    """GPU=on needs the NVIDIA container runtime and a GPU; GPU=auto falls back to CPU with a note."""
    if mode == "off":
        return Check("gpu", PASS, "GPU=off: training on CPU")
    if mode not in ("auto", "on"):
        return Check("gpu", FAIL, f"GPU={mode} is not one of auto, on, off: set GPU=auto, on or off")
    runtimes = docker("info", "--format", "{{json .Runtimes}}").stdout
    gpus = len(box.gpu_indexes())
    if "nvidia" in runtimes and gpus:
        return Check("gpu", PASS, f"NVIDIA runtime, {gpus} GPU(s)")
    why = ("nvidia-smi lists no GPU" if "nvidia" in runtimes
           else "no NVIDIA container runtime in `docker info`")
    if mode == "on":
        return Check("gpu", FAIL, f"GPU=on but {why}: install the NVIDIA driver and nvidia-container-toolkit "
                                  "(then `sudo nvidia-ctk runtime configure --runtime=docker` and restart "
                                  "docker), or run with GPU=off")
    return Check("gpu", NOTE, f"{why}: training on CPU (GPU=on makes this an error)")


def gpus_in_image(image: str, present: bool) -> Check:
    """`--gpus` really works: our image runs nvidia-smi. Needs the image, so before it exists: a note."""
    if not present:
        return Check("gpus-in-image", NOTE, "`--gpus` is checked in the image once it is built (this run "
                                            "builds it first)")
    out = docker("run", "--rm", "--gpus", "all", image, "nvidia-smi", "-L", timeout=120)
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("gpus-in-image", FAIL, f"`docker run --gpus all {image} nvidia-smi -L` failed ({why}): "
                                            "fix the NVIDIA container toolkit (nvidia-ctk runtime configure "
                                            "--runtime=docker; restart docker), or run with GPU=off")
    return Check("gpus-in-image", PASS, "the image sees the GPU(s)")


def image(tag: str, present: bool) -> Check:
    """The image is there, or the user learns now that the first run builds it (time and size)."""
    if present:
        return Check("image", PASS, f"{tag} is built")
    return Check("image", NOTE, f"{tag} is not built yet: this run builds it first ({IMAGE_TIME}; "
                                f"{IMAGE_SIZE})")


def host_path(path: str, root: Path, data_mount: str) -> tuple[Path | None, str]:
    """Where a config path that the container reads lies on the host: /data/... is DATA, /workspace/...
    and relative paths are the checkout. (None, fix) when it cannot be there."""
    if path == "/data" or path.startswith("/data/"):
        if not data_mount:
            return None, (f"{path} is under /data, but DATA is not set: DATA=/host/folder make run ... "
                          "mounts that folder at /data")
        return Path(data_mount) / path[len("/data"):].lstrip("/"), ""
    if path == "/workspace" or path.startswith("/workspace/"):
        return root / path[len("/workspace"):].lstrip("/"), ""
    if path.startswith("/"):
        return None, (f"{path} is an absolute path the container does not have: put the data in the "
                      "checkout (a relative path) or mount it with DATA=/host/folder and use /data/...")
    return root / path, ""


def data(cfg: config.Config, entry: str, root: Path, data_mount: str) -> Check:
    """The folder the data source reads is where the container will look for it, with data in it."""
    source = sources.get(cfg.data_source)
    if entry not in NEEDS_DATA or source.folder_key is None:
        return Check("data", PASS, f"data_source={cfg.data_source}: nothing to download")
    path = getattr(cfg, source.folder_key)
    host, fix = host_path(path, root, data_mount)
    if host is None:
        return Check("data", FAIL, f"{source.folder_key}={fix}")
    try:
        return Check("data", PASS, sources.look(cfg, host))
    except UserError as exc:
        return Check("data", FAIL, str(exc))


def tracking(uri: str, port: int, store: Path, logs: Path) -> Check:
    """A given server answers; else this store's port holds this user's server of this store, or can
    be bound (a socket bound but not listening, or a wedged server, is not free: it is tried by binding)."""
    if uri:
        if not uri.startswith(("http://", "https://")):
            return Check("tracking", FAIL, "MLFLOW_TRACKING_URI must be an http(s) server for make run (the "
                                           f"container cannot open a host database): unset it to use a local "
                                           f"server over {store}")
        if not ports.answers(uri):
            return Check("tracking", FAIL, "the MLflow server at MLFLOW_TRACKING_URI does not answer "
                                           "/health: start it, or fix/unset MLFLOW_TRACKING_URI")
        return Check("tracking", PASS, "the MLflow server from MLFLOW_TRACKING_URI answers")
    if not 1 <= port <= 65535:
        return Check("tracking", FAIL, f"PORT={port} is not a port: give one from 1024 to 65535, or unset "
                                       "PORT (the store's server then takes a free one)")
    url = f"http://127.0.0.1:{port}"
    tunnel = f"ssh -L {port}:127.0.0.1:{port} HOST"
    mine = [r for r in server.serving(store) if r.port == port]
    if mine:
        if ports.answers(url):
            return Check("tracking", PASS, f"this store's MLflow server answers on {url} (over SSH: "
                                           f"{tunnel})")
        return Check("tracking", FAIL, f"this store's MLflow server (pid {mine[0].pid}) on port {port} does "
                                       "not answer /health: stop it with `make server-stop`, then run again")
    if ports.port_free(port):
        return Check("tracking", PASS, f"port {port} is free: the run starts this store's server there "
                                       f"(over SSH: {tunnel})")
    if ports.answers(url):
        return Check("tracking", FAIL, f"port {port} answers as an MLflow server that is not this store's "
                                       f"own ({store}): unset PORT (each store then gets a port of its own), "
                                       f"set PORT=another port, or MLFLOW_TRACKING_URI={url} to log there on "
                                       "purpose")
    return Check("tracking", FAIL, f"port {port} on 127.0.0.1 is busy with something that is not an MLflow "
                                   "server: unset PORT (each store then gets a port of its own), or set "
                                   "PORT=another port")


def run_config(config_file: Path, params: list[str]) -> config.Config:
    """The config a `mlflow run` with these `-P key=value` params trains with (entry-point-only params,
    such as trials or register_model, are not config keys and are left out). Bad values fail here."""
    keys = {f.name for f in dataclasses.fields(config.Config)}
    overrides = [p for p in params if p.split("=", 1)[0] in keys]
    return config.load(config_file, overrides)


def image_present(tag: str) -> bool:
    return docker("image", "inspect", tag).returncode == 0


def for_make_run(*, root: Path, entry: str, params: list[str], gpu: str,  # noqa: PLR0913
                 image_tag: str, uri: str, port: int, store: Path, logs: Path,
                 data_mount: str) -> list[Check]:
    """The checks of `make run`, in the order a user fixes them; stops at the engine (the rest ask it)."""
    checks = [row("engine", engine)]
    if checks[0].status == FAIL:
        return checks
    present = image_present(image_tag)
    checks.append(row("gpu", gpu_runtime, gpu))
    if checks[-1].status == PASS and gpu != "off":
        checks.append(row("gpus-in-image", gpus_in_image, image_tag, present))
    checks.append(row("data", data, run_config(root / "config.yaml", params), entry, root, data_mount))
    checks.append(row("tracking", tracking, uri, port, store, logs))
    checks.append(row("notify", notifier, False))
    checks.append(row("image", image, image_tag, present))
    return checks


def row(name: str, check: Callable[..., Check], *args: Any) -> Check:
    """One row, whatever its check meets: a failure the check did not foresee is its row's FAIL line
    (with what failed), never a traceback that hides every other row."""
    try:
        return check(*args)
    except UserError as exc:
        return Check(name, FAIL, str(exc))
    except Exception as exc:  # noqa: BLE001 - the table must come; this row says what broke
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        return Check(name, FAIL, f"the check itself failed ({type(exc).__name__}: {first}): fix what it "
                                 "names, then run make doctor again")


def notifier(send_test: bool) -> Check:
    """KERASFLOW_NOTIFY's URLs are Apprise URLs; with `send_test`, a test message goes out now."""
    targets = notify.urls()
    try:
        notify.check()
    except UserError as exc:
        return Check("notify", FAIL, str(exc))
    if not targets:
        return Check("notify", PASS, f"no notifier set ({notify.URLS_ENV}: Apprise URLs, docs/gpu-server.md)")
    if not send_test:
        return Check("notify", PASS, f"{len(targets)} notifier URL(s) in {notify.URLS_ENV}; `make doctor "
                                     "ARGS=--notify-test` sends a test message")
    if notify.send(notify.Message(name="doctor", status="TEST", what="check")):
        return Check("notify", PASS, f"a test message went to {len(targets)} notifier URL(s)")
    return Check("notify", FAIL, f"the test message was not sent (the warning above says why): fix "
                                 f"{notify.URLS_ENV}")

