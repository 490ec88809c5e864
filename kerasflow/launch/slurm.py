"""`make run ON=slurm` = `kerasflow run --on slurm`: the second launcher backend. One run is one batch job
on a Slurm cluster (a lab's few GPU boxes, a university cluster), in the same image, logging into the same
store, with the same -P params, names and config as a run on one box.

    start(req, opts)  ->  claim the name, check (Slurm answers, the image exists for the runtime, the nodes
                          reach the tracking server), the store's server (or MLFLOW_TRACKING_URI), the
                          MLflow run (SCHEDULED, tagged with its job), the batch script, `sbatch`.

The job runs the MLproject entry point's command (MLflow computes it from the params, as `mlflow run`
does) in the project image with the runtime the nodes have (RUNTIME): docker (lab boxes that already
ran `make run`), Charliecloud (unprivileged: an image folder), Apptainer/Singularity (a .sif) or enroot
(pyxis: a .sqsh); `make cluster-image RUNTIME=...` makes the file or folder from the user's image. The
container sees what `mlflow run`'s docker_env gives it on one box: the checkout at /workspace, the
docker_env's variables, the run's MLFLOW_* variables, a writable KERAS_HOME holding the image's baked
weights, and exactly the GPUs Slurm assigned (docker: `--gpus device=...` where the NVIDIA runtime exists;
the others see the node's GPUs and Slurm's CUDA_VISIBLE_DEVICES).

The run ends by its training (FINISHED, FAILED), or, when the job is killed from outside, by Slurm's
record of the job (track/slurm_runs.py: every command that opens the store settles it). `make cancel`
cancels the job and ends the run KILLED; `make queue` lists the jobs with their MLflow progress.

Why our own backend and not the `mlflow-slurm` plugin: see kerasflow/cluster.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from kerasflow import cluster, config, notify, ports, preflight, urlauth
from kerasflow.errors import UserError
from kerasflow.launch import image as images
from kerasflow.launch import run as box_run
from kerasflow.storeops import server
from kerasflow.track import orphans, slurm_runs

# Lazy imports: mlflow, where a run is made, tagged or read and where MLflow computes the entry point's
# command (the checks and `--help` need none).

RUNTIMES = ("docker", "charliecloud", "apptainer", "enroot")
IMAGES_DIR = ".cluster-images"  # default home of the exported images (CLUSTER_IMAGES: a shared folder)
SBATCH_SAFE = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:/@%+=-]*)?|[A-Za-z0-9_.,:/@%+=-]+")
PASSED_BY_NAME = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                  "KERASFLOW_STUDY_STORAGE", "KERASFLOW_NOTIFY", "MLFLOW_TRACKING_URI")
CONTAINER_ROOT = "/workspace"  # where MLproject's docker_env mounts the checkout


@dataclasses.dataclass
class Options:
    """What only a Slurm run has (the rest is the Request of one box)."""

    runtime: str = "docker"
    gpus: int = 1
    sbatch: list[str] = dataclasses.field(default_factory=list)
    images_dir: Path | None = None


def options(runtime: str, sbatch: str, env: dict[str, str] | os._Environ[str] = os.environ) -> Options:
    """The Slurm options of a command line and its environment (GPU, GPUS, CLUSTER_IMAGES)."""
    shared = env.get("CLUSTER_IMAGES", "")
    return Options(runtime=runtime, sbatch=parse_sbatch(sbatch), gpus=parse_gpus(env.get("GPU", "auto"),
                                                                                 env.get("GPUS", "")),
                   images_dir=Path(shared).resolve() if shared else None)


def config_params(root: Path, entry: str, cfg: object) -> list[str]:
    """A config (presets and --set applied) as the entry point's -P params: each key that differs from
    config.yaml. A differing key the entry point does not take cannot reach the job: one line."""
    base = dataclasses.asdict(config.load(root / "config.yaml"))
    wanted = dataclasses.asdict(cfg)  # type: ignore[call-overload]
    spec = yaml.safe_load((root / "MLproject").read_text())["entry_points"][entry]["parameters"]
    params = []
    for key, value in wanted.items():
        if value == base.get(key):
            continue
        if key not in spec:
            raise UserError(f"config key {key} differs from config.yaml but cannot reach a Slurm job "
                            f"(MLproject's {entry} entry does not take it): set it in config.yaml")
        text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
        params.append(f"{key}={text}")
    return params


def parse_sbatch(text: str) -> list[str]:
    """SBATCH='--partition=gpu --time=1:00:00 --account=lab' as sbatch options; each must be an option
    (or its value), never a shell word: they reach sbatch's argv, and the script's header records them."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UserError(f"SBATCH={text[:80]!r} cannot be split into options ({exc}): e.g. "
                        "SBATCH='--partition=gpu --time=2:00:00'") from None
    for word in words:
        if not SBATCH_SAFE.fullmatch(word):
            raise UserError(f"SBATCH option {word[:60]!r} holds a character sbatch options never need: "
                            "give options as --name=value, e.g. --time=2:00:00")
    if words and not words[0].startswith("-"):
        raise UserError(f"SBATCH={text[:80]!r} must start with an option (e.g. --partition=gpu)")
    return words


