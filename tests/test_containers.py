"""The container layer, proven by the strongest checks that run without a Docker engine:

- the Dockerfile lints clean (hadolint) and really builds (buildah, chroot isolation, on a Python 3.11
  Debian base bootstrapped with mmdebstrap, CPU variant); the built image is then inspected and used
  (`buildah run`): its user, the baked weights, TensorFlow and a short training as that user;
- .devcontainer.json validates against the official schema and parses with @devcontainers/cli, and
  its postStartCommand really starts JupyterLab on 127.0.0.1 with a random token;
- run_script.bash and project_driver.bash run for real against a stand-in `docker` (and `mlflow`,
  `nvidia-smi`) that records what it is asked, in a throw-away git checkout: image tags, build args,
  run flags, GPU detection, errors, tmux detaching and the one-run-at-a-time lock;
- MLproject's docker_env gives the `docker run` command MLflow builds the right mounts and options.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, require_tool

FAKE_DOCKER = r'''#!/usr/bin/env python3
"""Stand-in for the docker CLI: records every call, keeps "images" as files, never runs anything."""
import json, os, sys
state = os.environ["FAKE_DOCKER_DIR"]
args = sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as fh:
    fh.write(json.dumps(args) + "\n")
images = os.path.join(state, "images")
os.makedirs(images, exist_ok=True)
if args[:1] == ["--version"]:
    print("Docker version 27.0.1, build fake"); sys.exit(0)
if args[:1] == ["info"]:
    if os.environ.get("FAKE_DOCKER_DAEMON") == "down":
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    fmt = args[args.index("--format") + 1] if "--format" in args else ""
    runtimes = os.environ.get("FAKE_DOCKER_RUNTIMES", '{"runc":{"path":"runc"}}')
    print(runtimes if "Runtimes" in fmt else "27.0.1")
    sys.exit(0)
if args[:2] == ["image", "inspect"]:
    sys.exit(0 if os.path.exists(os.path.join(images, args[2].replace("/", "_"))) else 1)
if args[:1] == ["build"]:
    for i, a in enumerate(args):
        if a == "--tag":
            open(os.path.join(images, args[i + 1].replace("/", "_")), "w").close()
    sys.exit(0)
if args[:1] == ["run"]:
    sys.exit(int(os.environ.get("FAKE_DOCKER_RUN_EXIT", "0")))
sys.exit(0)
'''

FAKE_NVIDIA_SMI = r"""#!/usr/bin/env bash
for i in $(seq 1 "${FAKE_GPUS:-0}"); do echo "GPU $((i - 1)): NVIDIA H100 80GB HBM3 (UUID: GPU-fake-$i)"; done
"""

FAKE_MLFLOW = r'''#!/usr/bin/env python3
"""Stand-in for the mlflow CLI: `server` answers /health; `run` records its call and exits as told."""
import json, os, sys, time
state = os.environ["FAKE_DOCKER_DIR"]
args = sys.argv[1:]
if args[0] == "server":
    port = args[args.index("--port") + 1]
    root = os.path.join(state, "server")
    os.makedirs(root, exist_ok=True)
    open(os.path.join(root, "health"), "w").write("OK")
    with open(os.path.join(state, "server.args"), "w") as fh:
        json.dump(args, fh)
    os.execvp(sys.executable, [sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1",
                               "--directory", root])
if args[0] == "run":
    with open(os.path.join(state, "mlflow-run.json"), "a") as fh:
        fh.write(json.dumps({"args": args, "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI")}) + "\n")
    time.sleep(float(os.environ.get("FAKE_RUN_SECONDS", "0")))
    sys.exit(int(os.environ.get("FAKE_RUN_EXIT", "0")))
'''

TOOLS = [
    "bash",
    "sh",
    "env",
    "git",
    "id",
    "dirname",
    "head",
    "grep",
    "cat",
    "date",
    "seq",
    "sed",
    "mkdir",
    "rm",
    "tee",
    "sleep",
    "python3",
    "printf",
    "tmux",
    "tr",
    "ls",
    "nohup",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sandbox(tmp_path: Path) -> dict:
    """A git checkout holding the scripts, and a PATH whose `docker`/`mlflow`/`nvidia-smi` are stand-ins."""
    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    for name in ("run_script.bash", "project_driver.bash", "docker/lib.bash", "docker/Dockerfile"):
        shutil.copy2(ROOT / name, repo / name)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "scripts"], check=True)
    sha = subprocess.run(
        [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if tool == "python3":  # a real interpreter, not a pyenv shim that needs pyenv on PATH
            found = os.path.realpath(sys.executable)
        if found:
            (bin_dir / tool).symlink_to(found)
    state = tmp_path / "state"
    state.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("nvidia-smi", FAKE_NVIDIA_SMI), ("mlflow", FAKE_MLFLOW)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "FAKE_DOCKER_DIR": str(state),
        "MLFLOW": str(bin_dir / "mlflow"),
        "LOGS": str(tmp_path / "logs"),
        "STORE": str(tmp_path / "store"),
        "KF_TMUX_SESSION": f"kf-test-{os.getpid()}-{tmp_path.name}",
        "TMUX_TMPDIR": str(tmp_path),
    }
    return {"repo": repo, "bin": bin_dir, "state": state, "env": env, "sha": sha, "tmp": tmp_path}


def script(
    sb: dict, name: str, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(sb["repo"] / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=sb["repo"],
        env={**sb["env"], **env},
    )


def calls(sb: dict, verb: str) -> list[list[str]]:
    path = sb["state"] / "calls.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r[:1] == [verb]]


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# --- run_script.bash ----------------------------------------------------------------------------------


def test_run_script_builds_once_then_runs_as_the_user_with_the_repo_mounted(sandbox):
    sb = sandbox
    first = script(sb, "run_script.bash", "python", "train.py", "--set", "epochs=3")
    assert first.returncode == 0, first.stderr
    image = f"kerasflow:{sb['sha']}"
    [build] = calls(sb, "build")
    assert build[build.index("--tag") + 1] == image and "kerasflow:latest" in build
    assert f"USER_UID={os.getuid()}" in build and f"USER_GID={os.getgid()}" in build
    assert build[build.index("--file") + 1] == str(sb["repo"] / "docker" / "Dockerfile")
    [run] = calls(sb, "run")
    assert run[:3] == ["run", "--rm", "--init"]
    assert run[run.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert f"{sb['repo']}:/workspace" in run and "kerasflow-cuda-cache:/cache/nv" in run
    assert run[-5:] == [image, "python", "train.py", "--set", "epochs=3"]
    assert "--gpus" not in run
    assert "running on CPU" in first.stderr  # the fallback is said, in one line
    second = script(sb, "run_script.bash", "true")
    assert second.returncode == 0 and len(calls(sb, "build")) == 1  # the image for this commit exists


def test_a_dirty_tree_gets_a_dirty_tag_and_a_cached_rebuild(sandbox):
    sb = sandbox
    (sb["repo"] / "new_file.py").write_text("x = 1\n")
    for _ in range(2):
        assert script(sb, "run_script.bash", "true").returncode == 0
    builds = calls(sb, "build")
    assert len(builds) == 2 and all(f"kerasflow:{sb['sha']}-dirty" in b for b in builds)


def test_gpu_is_used_when_the_runtime_and_a_gpu_are_there(sandbox):
    sb = sandbox
    gpu = {
        "FAKE_DOCKER_RUNTIMES": '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{}}',
        "FAKE_GPUS": "2",
    }
    result = script(sb, "run_script.bash", "nvidia-smi", **gpu)
    assert result.returncode == 0, result.stderr
    run = calls(sb, "run")[-1]
    assert run[run.index("--gpus") + 1] == "all" and "running on CPU" not in result.stderr
    assert script(sb, "run_script.bash", "true", GPU="off", **gpu).returncode == 0
    assert "--gpus" not in calls(sb, "run")[-1]


def test_ports_are_published_on_localhost_only(sandbox):
    result = script(sandbox, "run_script.bash", "jupyter", "lab", PORTS="8888 5000")
    assert result.returncode == 0, result.stderr
    run = calls(sandbox, "run")[-1]
    published = [run[i + 1] for i, a in enumerate(run) if a == "--publish"]
    assert published == ["127.0.0.1:8888:8888", "127.0.0.1:5000:5000"]


def test_run_script_errors(sandbox):
    sb = sandbox
    one_error_line(script(sb, "run_script.bash"), "give the command to run")
    one_error_line(
        script(sb, "run_script.bash", "true", GPU="on", FAKE_GPUS="1"),
        "GPU=on but no NVIDIA container runtime",
        "GPU=off",
    )
    one_error_line(
        script(sb, "run_script.bash", "true", GPU="on", FAKE_DOCKER_RUNTIMES='{"nvidia":{}}', FAKE_GPUS="0"),
        "nvidia-smi -L` lists no GPU",
    )
    one_error_line(script(sb, "run_script.bash", "true", GPU="maybe"), "GPU=maybe is not one of")
    one_error_line(
        script(sb, "run_script.bash", "true", FAKE_DOCKER_DAEMON="down"),
        "Docker daemon is not reachable (Cannot connect",
        "systemctl start docker",
    )
    one_error_line(script(sb, "run_script.bash", "true", PORTS="http"), "PORTS must be port numbers")
    (sb["bin"] / "docker").unlink()
    one_error_line(script(sb, "run_script.bash", "true"), "docker is not installed", "docs.docker.com")
    assert not calls(sb, "run")


# --- project_driver.bash ------------------------------------------------------------------------------


def _stop_fake_server(sb: dict) -> None:
    subprocess.run(["pkill", "-f", "--", f"--directory {sb['state'] / 'server'}"], capture_output=True)


def test_driver_starts_a_server_builds_and_runs_mlflow_in_docker(sandbox):
    sb = sandbox
    port = str(free_port())
    try:
        result = script(
            sb,
            "project_driver.bash",
            "--foreground",
            "--name",
            "first",
            "-P",
            "epochs=1",
            "--experiment",
            "exp",
            PORT=port,
            FAKE_GPUS="1",
            FAKE_DOCKER_RUNTIMES='{"nvidia":{}}',
        )
        assert result.returncode == 0, result.stdout + result.stderr
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)  # the server it started
    finally:
        _stop_fake_server(sb)
    server = json.loads((sb["state"] / "server.args").read_text())
    assert server[server.index("--host") + 1] == "127.0.0.1"
    assert server[server.index("--artifacts-destination") + 1] == str(sb["tmp"] / "store" / "artifacts")
    [run] = [json.loads(x) for x in (sb["state"] / "mlflow-run.json").read_text().splitlines()]
    args = run["args"]
    assert run["tracking_uri"] == f"http://127.0.0.1:{port}"
    assert args[:2] == ["run", str(sb["repo"])] and args[args.index("-e") + 1] == "main"
    assert args[args.index("--experiment-name") + 1] == "exp"
    assert "network=host" in args and "gpus=all" in args and "epochs=1" in args
    assert calls(sb, "build"), "the image is built before mlflow run uses it"
    logs = sb["tmp"] / "logs"
    assert (logs / "first.status").read_text().strip() == "0"
    assert "mlflow run . -e main" in (logs / "first.log").read_text()
    assert not (logs / "driver.lock").exists()


def test_driver_keeps_the_exit_status_and_refuses_bad_arguments(sandbox):
    sb = sandbox
    port = str(free_port())
    try:
        result = script(
            sb, "project_driver.bash", "--foreground", "--name", "failing", PORT=port, FAKE_RUN_EXIT="3"
        )
    finally:
        _stop_fake_server(sb)
    assert result.returncode == 3
    assert (sb["tmp"] / "logs" / "failing.status").read_text().strip() == "3"
    one_error_line(script(sb, "project_driver.bash", "--bogus"), "unknown argument '--bogus'")
    one_error_line(script(sb, "project_driver.bash", "--name", "a b"), "may only hold letters")


def test_over_ssh_it_detaches_into_tmux_and_a_second_run_is_refused(sandbox):
    require_tool("tmux")
    sb = sandbox
    port = str(free_port())
    env = {"PORT": port, "SSH_CONNECTION": "10.0.0.1 5555 10.0.0.2 22", "FAKE_RUN_SECONDS": "6"}
    try:
        t0 = time.monotonic()
        started = script(sb, "project_driver.bash", "--name", "remote", "-P", "epochs=2", **env)
        assert started.returncode == 0, started.stderr
        assert time.monotonic() - t0 < 10, "it must return at once, leaving the run in tmux"
        assert "tmux attach -t" in started.stdout and "tail -f" in started.stdout
        status = sb["tmp"] / "logs" / "remote.status"
        deadline = time.monotonic() + 30
        while not (sb["tmp"] / "logs" / "driver.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        second = script(sb, "project_driver.bash", "--name", "again", "--foreground", **env)
        one_error_line(second, "a run is already in progress", "remote", "tmux attach")
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert status.read_text().strip() == "0"
        runs = [json.loads(x) for x in (sb["state"] / "mlflow-run.json").read_text().splitlines()]
        assert len(runs) == 1 and "epochs=2" in runs[0]["args"]
    finally:
        subprocess.run(
            ["tmux", "kill-session", "-t", sb["env"]["KF_TMUX_SESSION"]],
            capture_output=True,
            env={**os.environ, "TMUX_TMPDIR": sb["env"]["TMUX_TMPDIR"]},
        )
        _stop_fake_server(sb)


# --- MLproject docker_env ---------------------------------------------------------------------------


def test_mlproject_docker_env_mounts_the_checkout_and_sets_the_environment(tmp_path):
    from mlflow.projects._project_spec import load_project
    from mlflow.projects.backend.local import _get_docker_command

    project = load_project(str(ROOT))
    env = project.docker_env
    assert env["image"] == "kerasflow:latest"

    class Run:  # the parts of an ActiveRun that _get_docker_command reads
        class info:
            run_id, experiment_id, artifact_uri = "0" * 32, "1", "mlflow-artifacts:/1/x/artifacts"

    import mlflow

    mlflow.set_tracking_uri("http://127.0.0.1:5000")
    try:
        cmd = _get_docker_command(
            types.SimpleNamespace(tags=[env["image"]]),  # a docker-py Image: MLflow reads .tags
            Run,
            docker_args={"gpus": "all", "network": "host"},
            volumes=env["volumes"],
            user_env_vars=env["environment"],
        )
    finally:
        mlflow.set_tracking_uri(None)
    # MLflow runs the command with `bash -c` in the project folder (mlflow/projects/backend/local.py)
    expanded = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + " ".join(cmd)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert expanded[:3] == ["docker", "run", "--rm"]
    assert (
        expanded[expanded.index("--gpus") + 1] == "all"
        and expanded[expanded.index("--network") + 1] == "host"
    )
    volumes = [expanded[i + 1] for i, a in enumerate(expanded) if a == "-v"]
    assert f"{ROOT}:/workspace" in volumes
    envs = [expanded[i + 1] for i, a in enumerate(expanded) if a == "-e"]
    assert {
        "PYTHONHASHSEED=0",
        "TF_DETERMINISTIC_OPS=1",
        "KERAS_HOME=/opt/keras",
        "MLFLOW_TRACKING_URI=http://127.0.0.1:5000",
    } <= set(envs)


# --- Dockerfile and devcontainer ---------------------------------------------------------------------


def test_hadolint_is_clean_and_every_ignore_is_justified():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), "docker/Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout
    lines = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rule = line.split("=")[1].strip()
            assert any(rule in lines[j] and "ignore=" not in lines[j] for j in range(max(0, i - 4), i)), (
                f"{rule} is ignored without a comment saying why"
            )


def test_dockerignore_keeps_data_stores_venvs_and_outputs_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {"data", "store", "mlruns", "outputs", ".venv*", ".git", "logs", ".cache"} <= ignored


def test_devcontainer_json_validates_against_the_official_schema():
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--schemafile",
            str(ROOT / "tests" / "schemas" / "devContainer.base.schema.json"),
            "--force-filetype",
            "json5",
            ".devcontainer.json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_devcontainer_cli_reads_the_configuration():
    cli = require_tool("devcontainer")
    result = subprocess.run(
        [cli, "read-configuration", "--workspace-folder", str(ROOT), "--docker-path", "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)["configuration"]
    assert cfg["build"]["dockerfile"] == "docker/Dockerfile"
    assert cfg["hostRequirements"]["gpu"] == "optional"
    assert "--gpus" not in json.dumps(cfg.get("runArgs", []))
    assert cfg["remoteUser"] == "dev" and cfg["updateRemoteUserUID"] is True
    assert {8888, 5000} <= set(cfg["forwardPorts"])
    assert {"ms-python.python", "ms-toolsai.jupyter"} <= set(cfg["customizations"]["vscode"]["extensions"])
    assert "start-jupyter.bash" in cfg["postStartCommand"]


def test_post_start_command_serves_jupyterlab_on_localhost_with_a_random_token(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    shutil.copy2(ROOT / "docker" / "start-jupyter.bash", repo / "docker")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "JUPYTER_PORT": str(port),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("JUPYTER_TOKEN", None)
    out = subprocess.run(
        ["bash", str(repo / "docker" / "start-jupyter.bash")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "logs/jupyter.url" in out.stdout
    url_file = repo / "logs" / "jupyter.url"
    assert url_file.stat().st_mode & 0o077 == 0, "the URL holds the token: only its owner may read it"
    match = re.fullmatch(rf"http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+)\n", url_file.read_text())
    assert match, url_file.read_text()
    token = match.group(1)
    assert len(token) == 48
    log = repo / "logs" / "jupyter.log"
    try:
        deadline = time.monotonic() + 90
        while "is running at" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert token not in log.read_text()  # never printed in the shared log
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sessions", timeout=10)
        assert denied.value.code == 403
        ok = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sessions?token={token}", timeout=10)
        assert ok.status == 200
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        if listening:  # bound to loopback only
            assert all("127.0.0.1:" in line for line in listening.splitlines()), listening
        assert (
            "already runs"
            in subprocess.run(
                ["bash", str(repo / "docker" / "start-jupyter.bash")],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
        # the next start (a new container) gets another token: random, never a fixed one
        subprocess.run(["pkill", "-f", "--", f"--port {port}"], capture_output=True)
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and subprocess.run(["pgrep", "-f", "--", f"--port {port}"]).returncode == 0
        ):
            time.sleep(0.3)
        restarted = subprocess.run(
            ["bash", str(repo / "docker" / "start-jupyter.bash")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert restarted.returncode == 0, restarted.stderr
        second = re.search(r"token=([0-9a-f]+)", url_file.read_text()).group(1)
        assert len(second) == 48 and second != token
    finally:
        subprocess.run(["pkill", "-f", "--", f"--port {port}"], capture_output=True)


# --- the image really builds --------------------------------------------------------------------------


def _pip_mounts() -> tuple[list[str], list[str]]:
    """Build args and volumes that give the build's pip what this machine's pip uses (mirror, CA)."""
    cfg = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    values = dict(re.findall(r"^[^.]+\.([a-z-]+)='(.*)'$", cfg, flags=re.M))
    args, volumes = [], ["/etc/ssl/certs:/etc/ssl/certs:ro"]
    for key, arg in (
        ("cert", "PIP_CERT"),
        ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
        ("find-links", "PIP_FIND_LINKS"),
        ("index-url", "PIP_INDEX_URL"),
    ):
        value = os.environ.get(arg) or values.get(key)
        if not value:
            continue
        args += ["--build-arg", f"{arg}={value}"]
        for part in value.split():
            path = part[len("file://") :] if part.startswith("file://") else part
            path = str(Path(path).parent) if part.startswith("file://") else path  # <root>/simple: <root>
            if path.startswith("/") and Path(path).exists() and not path.startswith("/etc/ssl/certs"):
                volumes.append(f"{path}:{path}:ro")
    return args, sorted(set(volumes))


@pytest.fixture(scope="module")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> dict:
    buildah = require_tool("buildah")
    require_tool("mmdebstrap")
    if os.geteuid() != 0:
        require_tool("buildah as root", available=False)
    tmp = tmp_path_factory.mktemp("image")
    base = "localhost/py311-base:bookworm"
    subprocess.run(["bash", str(ROOT / "docker" / "bootstrap-base.bash"), base], check=True, timeout=900)
    # a VGG16 notop weights file in Keras' own (legacy h5) format, served over HTTP like the real one
    weights = tmp / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import h5py, keras
        from keras.src.legacy.saving import legacy_h5_format
        model = keras.applications.VGG16(include_top=False, weights=None)
        with h5py.File({str(weights)!r}, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        """),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    md5 = hashlib.md5(weights.read_bytes()).hexdigest()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tag = f"localhost/kerasflow:test-{os.getpid()}"
    pip_args, volumes = _pip_mounts()
    cmd = [
        buildah,
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",  # the OCI format drops SHELL (and with it pipefail)
        "--layers",
        "-f",
        "docker/Dockerfile",
        "-t",
        tag,
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        "TF_VARIANT=cpu",
        "--build-arg",
        "USER_UID=4321",
        "--build-arg",
        "USER_GID=100",
        "--build-arg",
        f"VGG16_WEIGHTS_URL=http://127.0.0.1:{port}/{weights.name}",
        "--build-arg",
        f"VGG16_WEIGHTS_MD5={md5}",
        *pip_args,
    ]
    for volume in volumes:
        cmd += ["--volume", volume]
    try:
        t0 = time.monotonic()
        result = subprocess.run([*cmd, "."], cwd=ROOT, capture_output=True, text=True, timeout=2400)
        seconds = time.monotonic() - t0
    finally:
        server.terminate()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(f"image built in {seconds:.0f} s")
    container = subprocess.run(
        [buildah, "from", tag], capture_output=True, text=True, check=True
    ).stdout.strip()
    yield {"buildah": buildah, "tag": tag, "container": container, "md5": md5, "seconds": seconds}
    subprocess.run([buildah, "rm", container], capture_output=True)
    subprocess.run([buildah, "rmi", tag], capture_output=True)


