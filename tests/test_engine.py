"""The user's container flows, for real, on a Docker engine (tests/engine.bash starts one where none runs).

Everything here runs as a NON-root user (the test makes one, `kftest`, when it runs as root, as CI
does), in a checkout that user owns, with the CPU variant of the image built ONCE for that user's UID
by `make image` (build args from the environment: a local Debian base, weights served on 127.0.0.1):

- run_script.bash trains in the container; every file it writes is the user's; GPU=auto/on; ports;
- `make run` (project_driver.bash), foreground and detached in real tmux: host server, `mlflow run`,
  the run FINISHED with metrics, artifacts and a model that loads on the host by alias; a second run
  refused; a container killed mid-run leaves the run FAILED, never RUNNING;
- every MLproject entry point (main, splits, cv, tune, analyze) through `make run`;
- the README's three quickstarts, from its own blocks (tests/helpers/readme_journeys.py): (a) `make demo`
  on the host, `devcontainer up`, the demo, a tracked demo and the notebook inside (JupyterLab answers
  403/200; the notebook also runs over a store holding an embedded run and a `make run` run); (b) a
  fresh clone with only the light env, a detached `make run` to FINISHED, seen through a forwarded port;
  (c) a fresh clone with only the light env pulls (b)'s store and opens the UI on another port.

The engine has no bridge network (never made here): containers use the host network. What cannot be
shown without one (a published port answering) or without a GPU is said in the README.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, TINY, assert_user_error, free_port, readme_journeys, require_tool, wait_http

# `make test` runs a test file to an xdist worker (--dist loadfile): these tests share one user, checkout
# and image (session fixtures), so they run one after another on one worker while the others take the
# rest of the suite. (xdist_group does not group under pytest 9: xdist renames `_nodeid`, which pytest
# 9 no longer reads.)
pytestmark = [pytest.mark.slow, pytest.mark.engine]

USER_NAME = "kftest"
BASE = "localhost/py311-base:bookworm"
BASE_CA = f"{BASE}-ca"  # + this machine's CA bundle, for pip inside the build (TLS-intercepting networks)
VENV = ROOT / ".venv"


def tiny_p(**changes: object) -> list[str]:
    """TINY as `-P key=value` pairs, some changed (MLflow refuses a repeated -P)."""
    values = dict(item.split("=", 1) for item in TINY)
    values.update({k: str(v) for k, v in changes.items()})
    return [arg for k, v in values.items() for arg in ("-P", f"{k}={v}")]


def docker(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class User:
    """Who runs the flows: a non-root user, reached with runuser when the tests run as root."""

    name: str
    uid: int
    gid: int
    home: Path
    via_root: bool

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        path = f"{VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
        base = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": path,
            "LANG": "C.UTF-8",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        for name in ("DOCKER_HOST", "SSL_CERT_FILE", "PIP_CERT"):
            if os.environ.get(name):
                base[name] = os.environ[name]
        return {**base, **(extra or {})}

    def argv(self, cmd: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        if self.via_root:
            return (
                ["runuser", "-u", self.name, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()], *cmd],
                {"PATH": os.environ["PATH"]},
            )
        return cmd, {**os.environ, **env}

    def run(
        self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        argv, full_env = self.argv(cmd, self.env(env))
        return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)

    def popen(
        self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None, new_session: bool = False
    ) -> subprocess.Popen[str]:
        argv, full_env = self.argv(cmd, self.env(env))
        return subprocess.Popen(
            argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=new_session,
        )


def foreign_files(folder: Path, uid: int) -> list[str]:
    """Files and folders under `folder` NOT owned by uid (.git aside: the test made it)."""
    out = []
    for path in folder.rglob("*"):
        if ".git" in path.relative_to(folder).parts:
            continue
        if path.lstat().st_uid != uid:
            out.append(f"{path.relative_to(folder)} (uid {path.lstat().st_uid})")
    return out


# --- fixtures: engine, user, checkout, image ------------------------------------------------------------


@pytest.fixture(scope="session")
def engine() -> None:
    require_tool("docker")
    started = subprocess.run(
        ["bash", str(ROOT / "tests" / "engine.bash"), "start"], capture_output=True, text=True, timeout=180
    )
    if started.returncode != 0:
        require_tool(f"a Docker engine ({started.stderr.strip()})", available=False)
    we_started = "dockerd started" in started.stdout  # else it ran before: leave it running after
    networks = docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    volumes = set(docker("volume", "ls", "-q").stdout.split())
    yield
    for volume in set(docker("volume", "ls", "-q").stdout.split()) - volumes:
        if volume.startswith("kerasflow-"):  # the CUDA cache and /data volumes the flows created
            docker("volume", "rm", volume)
    # no test may create a network: a bridge's private-range traffic is forbidden on these machines
    assert docker("network", "ls", "--format", "{{.Name}}").stdout.split() == networks
    if we_started:
        subprocess.run(
            ["bash", str(ROOT / "tests" / "engine.bash"), "stop"], capture_output=True, timeout=120
        )


@pytest.fixture(scope="session")
def user(engine) -> User:
    if os.geteuid() != 0:  # a user's machine: the user is non-root already and can reach their engine
        entry = pwd.getpwuid(os.getuid())
        return User(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), via_root=False)
    require_tool("runuser")
    try:
        pwd.getpwnam(USER_NAME)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", USER_NAME], check=True
        )
    socket_path = Path(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://"))
    group = subprocess.run(
        ["stat", "-c", "%G", str(socket_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["usermod", "-aG", group, USER_NAME], check=True)
    entry = pwd.getpwnam(USER_NAME)
    # the user must reach the project's .venv and the interpreter it links to (pyenv's lives under
    # /root): search (x) permission on the folders on the way, nothing more
    interpreter = (VENV / "bin" / "python").resolve()
    for folder in {*VENV.parents, VENV, *interpreter.parents}:
        if folder.stat().st_mode & 0o001 == 0:
            print(f"note: o+x on {folder} so that {USER_NAME} reaches {interpreter}")
            folder.chmod(folder.stat().st_mode | 0o001)
    return User(USER_NAME, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), via_root=True)


@pytest.fixture(scope="session")
def workdir(user: User) -> Path:
    base = Path(
        subprocess.run(
            ["mktemp", "-d", "/tmp/kf-engine-XXXXXX"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    base.chmod(0o755)
    os.chown(base, user.uid, user.gid)
    yield base
    # files the containers wrote are the user's; root (CI) or the user removes them
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def checkout(user: User, workdir: Path) -> Path:
    """A git checkout of this working tree, owned by the user, committed (so the image tag is clean)."""
    repo = workdir / "repo"
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        src = ROOT / name
        if not src.is_file():
            continue
        dst = repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(repo)], check=True)
    git = [
        "git",
        "-c",
        "user.name=kftest",
        "-c",
        "user.email=kftest@localhost",
        "-c",
        "init.defaultBranch=main",
    ]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "checkout for the engine tests"]):
        result = user.run([*git, *cmd], cwd=repo)
        assert result.returncode == 0, result.stderr
    # `make` uses the project's .venv (VENV=...): its stamp must be newer than this copy's lock
    os.utime(repo / "requirements.txt", (0, 0))
    return repo


@pytest.fixture(scope="session")
def weights(workdir: Path) -> dict[str, str]:
    """A VGG16 notop weights file in Keras' own h5 format, served on 127.0.0.1 like the real download."""
    folder = workdir / "weights"
    folder.mkdir()
    path = folder / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import h5py, keras
        from keras.src.legacy.saving import legacy_h5_format
        keras.utils.set_random_seed(0)
        model = keras.applications.VGG16(include_top=False, weights=None)
        with h5py.File({str(path)!r}, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        """),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield {
        "VGG16_WEIGHTS_URL": f"http://127.0.0.1:{port}/{path.name}",
        "VGG16_WEIGHTS_MD5": hashlib.md5(path.read_bytes()).hexdigest(),
    }
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def build_env(engine, weights: dict[str, str]) -> dict[str, str]:
    """What a user without registry access sets to build: a local base, the CPU variant, a weights URL."""
    if docker("image", "inspect", BASE_CA).returncode != 0:
        require_tool("mmdebstrap")
        made = subprocess.run(
            ["bash", str(ROOT / "docker" / "bootstrap-base.bash"), "--host-ca", BASE],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert made.returncode == 0, made.stderr[-3000:]
    return {"BASE_IMAGE": BASE_CA, "TF_VARIANT": "cpu", **weights}


@pytest.fixture(scope="session")
def image(user: User, checkout: Path, build_env: dict[str, str]) -> dict:
    """The CPU image, built once by `make image` as the user; the tag of the checkout's commit."""
    mine = f"u{user.uid}.{user.gid}"  # images are per user: kerasflow:<commit>-u<UID>.<GID>
    old_latest = docker("image", "inspect", "--format", "{{.Id}}", f"kerasflow:latest-{mine}").stdout.strip()
    t0 = time.monotonic()
    built = user.run(["make", "image", f"VENV={VENV}"], cwd=checkout, env=build_env, timeout=2400)
    seconds = time.monotonic() - t0
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    sha = user.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=checkout).stdout.strip()
    tag = f"kerasflow:{sha}-{mine}"
    image_id = docker("image", "inspect", "--format", "{{.Id}}", tag, check=True).stdout.strip()
    print(f"image {tag} built in {seconds:.0f} s")
    if old_latest and old_latest != image_id:
        docker("rmi", old_latest)  # the last run's image: only its own top layers go, the cache stays
    yield {"tag": tag, "id": image_id, "seconds": seconds}
    docker("rmi", tag)  # kerasflow:latest-<user> (a fixed tag) keeps the layers for the next run's cache