def parse_gpus(gpu: str, gpus: str) -> int:
    """GPUs per job: GPU=off -> 0; GPUS=N (a count on a cluster; one box's `all` means 1)."""
    if gpu == "off":
        return 0
    if gpus in ("", "all"):
        return 1
    if not gpus.isdigit() or not 0 <= int(gpus) <= 64:
        raise UserError(f"GPUS={gpus[:20]!r}: on Slurm, GPUS is the number of GPUs per run (e.g. GPUS=2); "
                        "Slurm chooses which ones")
    return int(gpus)


def image_file(root: Path, runtime: str, images_dir: Path | None) -> Path:
    """Where `make cluster-image` puts the user's image for `runtime` (a folder the nodes must share)."""
    name = images.tag(root).replace(":", "_").replace("/", "_")
    folder = images_dir or root / IMAGES_DIR
    return folder / {"docker": f"{name}.tar", "charliecloud": f"{name}.ch", "apptainer": f"{name}.sif",
                     "enroot": f"{name}.sqsh"}[runtime]


# --- the batch script ---------------------------------------------------------------------------------


def entry_command(root: Path, entry: str, params: dict[str, str]) -> tuple[str, list[list[str]], list[str]]:
    """The entry point's command as `mlflow run` computes it (params validated and shell-quoted by
    MLflow), and the docker_env's environment and volumes (MLproject: the one home of both)."""
    from mlflow.exceptions import ExecutionException
    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(root))
    try:
        point = project.get_entry_point(entry)
        with tempfile.TemporaryDirectory() as storage:
            command = point.compute_command(params, storage)
    except ExecutionException as exc:
        raise UserError(f"{str(exc).splitlines()[0][:300]}: see MLproject's entry points and their "
                        "parameters") from None
    env = [e for e in (project.docker_env or {}).get("environment", []) if isinstance(e, list)]
    volumes = list((project.docker_env or {}).get("volumes", []))
    return command, env, volumes


