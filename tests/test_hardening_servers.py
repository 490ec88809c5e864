"""Hardening of servers and credentials: the one `mlflow server` command line (compose included), Host
headers and proxied artifacts, bad ports, a real basic-auth login, credentials that never show, serving
only Keras models unless told. Each test here failed on the code before its fix."""


from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.request

import pytest
from helpers import (
    PY,
    ROOT,
    TINY,
    assert_user_error,
    free_port,
    py,
    set_args,
    wait_http,
)

from kerasflow.track import store

# --- one `mlflow server` command line ------------------------------------------------------------------


def test_every_server_is_started_by_the_one_module():
    """The Makefile, make run, the UI and the notebook's server all go through storeops.server."""
    for path in ("Makefile", "project_driver.bash", "run_mlflow_ui.bash", "docker/lib.bash"):
        code = [line for line in (ROOT / path).read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if re.search(r"mlflow\S*\s+(server|ui)\b", line)], path
    for path in (ROOT / "kerasflow").rglob("*.py"):
        if path.name != "server.py" and path != ROOT / "kerasflow" / "cli" / "main.py":  # the command table
            assert not re.search(r"""["'](server|ui)["']""", path.read_text()), path
    assert "-m kerasflow server " in (ROOT / "Makefile").read_text()
    assert "server.checked_command(" in (ROOT / "kerasflow" / "launch" / "run.py").read_text()


def test_the_compose_servers_flags_are_the_builders(tmp_path):
    """docker/compose.yaml cannot import the builder: its flags are held to it (same flags, same host and
    origin rules); only what a container needs differs (PostgreSQL, /artifacts, 0.0.0.0, the service name)."""
    import yaml

    from kerasflow.storeops import server

    cmd, _ = server.command(tmp_path / "store", 5000)
    built = dict(zip(cmd[2::2], cmd[3::2], strict=True))  # mlflow server --flag value ...
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["mlflow"]["command"]
    flags = dict(item.split("=", 1) for item in compose)
    assert set(flags) == set(built), (flags, built)
    assert flags["--allowed-hosts"].split(",")[:len(server.ALLOWED_HOSTS)] == list(server.ALLOWED_HOSTS)
    assert flags["--cors-allowed-origins"] == built["--cors-allowed-origins"]
    assert flags["--port"] == built["--port"]


@pytest.mark.slow
def test_server_on_a_new_store_checks_host_headers_and_proxies_artifacts(tmp_path):
    port = free_port()
    new = tmp_path / "new store"
    proc = subprocess.Popen([PY, "-m", "kerasflow", "server", str(new), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc=proc)
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
        with urllib.request.urlopen(search, timeout=10) as r:
            exps = json.load(r)["experiments"]
        assert exps[0]["artifact_location"] == str(new / "artifacts" / "0")  # inside the store
        forged = urllib.request.Request(search, headers={"Host": f"attacker.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=10)
        assert refused.value.code == 403  # DNS rebinding: only 127.0.0.1/localhost names are served
        # a forward to another local port (`ssh -L 5001:127.0.0.1:PORT`, VS Code): its Host is served
        for host in ("localhost:5001", "127.0.0.1:61234"):
            forwarded = urllib.request.Request(search, headers={"Host": host})
            with urllib.request.urlopen(forwarded, timeout=10) as r:
                assert r.status == 200, host
        for host in ("attacker.example:5001", "192.168.1.7:5001", "localhost.attacker.example:5001"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(search, headers={"Host": host}), timeout=10)
            assert refused.value.code == 403, host
        import mlflow

        client = mlflow.MlflowClient(url)
        exp = client.create_experiment("proxied")
        run = client.create_run(exp)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (new / "mlflow.db").is_file()


def test_server_refuses_bad_ports_and_non_stores(tmp_path):
    assert_user_error(py("-m", "kerasflow", "server", str(tmp_path), "--port", "70000"), "out of range")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert_user_error(py("-m", "kerasflow", "server", str(tmp_path), "--port", str(busy)), "busy")
    (tmp_path / "notes.txt").write_text("not a store")
    assert_user_error(py("-m", "kerasflow", "server", str(tmp_path), "--port", str(free_port())),
                      "not an MLflow store")
    assert not (tmp_path / "mlflow.db").exists()


def test_credentials_never_show_and_reach_mlflow_as_its_variables(monkeypatch):
    from kerasflow import urlauth

    assert urlauth.redact("postgresql://kf:s3cr%40t@db:5432/optuna") == "postgresql://kf:***@db:5432/optuna"
    assert urlauth.redact("http://host:5000") == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa%3Ass@127.0.0.1:5000/")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert store.tracking_uri() == "http://127.0.0.1:5000/"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pa:ss"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000/"


def test_a_wrong_kind_of_tracking_uri_is_one_line(tmp_path):
    result = py("train_mlflow.py", *set_args(TINY), env={"MLFLOW_TRACKING_URI": "ftp://user:hunter2@example/x"})
    assert_user_error(result, "neither an http(s) server nor a sqlite database", "ftp://example/x")
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.slow
def test_basic_auth_server_takes_a_real_login_and_refuses_a_wrong_one(tmp_path, monkeypatch):
    import base64

    new, port = tmp_path / "team store", free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    first = subprocess.run([PY, "-m", "kerasflow", "server", str(new), "--port", str(port), "--auth"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert_user_error(first, "MLFLOW_AUTH_ADMIN_PASSWORD")
    proc = subprocess.Popen([PY, "-m", "kerasflow", "server", str(new), "--port", str(port), "--auth"],
                            cwd=ROOT, env={**env, "MLFLOW_AUTH_ADMIN_PASSWORD": "Adm1n-pass-for-tests"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        wait_http(f"{url}/health", proc=proc)

        def status(user: str | None, password: str = "") -> int:
            headers = {}
            if user:
                headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            try:
                with urllib.request.urlopen(urllib.request.Request(api, headers=headers), timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status(None) == 401
        assert status("admin", "wrong") == 401
        assert status("admin", "Adm1n-pass-for-tests") == 200
        # our own check (every command runs it before training) logs in the way MLflow's client does
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://admin:Adm1n-pass-for-tests@127.0.0.1:{port}")
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        store.check_backend(store.tracking_uri())
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        from kerasflow.errors import UserError

        with pytest.raises(UserError, match="refused the login"):
            store.check_backend(store.tracking_uri())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ini = new / "auth" / "basic_auth.ini"
    assert ini.stat().st_mode & 0o777 == 0o600 and (new / "auth" / "basic_auth.db").is_file()
    assert "Adm1n-pass" not in ini.read_text()


@pytest.mark.slow
def test_serve_loads_only_keras_models_unless_told(tmp_path):
    """A pulled store is data from another machine: a pickled pyfunc model runs its code when loaded."""
    code = """
import sys, mlflow
from kerasflow.track import store, tracking
class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input
with store.open_store(sys.argv[1]) as uri:
    mlflow.set_experiment(experiment_id=tracking.experiment_id(mlflow.MlflowClient(), uri, "e"))
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="m", python_model=Echo(), registered_model_name="pickled")
"""
    made = py("-c", code, str(tmp_path / "store"))
    assert made.returncode == 0, made.stderr[-2000:]
    refused = py("-m", "kerasflow", "serve", "models:/pickled/1", "--store", str(tmp_path / "store"),
                 "--port", str(free_port()))
    assert_user_error(refused, "not a Keras model", "--any-flavor")
