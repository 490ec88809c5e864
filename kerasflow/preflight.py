"""What `make run` checks in the foreground before it detaches, builds or pulls anything.

A run that detaches into tmux and only then finds no engine, no NVIDIA runtime, no dataset or a foreign
server on its port fails where nobody looks (logs/NAME.log), after minutes of building an 8 GB image.
These checks take seconds and end in one line with the fix. Each returns a `Check`; `make doctor` shows
the same list as a table, each row guarded and bounded in time. No TensorFlow here: the light host env
(Python >= 3.10, MLflow and NumPy, no TensorFlow) runs them.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kerasflow import box, cluster, config, notify, ports, urlauth
from kerasflow.errors import UserError
from kerasflow.storeops import server
from kerasflow.track import store as stores
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


def _docker(*args: str, timeout: float = ENGINE_TIMEOUT) -> subprocess.CompletedProcess[str]:
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
    out = _docker("info", "--format", "{{.ServerVersion}}")
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
    """TFDS keeps a prepared dataset as NAME/[CONFIG/]VERSION/ with dataset_info.json beside the split's
    record files: a folder with the info file alone (a download cut short) is not prepared."""
    base = folder / name
    for info in [*base.glob("*/dataset_info.json"), *base.glob("*/*/dataset_info.json")]:
        records = [p for pattern in ("*.tfrecord*", "*.array_record*") for p in info.parent.glob(pattern)]
        if any(p.is_file() for p in records):
            return True
    return False


OFFLINE_DEMO = "make run ARGS='-P data_source=synthetic -P model=cnn -P image_size=48'"


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
    else:  # what training reads: class folders with images (the same listing, so the same verdict)
        try:
            classes, files = sources.list_image_tree(host)
        except UserError as exc:
            return Check("data", FAIL, f"{exc} ({key}={path})")
        return Check("data", PASS, f"{len(files)} images in {len(classes)} class folders in {host}")
    return Check("data", PASS, f"{cfg.data_source} data in {host}")



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


def servers() -> Check:
    """The user's own MLflow servers on this box: each holds a port and memory until stopped."""
    mine = server.running()
    if not mine:
        return Check("servers", PASS, "no MLflow server of yours is running")
    listed = "; ".join(f"127.0.0.1:{r.port} {_backend_name(r.backend)} (pid {r.pid})" for r in mine)
    return Check("servers", PASS, f"yours: {listed}; `make server-stop STORE=...` stops one")


def _backend_name(backend: str) -> str:
    """A server's store as a user names it: the folder of its sqlite database, else the URI without a
    password."""
    if backend.startswith("sqlite:///"):
        return str(Path(backend.removeprefix("sqlite:///")).parent)
    return urlauth.redact(backend)


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
    checks = [_row("engine", engine)]
    if checks[0].status == FAIL:
        return checks
    present = image_present(image_tag)
    checks.append(_row("gpu", gpu_runtime, gpu))
    if checks[-1].status == PASS and gpu != "off":
        checks.append(_row("gpus-in-image", gpus_in_image, image_tag, present))
    checks.append(_row("data", data, run_config(root / "config.yaml", params), entry, root, data_mount))
    checks.append(_row("tracking", tracking, uri, port, store, logs))
    checks.append(_row("notify", notifier, False))
    checks.append(_row("image", image, image_tag, present))
    return checks



# --- make doctor: the whole box, one table ---------------------------------------------------------------

WARN = "warn"
# NVIDIA's "CUDA Toolkit and Corresponding Driver Versions" (CUDA release notes, table 3): the image's CUDA
# 12 wheels run on any driver of CUDA 12's minor-version compatibility (12.0 GA); TF 2.21 is built with
# CUDA 12.5.1, whose PTX a GPU newer than TF's compiled kernels (compute capability 9.0 and up: H100,
# H200, B200) must JIT-compile, which needs a driver of at least that CUDA release.
DRIVER_MIN = ((525, 60, 13), "525.60.13 (CUDA 12.0 GA, minor-version compatibility)")
DRIVER_MIN_PTX = ((555, 42, 6),
                  "555.42.06 (CUDA 12.5.1, TF 2.21's build: PTX JIT on compute capability >= 9.0)")