@pytest.fixture
def cleanup_containers():
    """Containers a test starts are removed by label/name even when it fails."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "-fv", name)


# --- the image ------------------------------------------------------------------------------------------


def test_the_image_is_built_for_the_user_with_the_baked_weights(image, user, build_env):
    info = json.loads(docker("image", "inspect", image["tag"], check=True).stdout)[0]["Config"]
    assert info["User"] == "dev" and info["WorkingDir"] == "/workspace"
    env = dict(e.split("=", 1) for e in info["Env"])
    assert env["KERAS_HOME"] == "/opt/keras" and int(env["CUDA_CACHE_MAXSIZE"]) >= 2**31
    out = docker(
        "run",
        "--rm",
        "--network",
        "none",
        image["tag"],
        "bash",
        "-c",
        "id -u; id -g; md5sum /opt/keras/models/*.h5; stat -c %a /opt/keras; python --version; "
        "make --version | head -n 1; jupyter lab --version; python -c 'import ipykernel, nbclient'",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert lines[:2] == [str(user.uid), str(user.gid)]
    assert build_env["VGG16_WEIGHTS_MD5"] in out.stdout and "1777" in out.stdout
    assert "Python 3.11" in out.stdout and "GNU Make" in out.stdout


def docker_build(checkout: Path, tag: str, build_args: dict[str, str]) -> tuple[float, str]:
    """docker build of the checkout (classic builder, host network: no bridge here); (seconds, error)."""
    args = [x for k, v in build_args.items() for x in ("--build-arg", f"{k}={v}")]
    t0 = time.monotonic()
    built = subprocess.run(
        ["docker", "build", "-q", "--network", "host", "-f", "docker/Dockerfile", *args, "-t", tag, "."],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=3000,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    return time.monotonic() - t0, "" if built.returncode == 0 else built.stderr[-3000:]


def test_a_new_uid_or_weights_url_rebuilds_only_the_top_layers(image, checkout, build_env):
    """ARGs are declared just before their step: another UID must reuse the 3 GB dependency layers."""
    seconds, error = docker_build(
        checkout, "kerasflow-test:uid4321", {**build_env, "USER_UID": "4321", "USER_GID": "4321"}
    )
    try:
        assert not error, error
        ours = json.loads(docker("image", "inspect", image["tag"], check=True).stdout)[0]["RootFS"]["Layers"]
        theirs = json.loads(docker("image", "inspect", "kerasflow-test:uid4321", check=True).stdout)[0][
            "RootFS"
        ]["Layers"]
        shared = len([a for a, b in zip(ours, theirs, strict=False) if a == b])
        sizes = docker("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image["tag"]).stdout
        assert shared >= len(ours) - 3, (shared, len(ours), sizes)  # user, code, .pth layers differ
        print(f"rebuild for another UID: {seconds:.0f} s, {shared} of {len(ours)} layers shared")
    finally:
        docker("rmi", "kerasflow-test:uid4321")


# --- 1. run_script.bash ---------------------------------------------------------------------------------


def test_run_script_trains_in_the_container_and_every_file_is_the_users(image, user, checkout):
    result = user.run(
        [
            "./run_script.bash",
            "python",
            "train.py",
            *[x for t in TINY for x in ("--set", t)],
            "--set",
            "run_name=run-script",
        ],
        cwd=checkout,
        env={"GPU": "auto"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "building" not in result.stderr, "the image of this commit exists: no rebuild"
    assert "running on CPU" in result.stderr  # GPU=auto says that it falls back
    run_dir = checkout / "outputs" / "run-script"
    assert (run_dir / "model.keras").is_file() and (run_dir / "metrics.json").is_file()
    assert not foreign_files(checkout, user.uid)


def test_gpus_reach_docker_as_device_lists_through_run_script_and_mlflow_run(image, checkout):
    """MLflow joins docker's arguments into one `bash -c` line: GPUS=0,1 must arrive as device=0,1 (a
    list), not device=0 plus count=1. `--gpus` cannot start here (no GPU), so: docker create + inspect."""
    import types

    import mlflow
    from mlflow.projects.backend.local import _get_docker_command

    class Run:  # the parts of an ActiveRun that _get_docker_command reads
        class info:
            run_id, experiment_id, artifact_uri = "0" * 32, "1", "mlflow-artifacts:/1/x/artifacts"

    def created(line: str) -> list:
        cid = subprocess.run(["bash", "-c", line], capture_output=True, text=True)
        assert cid.returncode == 0, cid.stderr
        try:
            return json.loads(docker("inspect", "--format", "{{json .HostConfig.DeviceRequests}}",
                                     cid.stdout.strip(), check=True).stdout)
        finally:
            docker("rm", "-fv", cid.stdout.strip())

    for gpus, ids, count in (("0", ["0"], 0), ("0,1", ["0", "1"], 0), ("all", None, -1)):
        value = subprocess.run(["bash", "-c", 'source docker/lib.bash && gpus_value 2'], cwd=ROOT,
                               env={**os.environ, "GPUS": gpus}, capture_output=True, text=True,
                               check=True).stdout.strip()
        direct = created(f"docker create --gpus {shlex.quote(value)} {image['tag']} true")  # run_script
        mlflow.set_tracking_uri("http://127.0.0.1:5000")
        try:  # project_driver.bash passes -A "gpus='VALUE'"
            cmd = _get_docker_command(types.SimpleNamespace(tags=[image["tag"]]), Run,
                                      docker_args={"gpus": f"'{value}'", "network": "host"})
        finally:
            mlflow.set_tracking_uri(None)
        joined = " ".join(cmd).replace("docker run --rm", "docker create", 1) + " true"
        for requests in (direct, created(joined)):
            assert [(r["DeviceIDs"], r["Count"]) for r in requests] == [(ids, count)], (gpus, requests)
    bad = subprocess.run(["bash", "-c", "source docker/lib.bash && gpus_value 2"], cwd=ROOT,
                         env={**os.environ, "GPUS": "0,2"}, capture_output=True, text=True)
    assert_user_error(bad, "GPUS=0,2 names GPU 2", "lists 2")


def test_data_is_mounted_read_only_at_data(image, user, checkout, workdir):
    dataset = workdir / "dataset"
    dataset.mkdir(exist_ok=True)
    (dataset / "cells.txt").write_text("42\n")
    os.chown(dataset, user.uid, user.gid)
    probe = "cat /data/cells.txt && ! touch /data/new 2> /dev/null && echo read-only"
    result = user.run(["./run_script.bash", "bash", "-c", probe], cwd=checkout,
                      env={"DATA": str(dataset), "GPU": "off"})
    assert result.returncode == 0 and result.stdout.split() == ["42", "read-only"], result.stderr[-2000:]
    missing = user.run(["./run_script.bash", "true"], cwd=checkout,
                       env={"DATA": "/no/such/dir", "GPU": "off"})
    assert_user_error(missing, "DATA=/no/such/dir is not a folder")


def test_run_script_gpu_on_fails_in_one_line(image, user, checkout):
    result = user.run(["./run_script.bash", "true"], cwd=checkout, env={"GPU": "on"})
    assert_user_error(result, "GPU=on but no NVIDIA container runtime", "GPU=off")


def test_published_ports_are_bound_to_localhost_only(image, user, checkout):
    """The binding is recorded on the container; it answering needs a bridge, which is never made here."""
    proc = user.popen(
        ["./run_script.bash", "sleep", "120"], cwd=checkout, env={"PORTS": "8888", "GPU": "off"}
    )
    try:
        container = ""
        deadline = time.monotonic() + 120
        while not container and time.monotonic() < deadline:
            container = docker("ps", "-q", "--filter", f"label=kerasflow.checkout={checkout}").stdout.strip()
            time.sleep(0.5)
        assert container, proc.stderr.read() if proc.poll() is not None else "no container"
        bindings = json.loads(
            docker("inspect", "--format", "{{json .HostConfig.PortBindings}}", container, check=True).stdout
        )
        assert bindings == {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8888"}]}
    finally:
        if container:
            docker("kill", container)
        proc.wait(timeout=60)


# --- 2. make run ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_env(workdir: Path) -> dict[str, str]:
    """One tracking-server port for the module; the server the driver starts is stopped by its pid."""
    env = {
        "GPU": "off",
        "PORT": str(free_port()),
        "KF_TMUX_SESSION": f"kf-engine-{uuid.uuid4().hex[:8]}",
        "TMUX_TMPDIR": str(workdir),
    }
    yield env
    pid_file = workdir / "repo" / "logs" / "mlflow-server.pid"
    if pid_file.is_file():
        subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
    subprocess.run(
        ["runuser", "-u", USER_NAME, "--", "env", f"TMUX_TMPDIR={workdir}", "tmux", "kill-server"]
        if os.geteuid() == 0
        else ["env", f"TMUX_TMPDIR={workdir}", "tmux", "kill-server"],
        capture_output=True,
    )


def make_run(
    user: User, checkout: Path, run_env: dict[str, str], args: list[str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return user.run(
        ["make", "run", f"VENV={VENV}", f"ARGS={shlex.join(args)}"],
        cwd=checkout,
        env=run_env,
        timeout=timeout,
    )


def client(run_env: dict[str, str]):
    import mlflow

    return mlflow.MlflowClient(f"http://127.0.0.1:{run_env['PORT']}")


def runs_named(run_env: dict[str, str], experiment: str = "kerasflow", filter_string: str = "") -> list:
    c = client(run_env)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string) if exp else []


@pytest.fixture(scope="module")
def foreground_run(image, user, checkout, run_env) -> subprocess.CompletedProcess[str]:
    """The README's headline command, registering its model as kfdemo (the notebook loads it too).
    Before it, kerasflow:latest (MLproject's image) is another user's image: make run must not use it."""
    docker("tag", BASE_CA, "kerasflow:latest", check=True)
    args = [
        "--foreground",
        "--name",
        "fg",
        *tiny_p(epochs=2, augment="false"),
        "-P",
        "register_model=kfdemo",
    ]
    return make_run(user, checkout, run_env, args)


def test_make_run_trains_in_the_container_and_the_model_loads_on_the_host(
    foreground_run, image, user, checkout, run_env
):
    import mlflow

    result = foreground_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Changing param values is not allowed" not in result.stdout + result.stderr
    assert (checkout / "logs" / "fg.status").read_text().strip() == "0"
    [run] = [r for r in runs_named(run_env) if r.data.params.get("register_model") == "kfdemo"]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.entryPoint"] == "main"
    # the user's own image ran, not the one kerasflow:latest named before (another user's)
    assert run.data.tags["mlflow.docker.image.id"] == image["id"]
    assert docker("image", "inspect", "--format", "{{.Id}}", "kerasflow:latest").stdout.strip() == image["id"]
    c = client(run_env)
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1]
    assert "test_accuracy" in run.data.metrics
    # MLflow's own params (shell-quoted command-line text) and ours agree: one value per key
    assert run.data.params["augment"] == "false" and run.data.params["splits_file"] == "''"
    assert "n_outer_folds" not in run.data.params  # main takes no folds keys, and logs only its identity
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "curves.png", "history.json"} <= artifacts, artifacts
    # the training ran as the user: what it wrote in the checkout is theirs
    assert not foreign_files(checkout, user.uid)
    mlflow.set_tracking_uri(f"http://127.0.0.1:{run_env['PORT']}")
    try:
        model = mlflow.keras.load_model("models:/kfdemo@candidate")
        import numpy as np

        assert model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape[0] == 2
    finally:
        mlflow.set_tracking_uri(None)


def test_make_run_logs_into_a_team_server_with_a_login_and_never_shows_the_password(
    image, user, checkout, workdir
):
    """MLFLOW_TRACKING_URI=http://user:pass@host is used (not replaced by a local server), and the
    password reaches the container through a 0600 env file, never a command line, a log or a param."""
    password = "Team-pass-" + uuid.uuid4().hex[:8]
    port = free_port()
    team = workdir / "team-store"
    server = user.popen(
        ["python", "-m", "kerasflow", "server", str(team), "--port", str(port), "--auth"],
        cwd=checkout, env={"MLFLOW_AUTH_ADMIN_PASSWORD": password},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=server)
        env = {"GPU": "off", "MLFLOW_TRACKING_URI": f"http://admin:{password}@127.0.0.1:{port}"}
        result = user.run(["make", "run", f"VENV={VENV}",
                           f"ARGS={shlex.join(['--foreground', '--name', 'team', *tiny_p(epochs=1)])}"],
                          cwd=checkout, env=env)
        log = (checkout / "logs" / "team.log").read_text()
        assert result.returncode == 0, log[-4000:]
        assert "using the MLflow server from MLFLOW_TRACKING_URI" in log
        assert password not in log + result.stdout + result.stderr
        import mlflow

        c = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", password
        try:
            [run] = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
            assert run.info.status == "FINISHED"
            assert password not in json.dumps({**run.data.params, **run.data.tags})
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_one_store_in_both_orders_and_every_model_loads(image, user, checkout, run_env):
    """make track then make run into the same experiment, and the other way round: before, the first
    order lost `make run`'s model (its experiment's host-path location was not in the container), the
    second died in make track ('the tracking URI must be a valid http or https URI')."""

    sets = [x for t in [*TINY, "epochs=1"] for x in ("--set", t)]

    def track(experiment: str, name: str) -> None:
        args = shlex.join(["--experiment", experiment, *sets, "--set", f"run_name={name}"])
        result = user.run(["make", "track", f"VENV={VENV}", f"ARGS={args}"], cwd=checkout, env={"GPU": "off"})
        assert result.returncode == 0, result.stderr[-3000:]

    def run(experiment: str, name: str) -> None:
        args = ["--foreground", "--name", name, "--experiment", experiment, *tiny_p(epochs=1)]
        result = make_run(user, checkout, run_env, args)
        assert result.returncode == 0, (checkout / "logs" / f"{name}.log").read_text()[-3000:]

    track("track-first", "tf-embedded")
    run("track-first", "tf-run")
    run("run-first", "rf-run")
    track("run-first", "rf-embedded")
    c = client(run_env)
    models = {}
    for experiment in ("track-first", "run-first"):
        for r in c.search_runs([c.get_experiment_by_name(experiment).experiment_id]):
            assert r.info.status == "FINISHED"
            models[f"{experiment}/{r.info.run_id[:8]}"] = f"models:/{r.outputs.model_outputs[0].model_id}"
    assert len(models) == 4
    # as the user, as a user would: MLflow writes `registered_model_meta` beside a model it loads from
    # a local path, so a root test process would leave root-owned files in the user's store
    server = f"http://127.0.0.1:{run_env['PORT']}"
    for where in (server, str(checkout / "store")):  # through the server (UI, notebook), then directly
        loaded = user.run(["python", "-c", LOAD_MODELS, where, *models.values()], cwd=checkout)
        assert loaded.returncode == 0 and loaded.stdout.strip() == "4 loaded", loaded.stderr[-3000:]


LOAD_MODELS = """
import contextlib, sys, mlflow, numpy as np
from kerasflow.track import store
where = sys.argv[1]
if where.startswith("http"):
    mlflow.set_tracking_uri(where)
