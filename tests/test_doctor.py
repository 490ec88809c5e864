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

from kerasflow import doctor as box_doctor
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
    check = box_doctor.driver()
    assert check.status == preflight.FAIL and "older than 555.42.06 (CUDA 12.5.1" in check.line
    assert "0: NVIDIA H200 (cc 9.0)" in check.line and "upgrade the NVIDIA driver" in check.line
    gpus("550.54.15", "8.6")  # an Ampere GPU runs TF's compiled kernels: CUDA 12's minimum is enough
    assert box_doctor.driver().status == preflight.PASS
    gpus("470.82.01", "8.6")
    assert "older than 525.60.13" in box_doctor.driver().line
    gpus("570.86.10", "9.0", apps=f"GPU-aaaa, {os.getpid()}, 29000\\n")
    assert box_doctor.driver() == preflight.Check("driver", preflight.PASS,
                                                 "driver 570.86.10 >= 555.42.06 (0: NVIDIA H200 (cc 9.0))")
    memory = box_doctor.gpu_memory()
    me = pwd.getpwuid(os.getuid()).pw_name
    assert memory.status == box_doctor.WARN
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


def _stand_in(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n{body}\n")
    (folder / name).chmod(0o755)


def test_a_hostile_box_is_rows_never_a_traceback(synthetic_root, tmp_path):
    """Before, each a traceback instead of the table: no docker binary on PATH (disk() asked docker after
    the engine row failed); a DOCKER_HOST socket that accepts and never answers (60 s, then
    TimeoutExpired); an nvidia-smi that prints garbage or hangs; PORT=70000 (OverflowError). Now each is
    one row with its fix, and the table comes within the rows' time bounds."""
    import socket
    import time

    bin_dir = tmp_path / "bin"
    _stand_in(bin_dir, "nvidia-smi", 'echo "garbage, %s" "$@"; echo ",,,"')
    path = f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"
    no_docker = tmp_path / "no-docker"
    no_docker.mkdir()
    for tool in ("tmux", "flock", "python3", "sh", "sleep", "git"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout
        if found.strip():
            (no_docker / tool).symlink_to(found.strip())
    code, rows = doctor(synthetic_root, tmp_path, env={"PATH": f"{bin_dir}:{no_docker}"})
    assert code == 2 and rows["engine"][0] == "FAIL" and "docker is not installed" in rows["engine"][1]
    assert rows["driver"][0] in ("FAIL", "WARN") and rows["disk"][0] == "PASS", rows

    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(8)  # accepts (the kernel queues the connection), never answers
    _stand_in(bin_dir, "nvidia-smi", "sleep 600")
    try:
        t0 = time.monotonic()
        code, rows = doctor(synthetic_root, tmp_path, "--port", "70000",
                            env={"PATH": path, "DOCKER_HOST": f"unix://{tmp_path}/silent.sock"})
        seconds = time.monotonic() - t0
    finally:
        silent.close()
    assert code == 2 and rows["engine"][0] == "FAIL" and "no answer within" in rows["engine"][1], rows
    assert rows["tracking"] == ("FAIL", "PORT=70000 is not a port: give one from 1024 to 65535, or unset "
                                        "PORT (the store's server then takes a free one)"), rows["tracking"]
    assert "driver" in rows and "gpu-memory" in rows
    assert seconds < 90, seconds


def test_a_port_bound_but_not_listening_is_busy_and_the_data_row_checks_what_training_reads(tmp_path):
    """Before, false PASS: a port held by a socket that is bound but not listening (or a wedged server)
    was "free" (connect was refused); an empty image_dir, or a TFDS folder with only dataset_info.json,
    passed the data row and training failed later in the container."""
    import socket

    root = tmp_path / "checkout"
    root.mkdir()
    (root / "data" / "cells").mkdir(parents=True)
    text = (ROOT / "config.yaml").read_text()
    (root / "config.yaml").write_text(text.replace("data_source: tfds", "data_source: image_dir", 1)
                                      .replace("image_dir: data/cell_images", "image_dir: data/cells", 1))
    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # bound, never listening
    port = held.getsockname()[1]
    try:
        _, rows = doctor(root, tmp_path, "--port", str(port))
    finally:
        held.close()
    assert rows["tracking"][0] == "FAIL" and f"port {port}" in rows["tracking"][1], rows["tracking"]
    assert rows["data"][0] == "FAIL" and "has no class folders" in rows["data"][1], rows["data"]
    for name in ("parasitized", "uninfected"):
        (root / "data" / "cells" / name).mkdir()
        (root / "data" / "cells" / name / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    _, rows = doctor(root, tmp_path, "--port", str(free_port()))
    assert rows["data"][0] == "PASS", rows["data"]

    tfds_root = tmp_path / "tfds-checkout"
    tfds_root.mkdir()
    (tfds_root / "config.yaml").write_text(text)
    cfg_dir = preflight.run_config(tfds_root / "config.yaml", []).tfds_data_dir
    version = tfds_root / cfg_dir / "malaria" / "1.0.0"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    _, rows = doctor(tfds_root, tmp_path, "--port", str(free_port()))
    assert rows["data"][0] == "FAIL" and "make data" in rows["data"][1], rows["data"]
    (version / "malaria-train.tfrecord-00000-of-00001").write_bytes(b"x")
    _, rows = doctor(tfds_root, tmp_path, "--port", str(free_port()))
    assert rows["data"][0] == "PASS", rows["data"]


def test_the_store_row_writes_through_mlflow_as_the_user(tmp_path):
    """Before: a writable store folder whose mlflow.db belongs to another user (0644) was PASS, while
    every write of a run failed. Now the row writes (and removes) a value through MLflow, as the user."""
    import shutil
    import tempfile
    import uuid

    from kerasflow.track import store

    if os.geteuid() != 0:
        pytest.skip("a second user needs root (CI runs as root)")
    require_tool("runuser")
    name = f"kfdoc{uuid.uuid4().hex[:4]}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", name], check=True)
    shared = Path(tempfile.mkdtemp(prefix="kf-doctor-"))
    try:
        shared.chmod(0o755)
        root = shared / "checkout"
        root.mkdir()
        (root / "config.yaml").write_text((ROOT / "config.yaml").read_text().replace(
            "data_source: tfds", "data_source: synthetic", 1))
        folder = shared / "store"
        store.init_sqlite(store.sqlite_uri(folder / store.DB_FILE))  # root's database, 0644
        folder.chmod(0o777)  # a folder anyone may write to: files go in, the database refuses
        (shared / "logs").mkdir(mode=0o777)
        entry = pwd.getpwnam(name)
        reach = subprocess.run(["runuser", "-u", name, "--", sys.executable, "-c", "import kerasflow"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
        if reach.returncode != 0:  # a private clone (mktemp -d is 0700): CI's other-Python steps
            pytest.skip(f"the checkout is not reachable by a second user ({reach.stderr.strip()[-200:]})")
        cmd = ["runuser", "-u", name, "--", "env", "-i", f"HOME={shared}", "PATH=/usr/bin:/bin",
               sys.executable, "-m", "kerasflow", "doctor", "--root", str(root), "--image", IMAGE, "--store",
               str(folder), "--logs", str(shared / "logs"), "--port", str(free_port())]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        rows = {line.split(None, 2)[0]: line.split(None, 2)[1:] for line in done.stdout.splitlines()}
        assert rows["store"][0] == "FAIL", (rows, done.stderr[-2000:])
        assert f"MLflow store {folder / store.DB_FILE} is read-only" in rows["store"][1]
        assert "STORE=another folder" in rows["store"][1]
        os.chown(folder / store.DB_FILE, entry.pw_uid, entry.pw_gid)  # now it is theirs
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        rows = {line.split(None, 2)[0]: line.split(None, 2)[1:] for line in done.stdout.splitlines()}
        assert rows["store"] == ["PASS", f"{folder} takes a write through MLflow"], done.stderr[-2000:]
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        subprocess.run(["userdel", name], check=False)