IMAGE_GB = 8.1  # the GPU variant (BENCHMARKS.md, "Image builds")
DATA_GB = 0.4  # TFDS malaria, prepared


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.strip().split(".") if x.isdigit())


def driver() -> Check:
    """The NVIDIA driver against the minimum for the image's CUDA and each GPU's architecture."""
    rows = box.gpu_rows("index", "name", "driver_version", "compute_cap")
    if rows is None:
        return Check("driver", NOTE, "no NVIDIA driver (nvidia-smi): runs train on CPU; for a GPU install "
                                     f"the driver (>= {DRIVER_MIN[1].split()[0]})")
    if not rows:
        return Check("driver", FAIL, "nvidia-smi lists no GPU: check `nvidia-smi`, the driver and the GPU")
    got = rows[0][2]
    newest = max((_version(r[3]) for r in rows if len(r) > 3), default=())
    need = DRIVER_MIN_PTX if newest >= (9, 0) else DRIVER_MIN
    names = ", ".join(f"{r[0]}: {r[1]} (cc {r[3]})" for r in rows if len(r) > 3)
    if _version(got) < need[0]:
        return Check("driver", FAIL, f"driver {got} is older than {need[1]} for {names}: upgrade the NVIDIA "
                                     "driver")
    return Check("driver", PASS, f"driver {got} >= {need[1].split()[0]} ({names})")


def gpu_memory() -> Check:
    """Free memory per GPU, and whose processes hold the rest (a run that starts beside them runs out)."""
    gpus = box.gpu_rows("index", "uuid", "memory.used", "memory.total")
    if not gpus:
        return Check("gpu-memory", PASS, "no GPU")
    apps = box.smi("--query-compute-apps=gpu_uuid,pid,used_memory") or []
    parts, busy = [], False
    for index, uuid, used, total in (g[:4] for g in gpus if len(g) >= 4):
        holders = []
        for app_uuid, pid, mem in (a[:3] for a in apps if len(a) >= 3):
            if app_uuid == uuid:
                holders.append(f"{_owner(pid)} pid {pid} {mem} MiB")
        free = int(total) - int(used) if used.isdigit() and total.isdigit() else 0
        busy |= bool(holders)
        parts.append(f"GPU {index}: {free} of {total} MiB free" + (f" (held by {', '.join(holders)})"
                                                                   if holders else ""))
    return Check("gpu-memory", WARN if busy else PASS, "; ".join(parts) +
                 ("; a run beside them may run out of memory: see `make queue`" if busy else ""))


def _owner(pid: str) -> str:
    try:
        for line in Path(f"/proc/{int(pid)}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return pwd.getpwuid(int(line.split()[1])).pw_name
    except (OSError, ValueError, KeyError):
        pass
    return "?"


def disk(image_present_now: bool, data_dir: Path, engine_up: bool = True) -> Check:
    """Room for the image (when it is not built yet, and the engine answers: it says where) and the data."""
    wanted = [("the data", data_dir, DATA_GB)]
    if engine_up:
        docker_root = _docker("info", "--format", "{{.DockerRootDir}}").stdout.strip() or "/var/lib/docker"
        wanted.insert(0, ("the image", Path(docker_root), 0 if image_present_now else IMAGE_GB))
    short = []
    for what, where, need in wanted:
        probe = where
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free / 1e9
        except OSError:
            continue
        if free < need + 1:
            short.append(f"{free:.1f} GB free at {probe} for {what} (needs {need:.1f} GB)")
    if short:
        return Check("disk", FAIL, "; ".join(short) + ": free disk space (docker system prune, old runs)")
    return Check("disk", PASS, "room for the image and the data")


def store_writable(store: Path) -> Check:
    """The store folder (or where it will be made) takes a file."""
    probe = store
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".kerasflow-doctor-") as f:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return Check("store", FAIL, f"{probe} does not take a file ({exc.strerror or exc}): free space "
                                    "there, fix its permissions, or use STORE=another folder")
    if (store / stores.DB_FILE).is_file():
        return _store_write(store / stores.DB_FILE)
    return Check("store", PASS, f"{store} is writable")


