"""`make doctor`: the box checked in one table, on this machine as it is (a real engine, no GPU), with the
engine stopped, a full disk under the store, a foreign server on the port, and a stand-in `nvidia-smi`
for the GPU rows (this machine has no GPU)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, free_port, require_tool, wait_http

from kerasflow import preflight

IMAGE = "kerasflow:doctor-test-never-built"


def doctor(root: Path, tmp: Path, *extra: str,
           env: dict[str, str] | None = None) -> tuple[int, dict[str, tuple]]:
    """`kerasflow doctor` as a user runs it: exit status and {row: (STATUS, text)}."""
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DATA")} | (env or {})
    done = subprocess.run([sys.executable, "-m", "kerasflow", "doctor", "--root", str(root), "--image", IMAGE,
                           "--store", str(tmp / "store"), "--logs", str(tmp / "logs"), *extra], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        name, status, text = line.split(None, 2)
        assert status in ("PASS", "WARN", "FAIL"), line
        rows[name] = (status, text)
    return done.returncode, rows


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    """A checkout whose config needs no download (the data row passes)."""
    root = tmp_path / "checkout"
    root.mkdir()
    text = (ROOT / "config.yaml").read_text().replace("data_source: tfds", "data_source: synthetic", 1)
    assert "data_source: synthetic" in text
    (root / "config.yaml").write_text(text)
    return root


def test_on_this_machine_the_rows_say_what_it_has_and_warnings_exit_1(synthetic_root, tmp_path):
    """A real engine, no GPU, no image: warnings only (exit 1); the default config without its dataset
    is a failure naming `make data` (exit 2)."""
    require_tool("docker")
    code, rows = doctor(synthetic_root, tmp_path, "--port", str(free_port()))
    assert rows["engine"][0] == "PASS" and rows["engine"][1].startswith("Docker engine ")
    assert rows["gpu"] == ("WARN", "no NVIDIA container runtime in `docker info`: training on CPU (GPU=on "
                                   "makes this an error)")
    assert rows["image"][0] == "WARN" and "is not built yet" in rows["image"][1]
    assert rows["driver"][0] == "WARN" and "no NVIDIA driver" in rows["driver"][1]
    for name in ("gpu-memory", "data", "disk", "store", "tracking", "tmux", "flock", "host-python", "notify"):
        assert rows[name][0] == "PASS", (name, rows[name])
    assert code == 1
    code, rows = doctor(ROOT, tmp_path, "--port", str(free_port()))
    assert code == 2 and rows["data"][0] == "FAIL" and "make data" in rows["data"][1]


def test_each_broken_part_fails_its_row_with_the_fix(synthetic_root, tmp_path):
    """The engine stopped (an unreachable DOCKER_HOST), a foreign server on the port, a full disk under
    the store: each its own FAIL row with the fix, exit 2, the other rows still shown."""
    code, rows = doctor(synthetic_root, tmp_path, env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert code == 2 and rows["engine"][0] == "FAIL"
    assert "the Docker daemon is not reachable" in rows["engine"][1]
    assert "systemctl start docker" in rows["engine"][1]
    assert "gpu" not in rows and rows["store"][0] == "PASS"  # rows that ask the engine wait for it

    port = free_port()
    foreign = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc=foreign)
        code, rows = doctor(synthetic_root, tmp_path, "--port", str(port))
    finally:
        foreign.kill()
        foreign.wait()
    assert code == 2 and rows["tracking"] == (
        "FAIL", f"port {port} on 127.0.0.1 is busy with something that is not an MLflow server: "
                "unset PORT (each store then gets a port of its own), or set PORT=another port")

    if os.geteuid() != 0:
        pytest.skip("a private tmpfs needs root (CI runs as root)")
    require_tool("unshare")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size=1m tmpfs "{disk}" && mkdir "{disk}/store" && '
              f'(head -c 2000000 /dev/zero > "{disk}/filler" || true) && '
              f'"{sys.executable}" -m kerasflow doctor --root "{synthetic_root}" --image {IMAGE} '
              f'--store "{disk}/store" --logs "{tmp_path}/logs" --port {free_port()} > "{tmp_path}/out"; '
              f'echo $? > "{tmp_path}/code"')
    subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script], cwd=ROOT,
                   check=True, timeout=300)
    rows = dict(line.split(None, 1) for line in (tmp_path / "out").read_text().splitlines())
    assert (tmp_path / "code").read_text().strip() == "2"
    assert rows["store"].startswith(f"FAIL  {disk}/store does not take a file (No space left on device): "
                                    "free space there")


def test_gpu_rows_read_nvidia_smi(tmp_path, monkeypatch):
    """A stand-in nvidia-smi: the driver against the minimum for the GPUs' architecture (with its source),
    free memory per GPU and whose process holds it."""
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")

    def gpus(driver: str, cap: str, apps: str = "") -> None:
        smi.write_text(f"""#!/bin/sh
case "$1" in
  --query-gpu=index,name,driver_version,compute_cap) echo "0, NVIDIA H200, {driver}, {cap}" ;;
  --query-gpu=index,uuid,memory.used,memory.total) echo "0, GPU-aaaa, 30000, 143771" ;;
  --query-compute-apps=gpu_uuid,pid,used_memory) printf '{apps}' ;;
esac
""")
        smi.chmod(0o755)

    gpus("550.54.15", "9.0")
    check = preflight.driver()
    assert check.status == preflight.FAIL and "older than 555.42.06 (CUDA 12.5.1" in check.line
    assert "0: NVIDIA H200 (cc 9.0)" in check.line and "upgrade the NVIDIA driver" in check.line
    gpus("550.54.15", "8.6")  # an Ampere GPU runs TF's compiled kernels: CUDA 12's minimum is enough
    assert preflight.driver().status == preflight.PASS
    gpus("470.82.01", "8.6")
    assert "older than 525.60.13" in preflight.driver().line
    gpus("570.86.10", "9.0", apps=f"GPU-aaaa, {os.getpid()}, 29000\\n")
    assert preflight.driver() == preflight.Check("driver", preflight.PASS,
                                                 "driver 570.86.10 >= 555.42.06 (0: NVIDIA H200 (cc 9.0))")
    memory = preflight.gpu_memory()
    me = pwd.getpwuid(os.getuid()).pw_name
    assert memory.status == preflight.WARN
    assert memory.line.startswith(f"GPU 0: 113771 of 143771 MiB free (held by {me} pid {os.getpid()} "
                                  "29000 MiB)")


def test_the_notifier_row_sends_a_test_message_on_request(synthetic_root, tmp_path):
    from helpers.receiver import Receiver

    told = Receiver()
    try:
        code, rows = doctor(synthetic_root, tmp_path, "--notify-test", "--port", str(free_port()),
                            env={"KERASFLOW_NOTIFY": told.url})
        assert rows["notify"] == ("PASS", "a test message went to 1 notifier URL(s)")
        assert [m["title"] for m in told.messages] == ["kerasflow check doctor: TEST"]
        code, rows = doctor(synthetic_root, tmp_path, "--notify-test", env={"KERASFLOW_NOTIFY": "nope://x"})
        assert code == 2 and rows["notify"][0] == "FAIL" and "KERASFLOW_NOTIFY" in rows["notify"][1]
    finally:
        told.close()