def container_block(runtime: str, root: Path, name: str, image: str, file: Path,  # noqa: PLR0913
                    env: list[list[str]], volumes: list[str], passed: list[str], data: str = "") -> list[str]:
    """The runtime's lines of the batch script: run "$cmd" in the image, the job's exit status its own.
    `data`: DATA, the dataset folder mounted read-only at /data, as on one box."""
    q = shlex.quote
    sets = [f"{k}={v}" for k, v in env if k != "KERAS_HOME"]
    keras_home = next((v for k, v in env if k == "KERAS_HOME"), "/opt/keras")
    run_vars = ["MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI", "KERASFLOW_SLURM_JOB",
                *[v for v in passed if v != "MLFLOW_TRACKING_URI"]]
    if runtime == "docker":
        mounts = [v.replace("${PWD}", str(root)) for v in volumes] + ([f"{data}:/data:ro"] if data else [])
        args = ["--rm", "--network", "host", "--init", *[x for m in mounts for x in ("-v", m)],
                *[x for s in sets for x in ("-e", s)], "-e", f"KERAS_HOME={keras_home}",
                *[x for v in run_vars for x in ("-e", v)]]
        return [
            f"image={q(image)}",
            'if ! docker image inspect "$image" > /dev/null 2>&1; then',
            f"  archive={q(str(file))}",
            '  if [[ -f "$archive" ]]; then',
            '    echo "slurm: loading $image on $(hostname) from $archive"',
            '    docker load -i "$archive"',
            "  else",
            '    echo "error: the image $image is not on node $(hostname): make cluster-image RUNTIME=docker '
            '(a file the nodes load), or make image on that node" >&2',
            "    exit 2",
            "  fi",
            "fi",
            "gpus=()",
            "runtimes=\"$(docker info --format '{{json .Runtimes}}' 2> /dev/null || true)\"",
            'if [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "$runtimes" == *nvidia* ]]; then',
            '  gpus=(--gpus "\\"device=${CUDA_VISIBLE_DEVICES}\\"")  # exactly the GPUs Slurm assigned',
            "fi",
            f'container={q("kerasflow-" + name)}-"${{SLURM_JOB_ID:-0}}"',
            '# scancel, a time limit or preemption signal this script: the container stops with it',
            'trap \'docker stop --time 10 "$container" > /dev/null 2>&1 || true\' TERM INT',
            f'docker run --name "$container" "${{gpus[@]}}" {shlex.join(args)} "$image" bash -c "$cmd" &',
            'wait "$!"',
        ]
    binds = [f"{root}:{CONTAINER_ROOT}"]
    data_bind = {"charliecloud": f" -b {q(data + ':/data')}", "apptainer": f" --bind {q(data + ':/data:ro')}",
                 "enroot": f",{q(data + ':/data:ro')}"}.get(runtime, "") if data else ""
    scratch = [
        'scratch="$(mktemp -d "${TMPDIR:-/tmp}/kerasflow-job-XXXXXX")"',
        'trap \'rm -rf "$scratch"\' EXIT',
        "# a writable KERAS_HOME holding the image's baked weights (a read-only image: Keras would fall",
        "# back to a temp folder and miss them)",
        'mkdir -p "$scratch/keras"',
    ]
    if runtime == "charliecloud":
        return [
            f"img={q(str(file))}",
            'if [[ ! -x "$img/bin/bash" ]]; then',
            '  echo "error: no Charliecloud image at $img on $(hostname): make cluster-image '
            'RUNTIME=charliecloud CLUSTER_IMAGES=<a folder the nodes share>" >&2',
            "  exit 2",
            "fi",
            *scratch,
            f'cp -a "$img{keras_home}/." "$scratch/keras/"',
            "exec ch-run --set-env=\"$img/ch/environment\" "
            + " ".join(q(f"--set-env={s}") for s in sets)
            + f" --set-env=KERAS_HOME={q(keras_home)}"
            + f" -b {q(binds[0])}{data_bind} -b \"$scratch/keras:{keras_home}\" -c {CONTAINER_ROOT}"
            + ' "$img" -- bash -c "$cmd"',
        ]
    if runtime == "apptainer":
        return [
            f"sif={q(str(file))}",
            'if [[ ! -f "$sif" ]]; then',
            '  echo "error: no image at $sif on $(hostname): make cluster-image RUNTIME=apptainer" >&2',
            "  exit 2",
            "fi",
            *scratch,
            "nv=()",
            "if command -v nvidia-smi > /dev/null 2>&1; then nv=(--nv); fi",
            'runner="$(command -v apptainer || command -v singularity)"',
            f'"$runner" exec "${{nv[@]}}" --bind {q(binds[0])}{data_bind} '
            f'--bind "$scratch/keras:{keras_home}" --pwd {CONTAINER_ROOT} '
            + " ".join(f"--env {q(s)}" for s in [*sets, f"KERAS_HOME={keras_home}"])
            + ' "$sif" bash -c "$cmd"',
        ]
    # enroot through pyxis: srun --container-image (the squashfs file on a shared folder)
    return [
        f"sqsh={q(str(file))}",
        'if [[ ! -f "$sqsh" ]]; then',
        '  echo "error: no image at $sqsh on $(hostname): make cluster-image RUNTIME=enroot" >&2',
        "  exit 2",
        "fi",
        *[f"export {q(s)}" for s in sets],
        f"export KERAS_HOME={q(keras_home)}",
        f'srun --container-image="$sqsh" --container-mounts={q(binds[0])}{data_bind} '
        f'--container-workdir={CONTAINER_ROOT} --container-writable bash -c "$cmd"',
    ]