def _store_write(db: Path) -> Check:
    """An experiment tag written and removed through MLflow itself: a folder that takes files says
    nothing of a database another user owns (0644: PASS while every write of a run failed), one locked
    by a stuck process, or one of a newer MLflow."""
    import mlflow

    uri = stores.sqlite_uri(db)
    stores.check_backend(uri, choose="STORE=another folder")  # its UserError is this row's FAIL line
    key = "kerasflow.doctor_probe"
    try:
        client = mlflow.MlflowClient(uri)
        [experiment] = client.search_experiments(max_results=1)
        client.set_experiment_tag(experiment.experiment_id, key, str(os.getpid()))
        client.delete_experiment_tag(experiment.experiment_id, key)
    except Exception as exc:  # noqa: BLE001 - any refusal of a write is this row's verdict
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return Check("store", FAIL, f"{db} does not take a write through MLflow ({first}): fix its "
                                    "permissions, or use STORE=another folder")
    return Check("store", PASS, f"{db.parent} takes a write through MLflow")


def tool(name: str, why: str, fix: str) -> Check:
    if shutil.which(name):
        return Check(name, PASS, f"{name} is installed")
    return Check(name, FAIL, f"{name} is not installed ({why}): {fix}")


def host_python() -> Check:
    """A Python >= 3.10 for the light env (`make host-env`), or the full .venv."""
    for candidate in ("python3.13", "python3.12", "python3.11", "python3.10", "python3"):
        path = shutil.which(candidate)
        if not path:
            continue
        out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and _version(out.stdout) >= (3, 10):
            return Check("host-python", PASS, f"{path} is Python {out.stdout.strip()} (make host-env)")
    return Check("host-python", FAIL, "no Python >= 3.10 on this host: install python3 (>= 3.10) for "
                                      "make host-env")


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


def for_doctor(*, root: Path, image_tag: str, uri: str, port: int, store: Path, logs: Path,  # noqa: PLR0913
               data_mount: str, notify_test: bool = False) -> list[Check]:
    """Every check of the box, in one list (`make doctor`); a check that needs the engine says so."""
    checks = [_row("engine", engine)]
    up = checks[0].status != FAIL
    present = up and image_present(image_tag)
    if up:
        checks.append(_row("gpu", gpu_runtime, "auto"))
        if checks[-1].status == PASS:
            checks.append(_row("gpus-in-image", gpus_in_image, image_tag, present))
        checks.append(_row("image", image, image_tag, present))
    checks += [_row("driver", driver), _row("gpu-memory", gpu_memory)]
    cfg = run_config(root / "config.yaml", [])
    checks.append(_row("data", data, cfg, "main", root, data_mount))
    data_dir, _ = _host_path(cfg.tfds_data_dir, root, data_mount)
    checks.append(_row("disk", disk, present, data_dir or root, up))
    checks += [_row("store", store_writable, store), _row("tracking", tracking, uri, port, store, logs),
               _row("servers", servers),
               _row("tmux", tool, "tmux", "detached runs over SSH", "apt-get install tmux"),
               _row("flock", tool, "flock", "make run's locks", "apt-get install util-linux"),
               _row("host-python", host_python), _row("notify", notifier, notify_test)]
    return checks


def _row(name: str, check: Callable[..., Check], *args: Any) -> Check:
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


