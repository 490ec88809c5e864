"""`make doctor`: the whole box in one table (`make doctor ON=slurm`: the cluster), each row guarded and
bounded in time.

The rows `make run` also checks before it detaches (engine, GPU, data, tracking, notifier, image) are
kerasflow/preflight.py's; the rows here are the ones only the table shows: driver, GPU memory, disk,
store, servers, tools, the host's Python, and the Slurm rows. No TensorFlow here (the light env runs it).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from kerasflow import box, cluster, urlauth
from kerasflow.preflight import (
    FAIL,
    NOTE,
    PASS,
    Check,
    data,
    docker,
    engine,
    gpu_runtime,
    gpus_in_image,
    host_path,
    image,
    image_present,
    notifier,
    row,
    run_config,
    tracking,
)
from kerasflow.storeops import server
from kerasflow.track import store as stores
from kerasflow.train import sources

# Lazy imports: mlflow, inside the store row's write (seconds to load).


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
        docker_root = docker("info", "--format", "{{.DockerRootDir}}").stdout.strip() or "/var/lib/docker"
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




def for_box(*, root: Path, image_tag: str, uri: str, port: int, store: Path, logs: Path,  # noqa: PLR0913
               data_mount: str, notify_test: bool = False) -> list[Check]:
    """Every check of the box, in one list (`make doctor`); a check that needs the engine says so."""
    checks = [row("engine", engine)]
    up = checks[0].status != FAIL
    present = up and image_present(image_tag)
    if up:
        checks.append(row("gpu", gpu_runtime, "auto"))
        if checks[-1].status == PASS:
            checks.append(row("gpus-in-image", gpus_in_image, image_tag, present))
        checks.append(row("image", image, image_tag, present))
    checks += [row("driver", driver), row("gpu-memory", gpu_memory)]
    cfg = run_config(root / "config.yaml", [])
    checks.append(row("data", data, cfg, "main", root, data_mount))
    folder_key = sources.get(cfg.data_source).folder_key
    data_dir, _ = host_path(getattr(cfg, folder_key), root, data_mount) if folder_key else (None, "")
    checks.append(row("disk", disk, present, data_dir or root, up))
    checks += [row("store", store_writable, store), row("tracking", tracking, uri, port, store, logs),
               row("servers", servers),
               row("tmux", tool, "tmux", "detached runs over SSH", "apt-get install tmux"),
               row("flock", tool, "flock", "make run's locks", "apt-get install util-linux"),
               row("host-python", host_python), row("notify", notifier, notify_test)]
    return checks




def table(checks: list[Check]) -> tuple[str, int]:
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
    checks = [row("slurm", slurm_controller)]
    if checks[0].status == FAIL:
        return checks
    checks.append(row("slurm-gpus", slurm_gpus))
    checks.append(row("cluster-image", cluster_image, runtime, image_file))
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