with contextlib.nullcontext() if where.startswith("http") else store.open_store(where, create=False):
    for uri in sys.argv[2:]:
        model = mlflow.keras.load_model(uri)
        assert model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape[0] == 2
print(len(sys.argv[2:]), "loaded")
"""


def test_a_real_param_conflict_is_one_line(image, user, checkout, run_env):
    """A run id whose logged epochs differ from the config's: refused in one line, the run not RUNNING."""
    c = client(run_env)
    exp = c.get_experiment_by_name("kerasflow") or c.get_experiment(c.create_experiment("kerasflow"))
    exp_id = getattr(exp, "experiment_id", None) or exp
    run = c.create_run(exp_id)
    c.log_param(run.info.run_id, "epochs", "7")
    result = user.run(
        ["python", "train_mlflow.py", *[x for t in TINY for x in ("--set", t)], "--set", "epochs=1"],
        cwd=checkout,
        env={"MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{run_env['PORT']}"},
    )
    assert_user_error(result, "already has param epochs='7'", "epochs=1", "new run")
    assert c.get_run(run.info.run_id).info.status == "FAILED"


def test_detached_make_run_refuses_a_second_and_a_killed_container_fails_the_run(
    image, user, checkout, run_env
):
    require_tool("tmux")
    env = {**run_env, "SSH_CONNECTION": "127.0.0.1 5555 127.0.0.1 22"}
    args = ["--name", "det", *tiny_p(epochs=200, synthetic_examples=2000)]
    t0 = time.monotonic()
    started = make_run(user, checkout, env, args)
    assert started.returncode == 0, started.stdout + started.stderr
    assert time.monotonic() - t0 < 60 and "tmux attach -t" in started.stdout
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = docker("ps", "-q", "--filter", "name=^kerasflow-det$").stdout.strip()
        log = (checkout / "logs" / "det.log").read_text() if (checkout / "logs" / "det.log").exists() else ""
        if running and "Epoch 2/" in log:
            break
        assert not (checkout / "logs" / "det.status").exists(), log[-3000:]
        time.sleep(1)
    assert running, "the training container never ran"
    # the same slot (on CPU: the same run name) is refused; another name on CPU runs at the same time
    second = make_run(user, checkout, {**run_env}, ["--foreground", "--name", "det", *tiny_p()])
    assert_user_error(second, "a run is already in progress on cpu-det", "det (pid", "tmux attach")
    other = make_run(user, checkout, {**run_env}, ["--foreground", "--name", "beside", *tiny_p(epochs=1)])
    assert other.returncode == 0, (checkout / "logs" / "beside.log").read_text()[-3000:]
    assert docker("ps", "-q", "--filter", "name=^kerasflow-det$").stdout.strip(), "det was disturbed"
    assert docker("kill", "kerasflow-det").returncode == 0
    status = checkout / "logs" / "det.status"
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status.read_text().strip() not in ("", "0")
    [run] = [r for r in runs_named(run_env) if r.info.run_name and r.data.params.get("epochs") == "200"]
    assert run.info.status in ("FAILED", "KILLED")