def data_folder() -> str:
    """DATA (the dataset folder mounted read-only at /data), checked as on one box; "" when unset."""
    data = os.environ.get("DATA", "")
    if not data:
        return ""
    folder = Path(data).resolve()
    if not folder.is_dir():
        raise UserError(f"DATA={data} is not a folder: give the dataset folder to mount at /data (read-only)")
    if not box_run.SHELL_SAFE.match(str(folder)):
        raise UserError(f"DATA {folder} holds a space or a shell character: move it to a plain path")
    return str(folder)


def task_command(req: box_run.Request, params: list[str]) -> tuple[str, list[list[str]], list[str]]:
    """One task's command (the entry point with these params), with the notification at its end when
    KERASFLOW_NOTIFY is set: sent from the job with the run's own status, as on one box."""
    command, env, volumes = entry_command(req.root, req.entry, box_run.parse_params(params))
    if notify.urls():
        log = req.log
        inside = (f"{CONTAINER_ROOT}/{log.relative_to(req.root)}" if log.is_relative_to(req.root)
                  else "/dev/null")
        command = (f"{command}; code=$?; python -m kerasflow notify-run --name {shlex.quote(req.name)} "
                   f"--log {shlex.quote(inside)} --exit $code --run-id \"$MLFLOW_RUN_ID\" || true; "
                   "exit $code")
    return command, env, volumes


def script(req: box_run.Request, opts: Options, tasks: list[tuple[str, list[str]]], experiment_id: str,
           uri_in_script: str) -> str:
    """The batch script: plain bash, every value quoted here, the job's own values ($SLURM_JOB_ID,
    $SLURM_ARRAY_TASK_ID, $CUDA_VISIBLE_DEVICES) read when it runs. Secrets never appear in it: they pass
    by name. `tasks`: (MLflow run id, params) per task; more than one is a job array, task i runs the
    i-th command in the i-th run."""
    made = [(run_id, *task_command(req, params)) for run_id, params in tasks]
    _, _, env, volumes = made[0]
    passed = [v for v in PASSED_BY_NAME if os.environ.get(v) and not (v == "MLFLOW_TRACKING_URI"
                                                                     and uri_in_script)]
    file = image_file(req.root, opts.runtime, opts.images_dir)
    runs = " ".join(run_id for run_id, *_ in made)
    lines = [
        "#!/usr/bin/env bash",
        f"# kerasflow run '{req.name}' on Slurm: MLflow run(s) {runs} (experiment {experiment_id}), "
        f"{opts.runtime} runtime.",
        f"# Written by `kerasflow run --on slurm` at {time.strftime('%Y-%m-%d %H:%M:%S')} (kerasflow/launch/"
        "slurm.py); the run ends by its training, or as Slurm ends this job (track/slurm_runs.py).",
        "set -euo pipefail",
        f"runs=({runs})",
        "# shellcheck disable=SC2016  # each command is literal text: bash -c runs it in the container",
        "cmds=(" + " ".join(shlex.quote(command) for _, command, _, _ in made) + ")",
        'task="${SLURM_ARRAY_TASK_ID:-0}"',
        f'export MLFLOW_RUN_ID="${{runs[$task]}}" MLFLOW_EXPERIMENT_ID={experiment_id}',
        *([f"export MLFLOW_TRACKING_URI={shlex.quote(uri_in_script)}"] if uri_in_script else []),
        'export KERASFLOW_SLURM_JOB="${SLURM_JOB_ID:-}"',
        'echo "slurm: job ${SLURM_JOB_ID:-?} on $(hostname) (task $task), "'
        '"GPUs: ${CUDA_VISIBLE_DEVICES:-none}"',
        'cmd="${cmds[$task]}"',
        *container_block(opts.runtime, req.root, req.name, images.tag(req.root), file, env, volumes, passed,
                         data=data_folder()),
    ]
    return "\n".join(lines) + "\n"


