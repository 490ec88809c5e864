"""The container layer where no engine is needed, and the one thing the engine here cannot do: a GPU.

The flows themselves (image build, run_script.bash, `make run`, the devcontainer, the notebook) run on a
real Docker engine in tests/test_engine_*.py. Here:
- GPU detection of run_script.bash against a stand-in `docker`/`nvidia-smi` that report an NVIDIA runtime
  and GPUs (no GPU exists on these machines): the stand-in is kept for exactly that;
- the driver's argument errors, MLproject's docker command, hadolint, .dockerignore, the devcontainer
  schema and CLI parse, JupyterLab's start script on the host, and the pinned CUDA wheels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT, assert_user_error, free_port, require_tool, wait_http
from helpers.stand_ins import calls, script

# --- run_script.bash ----------------------------------------------------------------------------------


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


def test_gpu_on_with_the_runtime_but_no_gpu_listed_fails_in_one_line(sandbox):
    assert_user_error(
        script(
            sandbox, "run_script.bash", "true", GPU="on", FAKE_DOCKER_RUNTIMES='{"nvidia":{}}', FAKE_GPUS="0"
        ),
        "GPU=on but nvidia-smi lists no GPU", "GPU=off",
    )
    assert not calls(sandbox, "run")


# --- project_driver.bash ------------------------------------------------------------------------------


def test_driver_refuses_bad_arguments_before_touching_docker():
    bogus = subprocess.run([str(ROOT / "project_driver.bash"), "--bogus"], capture_output=True, text=True,
                           timeout=60)
    assert bogus.returncode == 2 and "unrecognized arguments: --bogus" in bogus.stderr  # argparse's line
    assert "Traceback" not in bogus.stderr
    result = subprocess.run([str(ROOT / "project_driver.bash"), "--name", "a b"], capture_output=True,
                            text=True, timeout=60)
    assert_user_error(result, "may only hold")


@pytest.mark.slow
def test_driver_never_logs_into_another_stores_server_on_its_port(sandbox, tmp_path):
    """Another user's `make ui` on port 5000 answers /health just like our server; it is not ours."""
    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "kerasflow", "server", str(tmp_path / "theirs"),
                              "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=other)
        venv_bin = Path(sys.executable).parent
        result = script(sandbox, "project_driver.bash", "--foreground", "--name", "mine", "-P",
                        "data_source=synthetic", PORT=str(port),
                        GPU="off", KERASFLOW_PYTHON=str(venv_bin / "python"), STORE=str(tmp_path / "mine"))
        assert_user_error(result, f"port {port} answers as an MLflow server that is not this store's own",
                          "PORT=")
        assert not calls(sandbox, "run")
    finally:
        other.terminate()
        other.wait(timeout=30)


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


def test_make_image_and_the_devcontainer_pass_the_same_build_args_the_same_way():
    """The classic builder's cache key holds each build arg's value, and an empty one differs from an unset
    one: VS Code passes every `${localEnv:X}` arg, empty when unset; so `make image` passes the same list
    the same way, or "Reopen in Container" installs TensorFlow again beside `make run`'s image."""
    import json5

    wanted = json5.loads((ROOT / ".devcontainer.json").read_text())["build"]["args"]
    assert wanted == {name: f"${{localEnv:{name}}}" for name in wanted}
    env = {k: v for k, v in os.environ.items() if k not in wanted} | {"TF_VARIANT": "cpu"}
    from kerasflow.launch import image

    printed = image.build_args(env)
    passed = [printed[i + 1] for i, word in enumerate(printed) if word == "--build-arg"]
    assert [a for a in passed if not a.startswith("USER_")] == [
        f"{name}={'cpu' if name == 'TF_VARIANT' else ''}" for name in wanted
    ]


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


def test_jupyter_never_moves_to_another_port(tmp_path):
    """On a busy port Jupyter used to pick the next one, so logs/jupyter.url named the wrong server."""
    import socket

    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    shutil.copy2(ROOT / "docker" / "start-jupyter.bash", repo / "docker")
    assert "--ServerApp.port_retries=0" in (repo / "docker" / "start-jupyter.bash").read_text()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "JUPYTER_PORT": str(port), "HOME": str(tmp_path)}
        out = subprocess.run(["bash", str(repo / "docker" / "start-jupyter.bash")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert_user_error(out, f"port {port} on 127.0.0.1 is busy", "JUPYTER_PORT")
    assert not (repo / "logs" / "jupyter.url").exists()


# --- the image really builds --------------------------------------------------------------------------


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


# --- what a tracking server puts into mlflow run's shell line ------------------------------------------


def test_an_experiment_whose_location_would_run_in_mlflow_runs_shell_line_is_refused(tmp_path):
    """MLflow mounts a local artifact location unquoted in its `bash -c` docker line: `$(...)`, backticks
    and %-escaped ones are refused in one line (exit 2) before anything runs; safe, remote and proxied
    locations pass; a missing experiment is created as `mlflow run` would."""
    from urllib.parse import quote

    import mlflow

    from kerasflow.errors import UserError
    from kerasflow.track import shell_line, store

    uri = store.sqlite_uri(tmp_path / "mlflow.db")
    store.init_sqlite(uri)
    client = mlflow.MlflowClient(uri)
    marker = tmp_path / "executed"
    client.create_experiment("subshell", artifact_location=f"{tmp_path}/a$(touch {marker})")
    client.create_experiment("backticks", artifact_location=f"file://{tmp_path}/b`touch {marker}`")
    client.create_experiment("escaped", artifact_location="file://" + quote(f"{tmp_path}/c$(touch {marker})"))
    safe = client.create_experiment("safe", artifact_location=f"file://{tmp_path}/plain-path_1.0")
    proxied = client.create_experiment("proxied", artifact_location="mlflow-artifacts:/not mounted")
    for name in ("subshell", "backticks", "escaped"):
        with pytest.raises(UserError, match="would put unquoted in its shell line"):
            shell_line.experiment_for_docker(client, name)
    assert shell_line.experiment_for_docker(client, "safe") == safe
    assert shell_line.experiment_for_docker(client, "proxied") == proxied
    made = shell_line.experiment_for_docker(client, "new")
    assert client.get_experiment(made).name == "new"
    client.delete_experiment(safe)
    with pytest.raises(UserError, match="is deleted"):
        shell_line.experiment_for_docker(client, "safe")
    # make run creates its MLflow run through the same check, before anything waits or runs
    from kerasflow.launch import run

    request = run.Request(root=ROOT, store=tmp_path / "store", logs=tmp_path / "logs", name="x",
                          experiment="subshell")
    with pytest.raises(UserError, match="experiment 'subshell' stores artifacts at"):
        run.create_run(request, uri, tmp_path / "lock")
    assert not marker.exists()