def test_a_hangup_stops_the_container_and_ends_the_run(image, user, checkout, run_env):
    """SIGHUP to the whole foreground group (an SSH session dropping without tmux): `mlflow run` used to
    die, leaving the run RUNNING and the container training on."""
    args = ["--foreground", "--name", "hup", *tiny_p(epochs=200, synthetic_examples=2000)]
    proc = user.popen(["make", "run", f"VENV={VENV}", f"ARGS={shlex.join(args)}"], cwd=checkout,
                      env=run_env, new_session=True)
    log = checkout / "logs" / "hup.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = docker("ps", "-q", "--filter", "name=^kerasflow-hup$").stdout.strip()
        if running and log.exists() and "Epoch 2/" in log.read_text():
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:] + proc.stderr.read()[-2000:]
        time.sleep(1)
    assert running, "the training container never ran"
    os.killpg(proc.pid, signal.SIGHUP)
    status = checkout / "logs" / "hup.status"
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status.exists(), log.read_text()[-3000:]
    assert status.read_text().strip() not in ("", "0")
    assert docker("ps", "-aq", "--filter", "name=^kerasflow-hup$").stdout.strip() == ""
    [run] = [r for r in runs_named(run_env) if r.data.params.get("synthetic_examples") == "2000"
             and r.data.params.get("epochs") == "200" and r.info.start_time > 0
             and r.info.run_id in log.read_text()]
    assert run.info.status in ("FAILED", "KILLED")
    assert "driver: SIGHUP: stopping container kerasflow-hup" in log.read_text()
    proc.wait(timeout=60)


