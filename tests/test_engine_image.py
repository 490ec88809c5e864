"""The image on a real Docker engine (tests/engine.bash starts one where none runs): built once for a
non-root user with the baked weights, rebuilt for another UID from cache; run_script.bash trains in it and
every file it writes is the user's; GPU=auto/on and --gpus device lists; /data read-only; ports bound to
127.0.0.1; the GPU variant's CUDA libraries (`make test-gpu-image`). Fixtures: tests/helpers/engine.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time

import pytest
from helpers import TINY, assert_user_error
from helpers.engine import (
    docker,
    docker_build,
    foreign_files,
)

from kerasflow.errors import UserError
from kerasflow.launch import image as images

pytestmark = [pytest.mark.slow, pytest.mark.engine]


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
        uid = docker("run", "--rm", "--network", "none", "kerasflow-test:uid4321", "id", "-u", "dev").stdout
        assert uid.strip() == "4321", uid  # the new UID was really built, not the cache's old one
        print(f"rebuild for another UID: {seconds:.0f} s, {shared} of {len(ours)} layers shared")
    finally:
        docker("rmi", "kerasflow-test:uid4321")


# --- run_script.bash ---------------------------------------------------------------------------------


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
    assert "training on CPU" in result.stderr  # GPU=auto says that it falls back
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
        value = images.gpus_value(gpus, 2)
        direct = created(f"docker create --gpus {shlex.quote(value)} {image['tag']} true")  # run_script
        mlflow.set_tracking_uri("http://127.0.0.1:5000")
        try:  # make run (kerasflow/launch/run.py) passes -A "gpus='VALUE'"
            cmd = _get_docker_command(types.SimpleNamespace(tags=[image["tag"]]), Run,
                                      docker_args={"gpus": f"'{value}'", "network": "host"})
        finally:
            mlflow.set_tracking_uri(None)
        joined = " ".join(cmd).replace("docker run --rm", "docker create", 1) + " true"
        for requests in (direct, created(joined)):
            assert [(r["DeviceIDs"], r["Count"]) for r in requests] == [(ids, count)], (gpus, requests)
    with pytest.raises(UserError, match="GPUS=0,2 names GPU 2, but `nvidia-smi` lists 2"):
        images.gpus_value("0,2", 2)


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


# --- the GPU variant (built, and checked as far as a machine without a GPU can) ----------------------

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


def test_a_live_run_in_a_container_is_left_alone_and_a_killed_one_closed(image, user, checkout):
    """Before: a run training in a container with --network host (this host's name, a mount namespace
    of its own: how `mlflow run` starts make run's container) was marked FAILED by the host's next
    `kerasflow runs`: the run folder it tagged, /workspace/outputs/NAME, does not exist on the host,
    which was taken for a dead process. Now its heartbeat keeps it alive there; once the container is
    killed and the heartbeat is older than the grace, the host closes it."""
    import socket

    import mlflow

    name = "in-a-container"
    # as `mlflow run` starts make run's container: the host network, so the host's name
    label = f"kerasflow.test={name}"
    trainer = user.popen(["docker", "run", "--rm", "--init", "--network", "host", "--label", label,
                          "--user", f"{user.uid}:{user.gid}", "--volume", f"{checkout}:/workspace",
                          "--workdir", "/workspace", image["tag"], "python", "train_mlflow.py",
                          *[x for t in [*TINY, "epochs=500", f"run_name={name}"] for x in ("--set", t)]],
                         cwd=checkout, new_session=True)
    history = checkout / "outputs" / name / "history.jsonl"
    try:
        deadline = time.monotonic() + 600
        while not (history.is_file() and len(history.read_text().splitlines()) >= 2):
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.stderr.read()[-3000:]
            time.sleep(0.5)
        listed = user.run(["python", "-m", "kerasflow", "runs", "--store", "store"], cwd=checkout)
        assert listed.returncode == 0, listed.stderr[-2000:]
        # opened only now, as the user made it (a client made first would create the database as root)
        store = mlflow.MlflowClient(f"sqlite:///{checkout / 'store' / 'mlflow.db'}")
        [run] = store.search_runs([store.get_experiment_by_name("kerasflow").experiment_id])
        assert run.data.tags["kerasflow.run_dir"] == f"/workspace/outputs/{name}"  # unseen by the host
        assert run.info.status == "RUNNING" and "kerasflow.closed_as_orphan" not in run.data.tags
        assert run.data.tags["kerasflow.host"] == socket.gethostname()  # what made it look like ours
        containers = docker("ps", "-q", "--filter", f"label={label}").stdout.split()
        assert len(containers) == 1, containers
        docker("kill", containers[0], check=True)
        trainer.wait(timeout=120)
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, 9)
            trainer.wait()
    closed = user.run(["python", "-m", "kerasflow", "runs", "--store", "store"], cwd=checkout,
                      env={"KERASFLOW_HEARTBEAT_GRACE": "0"})
    assert closed.returncode == 0, closed.stderr[-2000:]
    run = store.get_run(run.info.run_id)
    assert run.info.status == "FAILED", closed.stderr[-2000:]
    assert "heartbeat stopped" in run.data.tags["kerasflow.closed_as_orphan"]