# --- submitting -----------------------------------------------------------------------------------------


def record_path(logs: Path, name: str) -> Path:
    """LOGS/slurm/NAME.json; a name that is not a run's (a path, shell characters) is one line."""
    if not box_run.NAME.fullmatch(name):
        raise UserError(f"{name[:60]!r} is not a run name (letters, digits, '.', '_', '-'): see `make queue`")
    return logs / "slurm" / f"{name}.json"


def check(req: box_run.Request, opts: Options, uri: str) -> None:
    """What fails in seconds, before a run exists: Slurm answers, the image is there for the runtime, the
    nodes can reach the tracking server."""
    if not box_run.SHELL_SAFE.match(str(req.root)):
        raise UserError(f"the checkout {req.root} holds a space or a shell character: move it to a plain "
                        "path")
    preflight.run_config(req.root / "config.yaml", req.params)  # a bad value: one line, before any run
    data_folder()
    if opts.runtime not in RUNTIMES:
        raise UserError(f"RUNTIME={opts.runtime[:40]!r} is not one of {', '.join(RUNTIMES)}: set the "
                        "container runtime your cluster's nodes have (docs/cluster.md)")
    if not cluster.available():
        raise UserError("ON=slurm needs Slurm's sbatch and scontrol on PATH (this machine is not a Slurm "
                        "submit host): run it where `sinfo` works, or leave ON unset to run on this box")
    conf = cluster.config()
    if not conf:
        raise UserError("the Slurm controller does not answer (`scontrol ping`): check that slurmctld runs "
                        "and that SLURM_CONF (or /etc/slurm/slurm.conf) names it")
    file = image_file(req.root, opts.runtime, opts.images_dir)
    if opts.runtime == "charliecloud" and not (file / "bin" / "bash").exists():
        raise UserError(f"no Charliecloud image at {file}: make cluster-image RUNTIME=charliecloud "
                        "(CLUSTER_IMAGES=<a folder the nodes share>)")
    if opts.runtime in ("apptainer", "enroot") and not file.is_file():
        raise UserError(f"no {opts.runtime} image at {file}: make cluster-image RUNTIME={opts.runtime} "
                        "(CLUSTER_IMAGES=<a folder the nodes share>)")
    if opts.runtime == "docker" and not file.is_file() and not images.present(images.tag(req.root)):
        raise UserError(f"the image {images.tag(req.root)} is neither built here nor saved for the nodes: "
                        "make image (nodes that share this engine), or make cluster-image RUNTIME=docker")
    host = urlauth.redact(uri)
    if ports.is_loopback(uri):
        far = cluster.remote_nodes()
        if far:
            raise UserError(f"the tracking server {host} listens on this machine only, which nodes "
                            f"{', '.join(far[:5])} cannot reach: set MLFLOW_TRACKING_URI to a server they "
                            "reach (a team server: docs/team-server.md; SQLite on a network filesystem is "
                            "not supported)")


