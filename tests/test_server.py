"""A store's MLflow server on a box shared by several users (kerasflow/storeops/server.py): each store's
server gets a port of its own without anyone choosing one, keeps it, and is stopped by its owner with
`kerasflow server-stop`; doctor lists the user's own servers. Two real UIDs, real servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT, let_other_uids_run_the_venv, wait_http

from kerasflow import ports

pytestmark = pytest.mark.slow  # other UIDs must reach this checkout: `make test`'s, not a private clone

OTHER = 4244  # a second user of the box, with no passwd entry (as in a container)


def _as(uid: int | None, *cmd: str) -> list[str]:
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    return [*as_uid, *cmd]


def _kerasflow(uid: int | None, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as(uid, sys.executable, "-m", "kerasflow", *args), cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PORT": ""})


def _port_of(store: Path) -> int:
    deadline = time.monotonic() + 60
    while not (store / "server-port").is_file():
        assert time.monotonic() < deadline, f"{store} kept no port"
        time.sleep(0.1)
    return int((store / "server-port").read_text())


@pytest.fixture
def shared():
    if os.geteuid() != 0:
        pytest.skip("a second UID needs root to start (CI runs as root)")
    let_other_uids_run_the_venv()
    top = Path(tempfile.mkdtemp(prefix="kf-ports-", dir="/tmp"))
    top.chmod(0o1777)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_two_users_servers_get_ports_of_their_own_keep_them_and_only_the_owner_stops_one(shared):
    """Before, every store's server took 127.0.0.1:5000: the second user's `make run`, `make server` and
    `make doctor` failed with "port 5000 answers as an MLflow server that is not this store's own"."""
    ours, theirs = shared / "ours", shared / "theirs"
    servers = []
    try:
        for uid, store in ((None, ours), (OTHER, theirs)):
            servers.append(subprocess.Popen(_as(uid, sys.executable, "-m", "kerasflow", "server", str(store)),
                                             cwd=ROOT, env={**os.environ, "PORT": ""},
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                             start_new_session=True))
            port = _port_of(store)
            wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=servers[-1])
        ours_port, theirs_port = _port_of(ours), _port_of(theirs)
        assert ours_port != theirs_port and 5000 <= min(ours_port, theirs_port) < 5100

        # each user's doctor row lists their own server only, and finds this store's own on its port
        doctor = _kerasflow(OTHER, "doctor", "--image", "kerasflow:none", "--store", str(theirs), "--logs",
                            str(shared / "logs"))
        rows = dict(line.split(None, 1) for line in doctor.stdout.splitlines())
        assert rows["servers"].startswith("PASS") and f"127.0.0.1:{theirs_port} {theirs}" in rows["servers"]
        assert str(ours) not in rows["servers"] and "Traceback" not in doctor.stderr
        assert rows["tracking"].startswith("PASS  this store's MLflow server answers"), rows["tracking"]

        # another user's server-stop of our store stops nothing of ours
        foreign = _kerasflow(OTHER, "server-stop", str(ours))
        assert foreign.returncode == 0 and "no server of yours serves" in foreign.stdout
        assert servers[0].poll() is None
        stopped = _kerasflow(None, "server-stop", str(ours))
        assert stopped.returncode == 0 and f"on 127.0.0.1:{ours_port}" in stopped.stdout, stopped.stderr
        assert servers[0].wait(timeout=30) is not None and servers[1].poll() is None
        assert ports.port_free(ours_port), "its uvicorn workers still serve the port"

        # started again, our store's server takes its kept port
        again = subprocess.Popen([sys.executable, "-m", "kerasflow", "server", str(ours)], cwd=ROOT,
                                 env={**os.environ, "PORT": ""}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        servers.append(again)
        wait_http(f"http://127.0.0.1:{ours_port}/health", timeout=120, proc=again)
        assert _kerasflow(None, "server-stop", str(ours)).returncode == 0
        assert _kerasflow(OTHER, "server-stop", str(theirs)).returncode == 0
        assert ports.port_free(ours_port) and ports.port_free(theirs_port)
    finally:
        for uid, store in ((None, ours), (OTHER, theirs)):
            _kerasflow(uid, "server-stop", str(store))
        for proc in servers:
            proc.kill()
            proc.wait(timeout=30)