# --- 3. every MLproject entry point through make run -----------------------------------------------------


def test_every_entry_point_runs_through_make_run(image, user, checkout, run_env):
    small = tiny_p(n_outer_folds=2, n_inner_folds=2)
    steps = [
        # splits takes the data and folds sections only (no model or training keys)
        (
            "splits",
            [
                "-e",
                "splits",
                "-P",
                "data_source=synthetic",
                "-P",
                "synthetic_examples=200",
                "-P",
                "n_outer_folds=2",
                "-P",
                "n_inner_folds=2",
                "-P",
                "out=outputs/engine-splits.json",
            ],
        ),
        ("cv", ["-e", "cv", *small, "-P", "n_outer=1", "-P", "n_inner=1"]),  # splits made when none given
        ("tune", ["-e", "tune", *tiny_p(), "-P", "trials=2", "-P", "study=engine"]),
        ("analyze", ["-e", "analyze", "-P", "filter=tags.kerasflow.level = 'final'"]),
    ]
    for name, args in steps:
        result = make_run(user, checkout, run_env, ["--foreground", "--name", f"ep-{name}", *args])
        assert result.returncode == 0, f"{name}: " + result.stdout[-4000:] + result.stderr[-2000:]
        assert (checkout / "logs" / f"ep-{name}.status").read_text().strip() == "0"
    assert (checkout / "outputs" / "engine-splits.json").is_file()
    assert (checkout / "outputs" / "splits.json").is_file()  # the cv entry point wrote its folds
    by_entry: dict[str, list] = {}
    for run in runs_named(run_env):
        by_entry.setdefault(run.data.tags.get("mlflow.project.entryPoint", ""), []).append(run)
    for entry in ("splits", "cv", "tune", "analyze"):
        assert by_entry.get(entry) and all(r.info.status == "FINISHED" for r in by_entry[entry]), entry
    levels = {r.data.tags.get("kerasflow.level") for r in runs_named(run_env)}
    assert {"cv", "outer_fold", "inner_fold", "search", "trial", "final"} <= levels, levels
    analyzed = runs_named(run_env, filter_string="tags.kerasflow.level = 'final'")
    assert analyzed and all(
        "analysis_threshold" in r.data.metrics or any(k.startswith("analysis_") for k in r.data.metrics)
        for r in analyzed
    )
    assert not foreign_files(checkout, user.uid)


# --- 4. the README's quickstarts, as a newcomer runs them (tests/helpers/readme_journeys.py) ---------------
#
# The commands come from the README's marked blocks; a failure names the README line. Each journey starts
# from its user's state: (a) a checkout where `make demo` ran on the host first (a real .venv there), (b)
# and (c) fresh clones with only the light env (any Python >= 3.10, no TensorFlow).

JOURNEY_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"  # no project .venv on it


@pytest.fixture(scope="session")
def package_cache(user: User, workdir: Path) -> dict[str, str]:
    """The user's uv cache, hard-linked from this machine's (`make env` filled it): the journeys' `make env`
    and light env install the same locks without downloading them again."""
    mine = Path.home() / ".cache" / "uv"
    if not user.via_root or not mine.is_dir():
        return {}
    theirs = workdir / "uv-cache"
    subprocess.run(["cp", "-al", str(mine), str(theirs)], check=True)
    subprocess.run(["find", str(theirs), "-type", "d", "-exec", "chown", f"{user.uid}:{user.gid}", "{}", "+"],
                   check=True)
    # symlinks into that cache: the kernel refuses the user hard links to root's files (protected_hardlinks),
    # and a copy of the TensorFlow lock costs minutes
    return {"UV_CACHE_DIR": str(theirs), "UV_LINK_MODE": "symlink"}


def fresh_clone(user: User, checkout: Path, workdir: Path, name: str) -> Path:
    """`git clone` of the engine tests' checkout (the same commit, so the same image tag), as the user."""
    dest = workdir / name
    cloned = user.run(["git", "clone", "-q", str(checkout), str(dest)], cwd=workdir)
    assert cloned.returncode == 0, cloned.stderr
    return dest