def start(req: box_run.Request, opts: Options, roles: list[list[str]] | None = None) -> int:
    """`make run ON=slurm`: the run made and its job submitted; returns 0 once sbatch took it. `roles`
    (a search: `make tune ON=slurm`): one job array, task i with req.params + roles[i], a run each."""
    req.logs.mkdir(parents=True, exist_ok=True)
    made = box_run.claim_name(req)
    try:
        lock = box_run.lock_name(req)
        given = urlauth.tracking_uri_from_env()
        port, note = server.server_port(req.store, req.port, keep=not given)
        if note:
            req.err(f"note: {note}")
        check(req, opts, given or f"http://{ports.HOST}:{port}")
        box_run.parse_params(req.params)
        con = box_run.Console(req.log)
        made = False
        uri = box_run.ensure_server(req, port, con)
        record = record_path(req.logs, req.name)
        record.parent.mkdir(exist_ok=True)
        name = cluster.cluster_name()
        runs: list[str] = []
        with box_run.held_signals():
            try:
                tasks, experiment_id = [], ""
                for extra in roles or [[]]:
                    run_id, experiment_id = box_run.create_run(
                        req, uri, req.logs / f"run-{req.name}.lock", launch=slurm_runs.LAUNCH,
                        tags={slurm_runs.CLUSTER_TAG: name, slurm_runs.STATE_TAG: "SUBMITTING",
                              slurm_runs.OPEN_TAG: "1",
                              "kerasflow.slurm.runtime": opts.runtime}, params=[*req.params, *extra])
                    runs.append(run_id)
                    tasks.append((run_id, [*req.params, *extra]))
                job = submit(req, opts, tasks, experiment_id, uri, given)
            except BaseException as exc:
                for run_id in runs:
                    box_run.end_run(uri, run_id, "FAILED", str(exc) or "stopped before sbatch returned")
                raise
        write_record(record, job=job, run_id=runs[0], runs=",".join(runs), uri="" if given else uri,
                     name=req.name)
        os.close(lock)
        con.say(f"launcher: MLflow run(s) {' '.join(runs)} (experiment '{req.experiment}', "
                f"{urlauth.redact(uri)})")
        what = f"job {job}" if len(runs) == 1 else f"job array {job} ({len(runs)} tasks)"
        req.out(f"submitted '{req.name}' to Slurm ({name}) as {what}, MLflow run {' '.join(runs)}")
        req.out(f"  follow:  tail -f {req.log if len(runs) == 1 else req.logs / (req.name + '-TASK.log')}")
        req.out("  queue:   make queue          (state and reason, node, GPUs, epoch)")
        req.out(f"  cancel:  make cancel NAME={req.name}   (the job is cancelled, the run ends KILLED)")
        return 0
    finally:
        if made and req.log.exists() and req.log.stat().st_size == 0:
            req.log.unlink()


def submit(req: box_run.Request, opts: Options, tasks: list[tuple[str, list[str]]],  # noqa: PLR0913
           experiment_id: str, uri: str, given: str) -> str:
    """Write the script, sbatch it, tag each run with its job (an array's task i: JOB_i). Returns the
    job id."""
    path = req.logs / "slurm" / f"{req.name}.sbatch"
    text = script(req, opts, tasks, experiment_id, "" if given else uri)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    array = len(tasks) > 1
    output = req.logs / f"{req.name}-%a.log" if array else req.log
    options = [f"--job-name={req.name}", f"--output={output}", "--open-mode=append", f"--chdir={req.root}",
               "--export=ALL", *([f"--array=0-{len(tasks) - 1}"] if array else []),
               *(["--immediate=10"] if req.no_wait else []),  # --no-wait: refused unless it can start now
               *([f"--gres=gpu:{opts.gpus}"] if opts.gpus else []), *opts.sbatch]
    job = cluster.submit(path, options)
    import mlflow

    client = mlflow.MlflowClient(uri)
    ids = [f"{job}_{i}" if array else job for i in range(len(tasks))]
    found = cluster.jobs(ids) or {}
    for (run_id, _), job_id in zip(tasks, ids, strict=True):
        state = found.get(job_id)
        tags = {slurm_runs.JOB_TAG: job_id, slurm_runs.STATE_TAG: state.state if state else "PENDING",
                box_run.QUEUE_TAG: f"Slurm job {job_id}"}
        if state and state.partition:
            tags[slurm_runs.PARTITION_TAG] = state.partition
        client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    return job


