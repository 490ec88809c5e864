"""A team tracking server on PostgreSQL, for real: a throwaway cluster (Debian's postgresql-15, run as
the `postgres` user when the tests run as root) on 127.0.0.1, stopped by its pid."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, assert_user_error, free_port, require_tool, set_args, wait_http

pytestmark = pytest.mark.slow
PASSWORD = "pg-" + os.urandom(6).hex()


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    require_tool("initdb (postgresql)", bool(found))
    bindir = Path(found[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="kf-pg-"))
    data, pwfile = base / "data", base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    pwfile.chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    subprocess.run(as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "kf", f"--pwfile={pwfile}",
                                "--auth-host=scram-sha-256", "--auth-local=trust"]),
                   check=True, capture_output=True)
    subprocess.run(as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                                f"-c listen_addresses=127.0.0.1 -p {port} -k {base}", "start"]),
                   check=True, capture_output=True, timeout=60)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        subprocess.run(as_postgres([str(bindir / "createdb"), "-h", str(base), "-p", str(port), "-U", "kf",
                                    "mlflow"]), check=True, capture_output=True)
        yield {"url": f"postgresql://kf@127.0.0.1:{port}/mlflow", "port": port}
    finally:
        os.kill(pid, signal.SIGTERM)  # smart shutdown of the postmaster we started, by its pid
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)


def test_a_team_server_on_postgresql_with_servers_and_writers_started_at_once(postgres, tmp_path):
    import mlflow

    env = {**os.environ, "PGPASSWORD": PASSWORD}
    env.pop("MLFLOW_TRACKING_URI", None)
    ports = [free_port(), free_port()]
    servers = [subprocess.Popen([sys.executable, "-m", "kerasflow.storeops.server", str(tmp_path / "store"),
                                 "--db", postgres["url"], "--port", str(p)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url, server in zip(urls, servers, strict=True):  # two at once on an EMPTY database
            wait_http(f"{url}/health", proc=server)
        for server in servers:
            cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
            assert "--backend-store-uri" in cmdline and PASSWORD not in cmdline
        writers = []
        for i in range(4):  # four trainings at once, through both servers
            sets = [*TINY, "epochs=2", f"run_name=pg{i}", f"output_dir={tmp_path / 'out'}",
                    f"cache_dir={tmp_path / 'cache'}"]
            extra = ["--register", "pgdemo"] if i == 0 else []
            cmd = [sys.executable, "train_mlflow.py", *set_args(sets), *extra]
            writers.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, "MLFLOW_TRACKING_URI": urls[i % 2]},
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for w in writers:
            _, err = w.communicate(timeout=900)
            assert w.returncode == 0, err[-3000:]
        client = mlflow.MlflowClient(urls[0])
        runs = client.search_runs([client.get_experiment_by_name("kerasflow").experiment_id])
        assert sorted(r.info.run_name for r in runs) == ["pg0", "pg1", "pg2", "pg3"]
        for r in runs:
            assert r.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")] == [0, 1]
        mlflow.set_tracking_uri(urls[1])
        try:
            import numpy as np

            model = mlflow.keras.load_model("models:/pgdemo@candidate")
            assert model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape[0] == 2
        finally:
            mlflow.set_tracking_uri(None)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def test_a_wrong_password_or_url_is_one_line(postgres, tmp_path):
    env = {**os.environ, "PGPASSWORD": "wrong"}
    result = subprocess.run([sys.executable, "-m", "kerasflow.storeops.server", str(tmp_path / "s"), "--db",
                             postgres["url"], "--port", str(free_port())], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert_user_error(result, "cannot open the database", "PGPASSWORD")
    assert "wrong" not in result.stderr
    bad = subprocess.run([sys.executable, "-m", "kerasflow.storeops.server", str(tmp_path / "s"), "--db",
                          "mysql://x@h/db", "--port", str(free_port())], cwd=ROOT, capture_output=True,
                         text=True)
    assert_user_error(bad, "is not a postgresql:// URL")