def background(user: User, cwd: Path, env: dict[str, str]):
    def start(command: str) -> subprocess.Popen[str]:
        return user.popen(["bash", "-c", command], cwd=cwd, env=env, new_session=True)

    return start


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def devcontainer(image, user: User, checkout: Path, workdir: Path,  # noqa: PLR0913  (fixtures)
                 build_env: dict[str, str], package_cache: dict[str, str]) -> dict:
    """Quickstart (a), host part: `make demo` on the host (it makes a real .venv in the checkout), then
    `devcontainer up` as the README says, with what CI adds: host networking (an override GENERATED from
    .devcontainer.json: the engine has no bridge) and a label to remove the container afterwards."""
    import json5

    cli = require_tool("devcontainer")
    config = json5.loads((checkout / ".devcontainer.json").read_text())
    port = free_port()
    config["runArgs"] = [*config.get("runArgs", []), "--network=host"]
    config["build"]["options"] = [*config["build"].get("options", []), "--network=host"]
    config["build"]["dockerfile"] = str(checkout / config["build"]["dockerfile"])
    config["build"]["context"] = str(checkout / config["build"]["context"])
    config["containerEnv"] = {**config.get("containerEnv", {}), "JUPYTER_PORT": str(port)}
    override = workdir / "devcontainer.override.json"
    override.write_text(json.dumps(config, indent=2))
    os.chown(override, user.uid, user.gid)
    label = f"kerasflow.test={uuid.uuid4().hex[:12]}"
    common = ["--workspace-folder", str(checkout), "--id-label", label]
    env = {**build_env, **package_cache, "DOCKER_BUILDKIT": "0", "PATH": JOURNEY_PATH}
    before = set(docker("images", "-q", "--no-trunc").stdout.split())
    info = {"cli": cli, "common": common, "env": env, "port": port, "label": label}

    def host(command: str) -> subprocess.CompletedProcess[str]:
        if command.startswith("devcontainer up "):  # what CI adds to the README's command
            command += f" --id-label {label} --override-config {shlex.quote(str(override))}"
        t0 = time.monotonic()
        done = user.run(["bash", "-c", command], cwd=checkout, env=env, timeout=1800)
        info[command.split(" --")[0]] = time.monotonic() - t0
        if command.startswith("devcontainer up ") and done.returncode == 0:
            info["up"] = json.loads(done.stdout.strip().splitlines()[-1])
        return done

    try:
        steps = readme_journeys.journeys()[("devcontainer", "host")]
        readme_journeys.run(steps, host, background(user, checkout, env))
        print(f"quickstart (a), host part: {info}")
        yield info
    finally:
        for container in docker("ps", "-aq", "--filter", f"label={label}").stdout.split():
            docker("rm", "-fv", container)
        made = set(docker("images", "-q", "--no-trunc").stdout.split()) - before
        for _ in range(3):  # the UID-update image is a child of the built one: children go first
            made = {i for i in made if docker("rmi", "-f", i).returncode != 0}


