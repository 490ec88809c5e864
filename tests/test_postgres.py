"""A team tracking server on PostgreSQL, for real: a throwaway cluster (Debian's postgresql-15, run as
the `postgres` user when the tests run as root) on 127.0.0.1, stopped by its pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PG_PASSWORD, ROOT, TINY, assert_user_error, free_port, set_args, wait_http

pytestmark = pytest.mark.slow


def test_a_team_server_on_postgresql_with_servers_and_writers_started_at_once(postgres, tmp_path):
    import mlflow

    env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
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
            assert "--backend-store-uri" in cmdline and PG_PASSWORD not in cmdline
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
