"""What `make run` checks in the foreground before it detaches, builds or pulls anything.

A run that detaches into tmux and only then finds no engine, no NVIDIA runtime, no dataset or a foreign
server on its port fails where nobody looks (logs/NAME.log), after minutes of building an 8 GB image.
These checks take seconds and end in one line with the fix. Each returns a `Check`; `make doctor` (the
GPU-box issue) is meant to show the same list as a table. No TensorFlow and no MLflow here: the light
host env (Python >= 3.10, MLflow only) runs them.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kerasflow import config, ports
from kerasflow.errors import UserError
from kerasflow.storeops import server

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


def _docker(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def engine() -> Check:
    """The docker CLI is installed and its daemon answers (as this user)."""
    if not shutil.which("docker"):
        return Check("engine", FAIL, "docker is not installed: install Docker Engine "
                                     "(https://docs.docker.com/engine/install/)")
    try:
        out = _docker("info", "--format", "{{.ServerVersion}}")
    except subprocess.TimeoutExpired:
        out = subprocess.CompletedProcess([], 1, "", "no answer within 30 s")
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
    runtimes = _docker("info", "--format", "{{json .Runtimes}}").stdout
    gpus = 0
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        gpus = sum(line.startswith("GPU ") for line in listed.splitlines())
    if "nvidia" in runtimes and gpus:
        return Check("gpu", PASS, f"NVIDIA runtime, {gpus} GPU(s)")
    why = ("`nvidia-smi -L` lists no GPU" if "nvidia" in runtimes
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
    out = _docker("run", "--rm", "--gpus", "all", image, "nvidia-smi", "-L", timeout=120)
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


def _host_path(path: str, root: Path, data_mount: str) -> tuple[Path | None, str]:
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


def _tfds_prepared(folder: Path, name: str) -> bool:
    """TFDS keeps a prepared dataset as NAME/[CONFIG/]VERSION/dataset_info.json under its data dir."""
    base = folder / name
    return any(base.glob("*/dataset_info.json")) or any(base.glob("*/*/dataset_info.json"))


OFFLINE_DEMO = "make run ARGS='-P data_source=synthetic -P model=cnn'"


def data(cfg: config.Config, entry: str, root: Path, data_mount: str) -> Check:
    """The dataset the config names is where the container will look for it."""
    if entry not in NEEDS_DATA or cfg.data_source == "synthetic":
        return Check("data", PASS, f"data_source={cfg.data_source}: nothing to download")
    tfds = cfg.data_source == "tfds"
    key, path = ("tfds_data_dir", cfg.tfds_data_dir) if tfds else ("image_dir", cfg.image_dir)
    host, fix = _host_path(path, root, data_mount)
    if host is None:
        return Check("data", FAIL, f"{key}={fix}")
    if tfds:
        if not _tfds_prepared(host, cfg.tfds_name):
            return Check("data", FAIL, f"TFDS {cfg.tfds_name} is not in {host} ({key}={path}): download it "
                                       f"first with `make data` (internet, ~340 MB; without .venv it runs in "
                                       f"the image), or try the offline demo: {OFFLINE_DEMO}")
    elif not host.is_dir():
        return Check("data", FAIL, f"image_dir {host} ({key}={path}) is not a folder: give the folder "
                                   "of class sub-folders (-P image_dir=...), or mount one with "
                                   "DATA=/host/folder -P image_dir=/data/...")
    return Check("data", PASS, f"{cfg.data_source} data in {host}")



def _listening(port: int) -> bool:

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def server_is_ours(pid_file: Path, store: Path, port: int) -> bool:
    """The server on the port is this store's own: the pid in logs/mlflow-server.pid is alive and its
    command line names this store's database and port (another user's `make ui` answers /health too)."""
    try:
        pid = int(pid_file.read_text().strip())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False

    try:
        cmd, _ = server.command(store, port)  # what `kerasflow server STORE --port PORT` runs
    except UserError:
        return False
    backend = cmd[cmd.index("--backend-store-uri") + 1]
    return backend.encode() in args and str(port).encode() in args


def tracking(uri: str, port: int, store: Path, logs: Path) -> Check:
    """A given server answers; else this store's port is free or holds this store's own server."""
    if uri:
        if not uri.startswith(("http://", "https://")):
            return Check("tracking", FAIL, "MLFLOW_TRACKING_URI must be an http(s) server for make run (the "
                                           f"container cannot open a host database): unset it to use a local "
                                           f"server over {store}")
        if not ports.answers(uri):
            return Check("tracking", FAIL, "the MLflow server at MLFLOW_TRACKING_URI does not answer "
                                           "/health: start it, or fix/unset MLFLOW_TRACKING_URI")
        return Check("tracking", PASS, "the MLflow server from MLFLOW_TRACKING_URI answers")
    url = f"http://127.0.0.1:{port}"
    if not _listening(port):
        return Check("tracking", PASS, f"port {port} is free: the run starts this store's server there")
    if not ports.answers(url):
        return Check("tracking", FAIL, f"port {port} on 127.0.0.1 is busy with something that is not an "
                                       "MLflow server: set PORT=another port")
    if not server_is_ours(logs / "mlflow-server.pid", store, port):
        return Check("tracking", FAIL, f"port {port} answers as an MLflow server that is not this store's "
                                       f"own ({store}): set PORT=another port, or MLFLOW_TRACKING_URI={url} "
                                       "to log there on purpose")
    return Check("tracking", PASS, f"this store's MLflow server answers on {url}")


def run_config(config_file: Path, params: list[str]) -> config.Config:
    """The config a `mlflow run` with these `-P key=value` params trains with (entry-point-only params,
    such as trials or register_model, are not config keys and are left out). Bad values fail here."""
    keys = {f.name for f in dataclasses.fields(config.Config)}
    overrides = [p for p in params if p.split("=", 1)[0] in keys]
    return config.load(config_file, overrides)


def image_present(tag: str) -> bool:
    return _docker("image", "inspect", tag).returncode == 0


def for_make_run(*, root: Path, entry: str, params: list[str], gpu: str,  # noqa: PLR0913
                 image_tag: str, uri: str, port: int, store: Path, logs: Path,
                 data_mount: str) -> list[Check]:
    """The checks of `make run`, in the order a user fixes them; stops at the engine (the rest ask it)."""
    checks = [engine()]
    if checks[0].status == FAIL:
        return checks
    present = image_present(image_tag)
    checks.append(gpu_runtime(gpu))
    if checks[-1].status == PASS and gpu != "off":
        checks.append(gpus_in_image(image_tag, present))
    checks.append(data(run_config(root / "config.yaml", params), entry, root, data_mount))
    checks.append(tracking(uri, port, store, logs))
    checks.append(image(image_tag, present))
    return checks