def dc_exec(
    dc: dict, user: User, checkout: Path, *cmd: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    remote_env = [x for k, v in (env or {}).items() for x in ("--remote-env", f"{k}={v}")]
    return user.run(
        [dc["cli"], "exec", *dc["common"], *remote_env, *cmd], cwd=checkout, env=dc["env"], timeout=timeout
    )


@pytest.fixture(scope="module")
def container_journey(devcontainer, user: User, checkout: Path) -> dict[str, float]:
    """Quickstart (a), in the container's terminal: the README's block through `devcontainer exec`."""
    seconds: dict[str, float] = {}

    def inside(command: str) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        done = dc_exec(devcontainer, user, checkout, "bash", "-c", command, timeout=1800)
        seconds[command] = time.monotonic() - t0
        return done

    steps = readme_journeys.journeys()[("devcontainer", "container")]
    readme_journeys.run(steps, inside, background(user, checkout, devcontainer["env"]))
    print(f"quickstart (a), container part: {seconds}")
    return seconds


def test_quickstart_a_reopen_in_container_after_a_demo_on_the_host(devcontainer, container_journey, user,
                                                                   checkout):
    """The host's .venv is in the mounted checkout; in the container `make` used it (its python is the
    host's) before the image's env won. Both demos trained, the container's as the remote user."""
    assert devcontainer["up"]["outcome"] == "success"
    assert (checkout / ".venv" / "bin" / "python").exists()  # the host demo made it
    demos = sorted(p for p in (checkout / "outputs").glob("demo-*") if (p / "model.keras").is_file())
    assert len(demos) >= 2, demos  # one on the host, one in the container (make track-demo)
    whoami = dc_exec(devcontainer, user, checkout, "bash", "-c", "id -un; id -u; make -n demo | head -n 1")
    assert whoami.stdout.split()[:2] == ["dev", str(user.uid)], whoami.stdout
    assert "/opt/venv/bin/python -m kerasflow train" in whoami.stdout
    import mlflow

    c = mlflow.MlflowClient(f"sqlite:///{checkout / 'store' / 'mlflow.db'}")
    assert c.get_model_version_by_alias("demo", "candidate").run_id
    assert not foreign_files(checkout, user.uid)


def test_devcontainer_serves_jupyterlab_with_a_token(devcontainer, checkout):
    url_file = checkout / "logs" / "jupyter.url"
    deadline = time.monotonic() + 120
    while not url_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    url = url_file.read_text().strip()
    port = devcontainer["port"]
    assert url.startswith(f"http://127.0.0.1:{port}/lab?token=")
    token = url.split("token=")[1]
    api = f"http://127.0.0.1:{port}/api/sessions"
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{api}?token={token}", timeout=5)
            break
        except OSError:
            time.sleep(1)
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(api, timeout=10)
    assert denied.value.code == 403
    assert urllib.request.urlopen(f"{api}?token={token}", timeout=10).status == 200


def test_the_notebook_explores_embedded_and_make_run_runs_in_the_containers_kernel(
    devcontainer, container_journey, foreground_run, user, checkout
):
    """The quickstart's embedded demo run (`make track-demo` in the container) beside the `make run`
    runs of this store; the notebook lists both, plots their curves and classifies images with the
    model `make run` registered."""
    import nbformat

    out = "outputs/explore.executed.ipynb"
    executed = dc_exec(
        devcontainer,
        user,
        checkout,
        "jupyter",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "notebooks/explore.ipynb",
        "--output",
        f"/workspace/{out}",
        env={"KF_STORE": "store", "KF_MODEL": "models:/kfdemo@candidate"},
    )
    assert executed.returncode == 0, executed.stdout[-3000:] + executed.stderr[-3000:]
    nb = nbformat.read(checkout / out, as_version=4)
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    images = [
        o
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]
    assert "embedded (make track)" in text and "mlflow run (make run)" in text, text[-3000:]
    assert "demo-" in text  # the quickstart's tracked demo run
    assert images, "the curves figure"
    assert "model models:/kfdemo@candidate: image size 32" in text
    assert "predicted" in text and ("parasitized" in text or "uninfected" in text)
    assert not [
        o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"
    ]


@pytest.fixture(scope="module")
def box_journey(image, user: User, checkout: Path, workdir: Path,  # noqa: PLR0913  (fixtures)
                build_env: dict[str, str], package_cache: dict[str, str]) -> dict:
    """Quickstart (b) on the box: a fresh clone with only the light env; `make run ARGS=--detach` (the
    offline demo, as the README says for a box without internet), to its end."""
    require_tool("tmux")
    clone = fresh_clone(user, checkout, workdir, "journey-b")
    env = {**build_env, **package_cache, "PATH": JOURNEY_PATH, "HOST_PYTHON": "python3",
           "PORT": str(free_port()), "KF_TMUX_SESSION": f"kf-journey-{uuid.uuid4().hex[:8]}",
           "TMUX_TMPDIR": str(workdir)}
    info = {"clone": clone, "env": env}
    try:
        t0 = time.monotonic()
        readme_journeys.run(readme_journeys.journeys()[("gpu-server", "box")],
                            lambda cmd: user.run(["bash", "-c", cmd], cwd=clone, env=env, timeout=1200),
                            background(user, clone, env))
        info["detach_seconds"] = time.monotonic() - t0
        status = clone / "logs" / "journey.status"
        deadline = time.monotonic() + 900
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(2)
        info["run_seconds"] = time.monotonic() - t0
        log_file = clone / "logs" / "journey.log"
        log = log_file.read_text() if log_file.exists() else ""
        assert status.exists() and status.read_text().strip() == "0", log[-4000:]
        print(f"quickstart (b), box: detached in {info['detach_seconds']:.0f} s, run ended after "
              f"{info['run_seconds']:.0f} s")
        yield info
    finally:
        pid_file = clone / "logs" / "mlflow-server.pid"
        if pid_file.is_file():
            subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
        user.run(["tmux", "kill-server"], cwd=workdir, env={"TMUX_TMPDIR": str(workdir)})


def test_quickstart_b_a_detached_make_run_seen_through_a_forwarded_port(box_journey, user, image):
    """The run ends FINISHED, and the laptop sees it through `ssh -L 5001:127.0.0.1:5000` (socat stands in
    for the SSH forward): before, the server refused any Host but its own port (403 Invalid Host)."""
    require_tool("socat")
    clone, env = box_journey["clone"], {**box_journey["env"], "FORWARD_PORT": str(free_port())}
    procs = readme_journeys.run(readme_journeys.journeys()[("gpu-server", "laptop")],
                                lambda cmd: user.run(["bash", "-c", cmd], cwd=clone, env=env),
                                background(user, clone, env))
    try:
        forwarded = f"http://localhost:{env['FORWARD_PORT']}"
        wait_http(f"{forwarded}/health", timeout=60)
        with urllib.request.urlopen(f"{forwarded}/", timeout=30) as page:  # the UI's page itself
            assert page.status == 200 and b"MLflow" in page.read()
        import mlflow

        c = mlflow.MlflowClient(forwarded)
        [run] = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.docker.image.id"] == image["id"]
        assert [m.step for m in c.get_metric_history(run.info.run_id, "val_accuracy")] == list(range(5))
        assert run.data.params["data_source"] == "synthetic" and "test_accuracy" in run.data.metrics
        assert (clone / ".venv-host").is_dir() and not (clone / ".venv").exists()  # the light env only
        assert not foreign_files(clone, user.uid)
    finally:
        stop(procs)


def test_quickstart_c_a_laptop_pulls_the_box_store_and_opens_the_ui_on_another_port(
    box_journey, user, checkout, workdir, package_cache
):
    """A fresh clone with only the light env (`make pull`/`make ui` needed the full TensorFlow env
    before): the box's store, in use by its server, pulled from a path; the UI on another port lists the
    run's artifacts."""
    require_tool("rsync")
    clone = fresh_clone(user, checkout, workdir, "journey-c")
    env = {**package_cache, "PATH": JOURNEY_PATH, "HOST_PYTHON": "python3",
           "BOX_STORE": str(box_journey["clone"] / "store"), "UI_PORT": str(free_port())}
    procs = readme_journeys.run(readme_journeys.journeys()[("laptop", "")],
                                lambda cmd: user.run(["bash", "-c", cmd], cwd=clone, env=env, timeout=900),
                                background(user, clone, env))
    try:
        ui = f"http://localhost:{env['UI_PORT']}"
        wait_http(f"{ui}/health", timeout=180, proc=procs[0])
        import mlflow

        c = mlflow.MlflowClient(ui)
        [run] = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
        listed = {a.path for a in c.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "curves.png", "metrics.json"} <= listed, listed
        assert (clone / "store" / "mlflow.db").is_file() and not (clone / ".venv").exists()
    finally:
        stop(procs)


# --- 6. the GPU variant (built, and checked as far as a machine without a GPU can) ----------------------

CUDA_LIBRARIES = [  # what TF 2.21's CUDA build loads (CUDA 12.x, cuDNN 9)
    "libcudart.so.12",
    "libcublas.so.12",
    "libcublasLt.so.12",
    "libcufft.so.11",
    "libcusparse.so.12",
    "libcusolver.so.11",
    "libcurand.so.10",
    "libcudnn.so.9",
    "libnccl.so.2",
    "libnvJitLink.so.12",
]


@pytest.mark.gpu_image
def test_the_gpu_variant_resolves_every_cuda_library_and_trains_on_cpu(checkout, build_env):
    """`make test-gpu-image` (CI's own step): the pinned tensorflow[and-cuda] wheels, ldconfig'd."""
    tag = "kerasflow-test:gpu"  # a fixed tag: its 5 GB CUDA layer stays cached for the next run
    old = docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    seconds, error = docker_build(checkout, tag, {**build_env, "TF_VARIANT": "gpu"})
    assert not error, error
    new = docker("image", "inspect", "--format", "{{.Id}}", tag, check=True).stdout.strip()
    if old and old != new:
        docker("rmi", old)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag, check=True).stdout)
    print(f"GPU variant built in {seconds:.0f} s, {size / 1e9:.1f} GB")
    check = " ".join(f'ldconfig -p | grep -q "{lib} " || echo "missing {lib}";' for lib in CUDA_LIBRARIES)
    script = (
        f"{check} python -c 'import tensorflow as tf; b = tf.sysconfig.get_build_info(); "
        'print("cuda", b["cuda_version"], "cudnn", b["cudnn_version"])\' 2> /dev/null && '
        "cd /opt/kerasflow && "
        "python train.py " + " ".join(f"--set {t}" for t in TINY) + " --set output_dir=/tmp/out"
    )
    out = docker("run", "--rm", "--network", "none", tag, "bash", "-c", script, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "missing" not in out.stdout, out.stdout
    assert re.search(r"cuda 12(\.\d+)+ cudnn 9\b", out.stdout), out.stdout
    # no GPU: one line of ours says so; TF's own start-up lines stay hidden
    device = [line for line in out.stderr.splitlines() if line.startswith("device:")]
    assert device == [device[0]] and "CPU" in device[0] and "a CUDA build" in device[0], out.stderr
    assert "cuInit" not in out.stderr and "absl::InitializeLog" not in out.stderr, out.stderr
    assert "test: {" in out.stderr


# --- the team server: compose file and its small image --------------------------------------------------


def test_the_team_servers_compose_file_and_small_image_against_postgresql(engine, build_env, postgres):
    """Compose cannot run here (it would create a bridge network): its file is validated, and its
    server image is built and run for real on the host network against a throwaway PostgreSQL."""
    import mlflow
    from helpers import PG_PASSWORD

    compose = require_tool("docker-compose")
    config = [compose, "-f", "docker/compose.yaml", "config"]
    checked = subprocess.run(config, cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "POSTGRES_PASSWORD": "only-for-config"})
    assert checked.returncode == 0, checked.stderr
    assert "127.0.0.1:5000:5000" in checked.stdout
    assert "postgresql+psycopg2://mlflow@db:5432/mlflow" in checked.stdout
    unset = subprocess.run(config, cwd=ROOT, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"})
    assert unset.returncode != 0 and "set POSTGRES_PASSWORD in docker/team.env" in unset.stderr
    networks = docker("network", "ls", "--format", "{{.Name}}").stdout
    tag = f"kerasflow-server:test-{uuid.uuid4().hex[:6]}"
    build = ('source docker/lib.bash && mapfile -t a < <(build_args) && '
             f'docker_build --file docker/server.Dockerfile "${{a[@]}}" --tag {tag} .')
    built = subprocess.run(["bash", "-c", build], cwd=ROOT, env={**os.environ, **build_env},
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag, check=True).stdout)
    print(f"team server image: {size / 1e9:.2f} GB")
    port, name = free_port(), f"kf-team-{uuid.uuid4().hex[:6]}"
    # `-e PGPASSWORD` with no value: docker reads it from this environment, not from the command line
    started = subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--network", "host", "-e", "PGPASSWORD", tag,
         f"--backend-store-uri=postgresql+psycopg2://kf@127.0.0.1:{postgres['port']}/mlflow",
         "--artifacts-destination=/artifacts", "--host=127.0.0.1", f"--port={port}",
         f"--allowed-hosts=127.0.0.1:{port}"],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": PG_PASSWORD})
    try:
        assert started.returncode == 0, started.stderr
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment(f"team-{name}"))
        client.log_metric(run.info.run_id, "m", 1.0)
        client.log_text(run.info.run_id, "through the proxy", "note.txt")
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    finally:
        docker("rm", "-fv", name)
        docker("rmi", tag)
    assert docker("network", "ls", "--format", "{{.Name}}").stdout == networks  # no bridge was made