def write_record(path: Path, **fields: str) -> None:
    """logs/slurm/NAME.json: the job, its run and server, for `make queue` and `make cancel` (the user's
    own file; no secret in it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**fields, "user": os.getuid(), "host": socket.gethostname()}) + "\n")
    tmp.replace(path)


def read_record(path: Path) -> dict[str, str] | None:
    """A record of this user's, bounded; None when absent, not ours, or not a run name's."""
    if not box_run.NAME.fullmatch(path.stem):
        return None
    try:
        info = path.lstat()
        if not path.is_file() or path.is_symlink() or info.st_uid != os.getuid() or info.st_size > 65536:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not cluster.JOB_ID.fullmatch(str(data.get("job", ""))) or \
            not re.fullmatch(r"[0-9a-f]{32}", str(data.get("run_id", ""))):
        return None
    return {k: str(v)[:500] for k, v in data.items()}


def records(logs: Path) -> list[dict[str, str]]:
    folder = logs / "slurm"
    found = []
    for path in sorted(folder.glob("*.json"))[:1000] if folder.is_dir() else []:
        rec = read_record(path)
        if rec:
            found.append(rec)
    return found


def tracking_of(rec: dict[str, str]) -> str:
    """The server a record's run logs to: the record's own (the store's server), else the user's team
    server (MLFLOW_TRACKING_URI, never written down: it may hold a password)."""
    return rec.get("uri") or os.environ.get("MLFLOW_TRACKING_URI", "")


# --- make queue, make cancel ------------------------------------------------------------------------------


def tasks_of(rec: dict[str, str]) -> list[tuple[str, str]]:
    """(job id, MLflow run id) of each task of a record: one job, or JOB_i of an array."""
    runs = [r for r in rec.get("runs", rec["run_id"]).split(",") if re.fullmatch(r"[0-9a-f]{32}", r)]
    if len(runs) <= 1:
        return [(rec["job"], rec["run_id"])]
    return [(f"{rec['job']}_{i}", run_id) for i, run_id in enumerate(runs)]


def cancel(logs: Path, name: str, timeout: float = 180) -> str:
    """Cancel the job (every task of an array) of this user's run `name`; its MLflow runs end KILLED."""
    rec = read_record(record_path(logs, name))
    if rec is None:
        raise UserError(f"no Slurm run named {name!r} of yours in {logs}/slurm: see `make queue`")
    job, tasks = rec["job"], tasks_of(rec)
    states = cluster.jobs([t for t, _ in tasks]) or {}
    if states and all(s.ended for s in states.values()):
        first = states[tasks[0][0]]
        raise UserError(f"{name}: Slurm job {job} already ended ({first.why}): nothing to cancel")
    cluster.cancel(job)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = cluster.jobs([t for t, _ in tasks]) or {}
        if states and all(s.ended for s in states.values()):
            break
        time.sleep(1)
    else:
        raise UserError(f"Slurm job {job} did not end within {timeout:.0f} s of scancel: see "
                        f"`squeue -j {job}`")
    uri = tracking_of(rec)
    import mlflow

    client = mlflow.MlflowClient(uri)
    for task, run_id in tasks:
        client.set_tag(run_id, slurm_runs.STATE_TAG, states[task].state)
        client.set_tag(run_id, slurm_runs.REASON_TAG,
                       f"cancelled by its user (make cancel): {states[task].why}"[:500])
        orphans.mark_stopped(client, run_id, "KILLED")
        client.set_tag(run_id, slurm_runs.OPEN_TAG, "0")
    if notify.wanted():
        notify.run_ended(name, 143, str(logs / f"{name}.log"), uri, rec["run_id"])
    runs = " ".join(r for _, r in tasks)
    return f"cancel: {name} (Slurm job {job}) cancelled; its MLflow run {runs} ends KILLED"


def queue_rows(logs: Path) -> list[list[str]]:
    """`make queue`'s Slurm part: this user's runs whose jobs Slurm still holds."""
    recs = {task: {**r, "run_id": run_id} for r in records(logs) for task, run_id in tasks_of(r)}
    if not recs:
        return []
    mine = {j.id: j for j in cluster.my_jobs()}
    states = cluster.jobs([j for j in recs if j not in mine]) or {}
    rows = []
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    for job_id, rec in recs.items():
        job = mine.get(job_id) or states.get(job_id)
        if job is None or job.state == cluster.GONE:
            continue
        epoch, metric = progress(tracking_of(rec), rec["run_id"]) if job.state == "RUNNING" else ("-", "-")
        gpus = cluster.gpus_of(job_id) if job.state == "RUNNING" else ""
        rows.append([rec.get("name", "?"), job.state, job.reason if job.reason not in ("None", "") else "-",
                     job.nodes or "-", gpus or job.gres or "-", epoch, metric, rec["run_id"], job_id])
    return rows


def progress(uri: str, run_id: str) -> tuple[str, str]:
    """The run's current epoch and last validation metric ('-' when its server does not answer)."""
    try:
        import mlflow

        client = mlflow.MlflowClient(uri)
        metrics = client.get_run(run_id).data.metrics
        key = next((k for k in ("val_accuracy", "val_auc", "val_loss") if k in metrics), None)
        if not key:
            return "-", "-"
        steps = client.get_metric_history(run_id, key)
        return str(max(m.step for m in steps) + 1 if steps else 0), f"{key}={metrics[key]:.4f}"
    except Exception:  # noqa: BLE001 - a row without progress, never a failed listing
        return "-", "-"


def queue_table(rows: list[list[str]]) -> str:
    head = ["NAME", "STATE", "REASON", "NODE", "GPUS", "EPOCH", "VAL METRIC", "MLFLOW RUN", "JOB"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [head, *rows])


# --- make cluster-image -----------------------------------------------------------------------------------


def cluster_image(root: Path, runtime: str, images_dir: Path | None, say) -> Path:  # noqa: ANN001
    """The user's image (built by `make image`) as the runtime's file or folder, where nodes read it."""
    tag = images.tag(root)
    if not images.present(tag):
        raise UserError(f"the image {tag} is not built: make image first")
    out = image_file(root, runtime, images_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    _remove(tmp)
    if runtime == "docker":
        _checked(["docker", "save", "-o", str(tmp), tag], "docker save")
    elif runtime == "charliecloud":
        tmp.mkdir()
        made = images.docker("create", tag, "true", timeout=120)
        if made.returncode != 0:
            raise UserError(f"docker create {tag} failed ({made.stderr.strip()[:200]})")
        container = made.stdout.strip()
        try:
            export = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
            untar = subprocess.run(["tar", "-x", "--no-same-owner", "--no-same-permissions",
                                    "--exclude=dev/*", "-C", str(tmp)], stdin=export.stdout,
                                   capture_output=True, text=True)
            export.wait()
        finally:
            images.docker("rm", "-f", container)
        if export.returncode != 0 or untar.returncode != 0:
            raise UserError(f"docker export of {tag} failed ({untar.stderr.strip()[:200]}): check the disk "
                            f"space of {out.parent}")
        inspect = images.docker("image", "inspect", "--format", "{{json .Config.Env}}", tag)
        env = json.loads(inspect.stdout or "[]") or []
        (tmp / "ch").mkdir(exist_ok=True)
        (tmp / "ch" / "environment").write_text("".join(f"{e}\n" for e in env if "\n" not in e))
        for folder in (CONTAINER_ROOT.lstrip("/"), "opt/keras", "data"):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
    elif runtime == "apptainer":
        runner = "apptainer" if shutil.which("apptainer") else "singularity"
        _checked([runner, "build", str(tmp), f"docker-daemon://{tag}"], f"{runner} build")
    else:
        _checked(["enroot", "import", "-o", str(tmp), f"dockerd://{tag}"], "enroot import")
    _remove(out)
    tmp.rename(out)
    say(f"cluster-image: {tag} -> {out} ({runtime}); runs with ON=slurm RUNTIME={runtime} use it")
    return out


def _remove(path: Path) -> None:
    """A previous image file or folder (or a half-written one) goes before the new one takes its name."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _checked(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not installed here: make the {what} on a machine that has it") from None
    if done.returncode != 0:
        raise UserError(f"{what} failed ({(done.stderr or done.stdout).strip()[-300:]})")