def in_image(img: dict, command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [img["buildah"], "run", "--isolation", "chroot", img["container"], "--", "bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@pytest.mark.slow
def test_image_user_weights_and_layout(built_image):
    info = json.loads(
        subprocess.run(
            [built_image["buildah"], "inspect", "--type", "image", built_image["tag"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    config = info["OCIv1"]["config"]
    assert config["User"] == "dev" and config["WorkingDir"] == "/workspace"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["KERAS_HOME"] == "/opt/keras" and int(env["CUDA_CACHE_MAXSIZE"]) >= 2**31
    assert "/cache/nv" in config.get("Volumes", {})
    out = in_image(
        built_image,
        "id -u; id -g; md5sum /opt/keras/models/*.h5; stat -c %a /opt/keras; "
        "touch /opt/keras/keras.json && echo keras-home-writable; "
        "test -f /etc/ld.so.conf.d/nvidia-pip.conf && echo ldconfig; "
        "python --version; ls /opt/kerasflow/train.py; "
        "jupyter lab --version; python -c 'import ipykernel, psutil, pynvml'",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert lines[:2] == ["4321", "100"]
    assert built_image["md5"] in out.stdout and "1777" in out.stdout
    assert "keras-home-writable" in out.stdout and "ldconfig" in out.stdout and "Python 3.11" in out.stdout


@pytest.mark.slow
def test_the_image_trains_as_its_user_with_the_baked_weights(built_image):
    weights = "/opt/keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    out = in_image(
        built_image,
        "cd /opt/kerasflow && python train.py --set data_source=synthetic "
        "--set model=vgg16 --set image_size=32 --set synthetic_examples=64 --set epochs=1 "
        f"--set weights={weights} --set output_dir=/tmp/out --set run_name=img "
        "--set cache_dir=/tmp/cache && ls /tmp/out/img && python -c "
        "'import tensorflow as tf; print(\"tf\", tf.__version__)'",
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "model.keras" in out.stdout and "tf 2.21.0" in out.stdout


def test_the_pinned_cuda_wheels_are_exactly_what_tensorflow_and_cuda_needs(tmp_path):
    """The GPU variant is not built here (its wheels are ~2.7 GB); pip proves its pins resolve with TF's
    own `and-cuda` extra and the project lock, and that no NVIDIA wheel is missing or extra."""
    pins = dict(
        line.split("==")
        for line in (ROOT / "docker" / "requirements-cuda.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    report = tmp_path / "report.json"
    tf_pin = next(
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("tensorflow==")
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            tf_pin.replace("tensorflow", "tensorflow[and-cuda]"),
            "-c",
            str(ROOT / "requirements.txt"),
            "-c",
            str(ROOT / "docker" / "requirements-cuda.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0 and re.search(
        r"connection|Could not fetch|Temporary failure", result.stderr, re.I
    ):
        require_tool("the package index (network)", available=False)
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    nvidia = {k: v for k, v in resolved.items() if k.startswith("nvidia-")}
    assert nvidia == {k.lower(): v for k, v in pins.items()}