@pytest.mark.usefixtures("image")
def test_tune_workers_in_containers_join_a_study_on_postgresql(user, checkout, workdir, run_env, postgres):
    """Two `make run -e tune -P role=join` containers and a lead process on the host share one Optuna
    study in PostgreSQL and one tracking server; the study URL (with its password) reaches the
    containers through make run's 0600 env file."""
    from helpers import PG_PASSWORD

    study_url = postgres["createdb"]("enginestudy").replace("kf@", f"kf:{PG_PASSWORD}@")
    port = free_port()
    server = user.popen(["python", "-m", "kerasflow", "server", str(workdir / "eng-store"), "--port",
                         str(port)], cwd=checkout)
    joiners: list[subprocess.Popen[str]] = []
    lead = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
        env = {**run_env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
               "KERASFLOW_STUDY_STORAGE": study_url}
        for name in ("j1", "j2"):  # first, so they wait for the lead's queue (up to --grace)
            args = ["--foreground", "--name", name, "-e", "tune", *tiny_p(epochs=2), "-P", "role=join",
                    "-P", "study=eng", "-P", "grace=240"]
            joiners.append(user.popen(["make", "run", f"VENV={VENV}", f"ARGS={shlex.join(args)}"],
                                      cwd=checkout, env=env))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not all(
                docker("container", "inspect", f"kerasflow-{n}").returncode == 0 for n in ("j1", "j2")):
            assert all(j.poll() is None for j in joiners), [j.stderr.read()[-3000:] for j in joiners]
            time.sleep(1)
        sets = [arg for t in TINY for arg in ("--set", t)]
        lead = user.popen(["python", "-m", "kerasflow", "tune", *sets, "--set", "epochs=2", "--study", "eng",
                           "--trials", "6", "--grace", "240"], cwd=checkout, env=env)
        _, lead_err = lead.communicate(timeout=1200)
        assert lead.returncode == 0, lead_err[-3000:]
        for j in joiners:
            out, err = j.communicate(timeout=600)
            assert j.returncode == 0, (out + err)[-3000:]
        logs = "".join((checkout / "logs" / f"{n}.log").read_text() for n in ("j1", "j2"))
        assert PG_PASSWORD not in logs + lead_err

        import mlflow
        import optuna

        study = optuna.load_study(study_name="eng", storage=study_url.replace("postgresql://",
                                                                              "postgresql+psycopg2://"))
        assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 6
        c = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        runs = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
        [search] = [r for r in runs if r.data.tags.get("kerasflow.level") == "search"]
        trials = [r for r in runs if r.data.tags.get("kerasflow.level") == "trial"]
        assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == list(range(6))
        assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {search.info.run_id}
        workers = [r for r in runs if r.data.tags.get("kerasflow.level") == "worker"]
        assert len(workers) == 2 and all(w.info.status == "FINISHED" for w in workers)
        assert all(w.data.tags["kerasflow.search_run"] == search.info.run_id for w in workers)
        in_containers = sum(w.data.metrics["trials_run_here"] for w in workers)
        assert in_containers >= 2, in_containers  # the containers took trials from the queue
        assert PG_PASSWORD not in json.dumps([{**r.data.params, **r.data.tags} for r in runs])
    finally:
        for proc in [*joiners, *([lead] if lead else []), server]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
        for name in ("j1", "j2"):
            docker("rm", "-fv", f"kerasflow-{name}")
