"""A team tracking server on PostgreSQL, for real: a throwaway cluster (Debian's postgresql-15, run as
the `postgres` user when the tests run as root) on 127.0.0.1, stopped by its pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PG_PASSWORD, ROOT, TINY, assert_user_error, free_port, set_args, wait_http

pytestmark = pytest.mark.slow


@pytest.mark.heavy  # stress; test_engine's compose test serves PostgreSQL
def test_a_team_server_on_postgresql_with_servers_and_writers_started_at_once(postgres, tmp_path):
    import mlflow

    env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
    env.pop("MLFLOW_TRACKING_URI", None)
    ports = [free_port(), free_port()]
    servers = [subprocess.Popen([sys.executable, "-m", "kerasflow", "server", str(tmp_path / "store"),
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
    result = subprocess.run([sys.executable, "-m", "kerasflow", "server", str(tmp_path / "s"), "--db",
                             postgres["url"], "--port", str(free_port())], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert_user_error(result, "cannot open the database", "PGPASSWORD")
    assert "wrong" not in result.stderr
    bad = subprocess.run([sys.executable, "-m", "kerasflow", "server", str(tmp_path / "s"), "--db",
                          "mysql://x@h/db", "--port", str(free_port())], cwd=ROOT, capture_output=True,
                         text=True)
    assert_user_error(bad, "is not a postgresql:// URL")


def _kill_inside_a_trial(proc: subprocess.Popen, out: Path) -> str:
    """SIGKILL `proc` once one of its trials has logged an epoch; that trial's run folder name."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        for log in out.glob("shared-trial*/history.jsonl"):
            if log.read_text().strip() and not (log.parent / "model.keras").exists():  # one in progress
                proc.kill()
                proc.wait()
                return log.parent.name
        time.sleep(0.05)
    raise AssertionError("the worker ran no trial")


@pytest.mark.heavy  # test_engine's container joiners share a study on PostgreSQL
def test_one_study_shared_by_workers_of_several_machines(postgres, tmp_path):
    """A lead and two joining workers (each its own output and cache folder, as on separate machines),
    all started at once on EMPTY databases: one MLflow server on PostgreSQL and the Optuna study in
    PostgreSQL. One joiner is SIGKILLed inside a trial: Optuna fails it after --grace and it is retried."""
    import mlflow
    import optuna

    port = free_port()
    env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen([sys.executable, "-m", "kerasflow", "server", str(tmp_path / "store"),
                               "--db", postgres["createdb"]("team"), "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    study_url = postgres["createdb"]("studies").replace("kf@", f"kf:{PG_PASSWORD}@")
    url = f"http://127.0.0.1:{port}"
    space = ("search_space={learning_rate: {low: 0.001, high: 0.01, log: true}, "
             "dense_units: {choices: [8, 16]}}")
    machines = {}
    try:
        wait_http(f"{url}/health", proc=server)
        worker_env = {**env, "MLFLOW_TRACKING_URI": url, "KERASFLOW_STUDY_STORAGE": study_url}
        for name in ("lead", "join1", "join2"):
            sets = [*TINY, "epochs=3", space, f"output_dir={tmp_path / name / 'out'}",
                    f"cache_dir={tmp_path / name / 'cache'}"]
            role = ["--role", "join"] if name != "lead" else ["--register", "shared-best"]
            cmd = [sys.executable, "-m", "kerasflow", "tune", *set_args(sets), "--study", "shared",
                   "--trials", "5", "--grace", "10", *role]
            machines[name] = subprocess.Popen(cmd, cwd=ROOT, env=worker_env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True)
        victim = _kill_inside_a_trial(machines["join1"], tmp_path / "join1" / "out")
        for name in ("lead", "join2"):
            _, err = machines[name].communicate(timeout=900)
            assert machines[name].returncode == 0, f"{name}: {err[-3000:]}"
            if name == "lead":
                lead_err = err
        study = optuna.load_study(study_name="shared", storage=study_url.replace(
            "postgresql://", "postgresql+psycopg2://"))
        states = [t.state.name for t in study.trials]
        assert states.count("COMPLETE") + states.count("PRUNED") == 5, states  # exact, on 3 machines
        assert states.count("FAIL") == 1, states  # the killed one, retried once
        [dead] = [t for t in study.trials if t.state.name == "FAIL"]
        assert f"shared-trial{dead.number:03d}" == victim
        [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
        assert retry.params == dead.params and retry.state.name in ("COMPLETE", "PRUNED")
        assert "waiting for" in lead_err or retry.number > dead.number

        client = mlflow.MlflowClient(url)
        exp = client.get_experiment_by_name("kerasflow")
        runs = client.search_runs([exp.experiment_id])
        [search] = [r for r in runs if r.data.tags.get("kerasflow.level") == "search"]
        trials = [r for r in runs if r.data.tags.get("kerasflow.level") == "trial"]
        assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {search.info.run_id}
        by_trial: dict[str, list[str]] = {}
        for r in trials:
            by_trial.setdefault(r.data.tags["optuna.trial"], []).append(r.info.status)
        assert all(len(statuses) == 1 for statuses in by_trial.values())  # no trial ran twice
        assert by_trial.pop(str(dead.number)) == ["KILLED"]  # the dead worker's run is not left RUNNING
        assert sorted(by_trial) == sorted(str(t.number) for t in study.trials if t.state.name != "FAIL")
        workers = {r.data.tags["optuna.worker"] for r in trials}
        assert "0" in workers and len(workers) >= 2  # the lead's and a joiner's
        assert search.info.status == "FINISHED"
        [final] = [r for r in runs if r.data.tags.get("kerasflow.level") == "final"]
        assert final.data.tags["mlflow.parentRunId"] == search.info.run_id
        assert client.get_model_version_by_alias("shared-best", "candidate").run_id == final.info.run_id
        assert PG_PASSWORD not in lead_err
    finally:
        for proc in [*machines.values(), server]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