def doctor_table(checks: list[Check]) -> tuple[str, int]:
    """The table and the exit status: 0 all pass, 1 warnings (notes count), 2 a failure."""
    width = max(len(c.name) for c in checks)
    shown = {PASS: "PASS", NOTE: "WARN", WARN: "WARN", FAIL: "FAIL"}
    lines = [f"{c.name:<{width}}  {shown[c.status]}  {c.line}" for c in checks]
    statuses = {c.status for c in checks}
    worst = 2 if FAIL in statuses else 1 if statuses & {NOTE, WARN} else 0
    return "\n".join(lines), worst


# --- make doctor ON=slurm: the cluster side ---------------------------------------------------------------

RUNTIME_BINARIES = {"docker": "docker", "charliecloud": "ch-run", "apptainer": "apptainer singularity",
                    "enroot": "enroot"}
NODE_JOB_S = 120  # seconds the one-minute test job may take, waiting in line included


def for_cluster(*, root: Path, store: Path, runtime: str, uri: str, image_file: Path) -> list[Check]:
    """The cluster's rows (`make doctor ON=slurm`): the controller, GPUs as GRES, then one short test job
    on a node: the runtime there, the checkout and store seen there (a filesystem the nodes share),
    the tracking server reachable from there."""
    checks = [_row("slurm", slurm_controller)]
    if checks[0].status == FAIL:
        return checks
    checks.append(_row("slurm-gpus", slurm_gpus))
    checks.append(_row("cluster-image", cluster_image, runtime, image_file))
    checks += _node_rows(root, store, runtime, uri, image_file)
    return checks


def slurm_controller() -> Check:
    if not cluster.available():
        return Check("slurm", FAIL, "no sbatch/scontrol on PATH: this machine is not a Slurm submit host "
                                    "(install slurm-client and point SLURM_CONF at the cluster's slurm.conf)")
    conf = cluster.config()
    if not conf:
        return Check("slurm", FAIL, "the Slurm controller does not answer (`scontrol ping`): start "
                                    "slurmctld, or check SLURM_CONF / /etc/slurm/slurm.conf and munge")
    accounting = conf.get("AccountingStorageType", "")
    kept = ("sacct" if accounting not in ("", "accounting_storage/none") else
            "the job-completion file" if conf.get("JobCompType") == "jobcomp/filetxt" else "")
    line = f"cluster '{conf.get('ClusterName', '?')}' answers (Slurm {conf.get('SLURM_VERSION', '?')})"
    if not kept:
        return Check("slurm", WARN, f"{line}; no accounting and no job-completion file: a run whose "
                                    "job ends while no command opens the store for "
                                    f"{conf.get('MinJobAge', '300')} s ends FAILED 'no longer known'; set "
                                    "JobCompType=jobcomp/filetxt")
    return Check("slurm", PASS, f"{line}; end states from {kept}")


def slurm_gpus() -> Check:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %G %t"], capture_output=True, text=True,
                         timeout=30, check=False)
    nodes = [line.split() for line in out.stdout.splitlines() if len(line.split()) == 3]
    gpus = [f"{n} {g}" for n, g, _ in nodes if "gpu" in g]
    if not gpus:
        return Check("slurm-gpus", WARN, "no node declares GPUs as GRES (Gres=gpu:N in slurm.conf, "
                                         "gres.conf): runs ask --gres=gpu:1 and would never start; or run "
                                         "with GPU=off")
    return Check("slurm-gpus", PASS, "; ".join(gpus[:8]) + (" ..." if len(gpus) > 8 else ""))


def cluster_image(runtime: str, image_file: Path) -> Check:
    if runtime == "docker":
        return Check("cluster-image", PASS if image_file.is_file() else NOTE,
                     f"{image_file} for nodes without the image" if image_file.is_file() else
                     "nodes must have the image (make image on each, or make cluster-image RUNTIME=docker: "
                     "a file they load)")
    ok = (image_file / "bin" / "bash").exists() if runtime == "charliecloud" else image_file.is_file()
    return Check("cluster-image", PASS if ok else FAIL, str(image_file) if ok else
                 f"no {runtime} image at {image_file}: make cluster-image RUNTIME={runtime}")


def _node_rows(root: Path, store: Path, runtime: str, uri: str, image_file: Path) -> list[Check]:
    """One test job (sbatch --wait, a minute at most) reports what a node sees."""
    where = urlsplit(uri) if uri else None
    host = (where.hostname or "") if where else ""
    port = (where.port or (443 if where.scheme == "https" else 80)) if where else 0
    plain = bool(host) and re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", host) is not None
    binaries = RUNTIME_BINARIES.get(runtime, runtime).split()
    probe = "\n".join([
        "#!/bin/bash",
        "echo node=$(hostname)",
        "found=no; for b in " + " ".join(shlex.quote(b) for b in binaries) + "; do",
        '  command -v "$b" > /dev/null && found="$b"; done; echo runtime=$found',
        f"test -r {shlex.quote(str(root / 'MLproject'))} && echo checkout=yes || echo checkout=no",
        f"test -d {shlex.quote(str(store))} && echo store=yes || echo store=no",
        f"test -e {shlex.quote(str(image_file))} && echo image=yes || echo image=no",
        (f"timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}' 2> /dev/null && echo tracking=yes || "
         "echo tracking=no") if plain else "echo tracking=skip",
    ]) + "\n"
    with tempfile.TemporaryDirectory(prefix="kerasflow-doctor-") as folder:
        script = Path(folder) / "probe.bash"
        script.write_text(probe)
        output = Path(folder) / "out.txt"
        try:
            done = subprocess.run(["sbatch", "--wait", "--time=1", "--job-name=kerasflow-doctor",
                                   f"--output={output}", "--chdir=/tmp", str(script)],
                                  capture_output=True, text=True, timeout=NODE_JOB_S, check=False)
        except subprocess.TimeoutExpired:
            return [Check("slurm-node", WARN, f"the test job did not run within {NODE_JOB_S} s (it waits in "
                                              "line: see squeue): run make doctor ON=slurm again later")]
        seen = dict(line.split("=", 1) for line in (output.read_text(errors="replace") if output.exists()
                                                    else "").splitlines() if "=" in line)
    if done.returncode != 0 and not seen:
        why = (done.stderr or done.stdout).strip()[:200]
        return [Check("slurm-node", FAIL, f"the test job failed ({why}): see sinfo and squeue")]
    node = seen.get("node", "?")
    rows = [Check("slurm-runtime", PASS if seen.get("runtime", "no") != "no" else FAIL,
                  f"{seen.get('runtime')} on node {node}" if seen.get("runtime", "no") != "no" else
                  f"{' or '.join(binaries)} not found on node {node}: install it there, or choose the "
                  "runtime the nodes have (RUNTIME=docker|charliecloud|apptainer|enroot)")]
    shared = seen.get("checkout") == "yes" and seen.get("store") == "yes"
    rows.append(Check("shared-files", PASS if shared else FAIL,
                      f"node {node} sees the checkout and the store" if shared else
                      f"node {node} does not see {root} and {store}: put them on a filesystem the nodes "
                      "share (NFS, the cluster's home or project space) at the same path"))
    reach = seen.get("tracking", "skip")
    rows.append(Check("node-tracking", PASS if reach == "yes" else NOTE if reach == "skip" else FAIL,
                      f"node {node} reaches {urlauth.redact(uri)}" if reach == "yes" else
                      "no tracking server given (MLFLOW_TRACKING_URI): runs use this store's server, which "
                      "listens on 127.0.0.1 (nodes on this machine only)" if reach == "skip" else
                      f"node {node} cannot reach {urlauth.redact(uri)}: set MLFLOW_TRACKING_URI to a server "
                      "the nodes reach (docs/team-server.md)"))
    return rows
