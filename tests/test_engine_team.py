"""The team server on a real engine against a throwaway PostgreSQL: the compose file validated and its
small server image run on the host network; tune workers in `make run` containers joining one Optuna
study. Fixtures: tests/helpers/engine.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid

import pytest
from helpers import ROOT, TINY, free_port, require_tool, wait_http
from helpers.engine import (
    VENV,
    docker,
    tiny_p,
)

pytestmark = [pytest.mark.slow, pytest.mark.engine]


# --- the team server: compose file and its small image --------------------------------------------------


def test_the_team_servers_compose_file_and_small_image_against_postgresql(engine, build_env, postgres):
    """Compose cannot run here (it would create a bridge network): its file is validated, and its
    server image is built and run for real on the host network against a throwaway PostgreSQL."""
    import mlflow
    from helpers import PG_PASSWORD

    compose = require_tool("docker-compose")
    config = [compose, "-f", "docker/compose.yaml", "config"]
    checked = subprocess.run(config, cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "POSTGRES_PASSWORD": "only-for-config"})
    assert checked.returncode == 0, checked.stderr
    assert "127.0.0.1:5000:5000" in checked.stdout
    assert "postgresql+psycopg2://mlflow@db:5432/mlflow" in checked.stdout
    unset = subprocess.run(config, cwd=ROOT, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"})
    assert unset.returncode != 0 and "set POSTGRES_PASSWORD in docker/team.env" in unset.stderr
    networks = docker("network", "ls", "--format", "{{.Name}}").stdout
    tag = f"kerasflow-server:test-{uuid.uuid4().hex[:6]}"
    from kerasflow.launch import image

    env = {**os.environ, **build_env}
    build = ["docker", "build", "--file", "docker/server.Dockerfile", *image.build_args(env), "--tag", tag,
             "."]
    built = subprocess.run(build, cwd=ROOT, env=image.builder_env(env), capture_output=True, text=True,
                           timeout=1800)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag, check=True).stdout)
    print(f"team server image: {size / 1e9:.2f} GB")
    port, name = free_port(), f"kf-team-{uuid.uuid4().hex[:6]}"
    # `-e PGPASSWORD` with no value: docker reads it from this environment, not from the command line
    started = subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--network", "host", "-e", "PGPASSWORD", tag,
         f"--backend-store-uri=postgresql+psycopg2://kf@127.0.0.1:{postgres['port']}/mlflow",
         "--artifacts-destination=/artifacts", "--host=127.0.0.1", f"--port={port}",
         f"--allowed-hosts=127.0.0.1:{port}"],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": PG_PASSWORD})
    try:
        assert started.returncode == 0, started.stderr
        wait_http(f"http://127.0.0.1:{port}/health")
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment(f"team-{name}"))
        client.log_metric(run.info.run_id, "m", 1.0)
        client.log_text(run.info.run_id, "through the proxy", "note.txt")
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    finally:
        docker("rm", "-fv", name)
        docker("rmi", tag)
    assert docker("network", "ls", "--format", "{{.Name}}").stdout == networks  # no bridge was made


@pytest.mark.usefixtures("image")
def test_tune_workers_in_containers_join_a_study_on_postgresql(user, checkout, workdir, run_env, postgres):
    """Two `make run -e tune -P role=join` containers and a lead process on the host share one Optuna
    study in PostgreSQL and one tracking server; the study URL (with its password) reaches the
    containers through make run's 0600 env file."""
    from helpers import PG_PASSWORD

    study_url = postgres["createdb"]("enginestudy").replace("kf@", f"kf:{PG_PASSWORD}@")
    port = free_port()
    server = user.popen(["python", "-m", "kerasflow", "server", str(workdir / "eng-store"), "--port",
                         str(port)], cwd=checkout)
    joiners: list[subprocess.Popen[str]] = []
    lead = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
        env = {**run_env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
               "KERASFLOW_STUDY_STORAGE": study_url}
        for name in ("j1", "j2"):  # first, so they wait for the lead's queue (up to --grace)
            args = ["--foreground", "--name", name, "-e", "tune", *tiny_p(epochs=2), "-P", "role=join",
                    "-P", "study=eng", "-P", "grace=240"]
            joiners.append(user.popen(["make", "run", f"VENV={VENV}", f"ARGS={shlex.join(args)}"],
                                      cwd=checkout, env=env))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not all(
                docker("container", "inspect", f"kerasflow-{n}").returncode == 0 for n in ("j1", "j2")):
            assert all(j.poll() is None for j in joiners), [j.stderr.read()[-3000:] for j in joiners]
            time.sleep(1)
        sets = [arg for t in TINY for arg in ("--set", t)]
        lead = user.popen(["python", "-m", "kerasflow", "tune", *sets, "--set", "epochs=2", "--study", "eng",
                           "--trials", "6", "--grace", "240"], cwd=checkout, env=env)
        _, lead_err = lead.communicate(timeout=1200)
        assert lead.returncode == 0, lead_err[-3000:]
        for j in joiners:
            out, err = j.communicate(timeout=600)
            assert j.returncode == 0, (out + err)[-3000:]
        logs = "".join((checkout / "logs" / f"{n}.log").read_text() for n in ("j1", "j2"))
        assert PG_PASSWORD not in logs + lead_err

        import mlflow
        import optuna

        study = optuna.load_study(study_name="eng", storage=study_url.replace("postgresql://",
                                                                              "postgresql+psycopg2://"))
        # every trial ran to an end; the median pruner may stop some (which ones depends on which worker
        # finished first), and those end KILLED in MLflow
        states = [t.state.name for t in study.trials]
        assert len(states) == 6 and set(states) <= {"COMPLETE", "PRUNED"}, states
        assert states.count("COMPLETE") >= 2, states  # the pruner's 2 startup trials
        c = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        runs = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
        [search] = [r for r in runs if r.data.tags.get("kerasflow.level") == "search"]
        trials = [r for r in runs if r.data.tags.get("kerasflow.level") == "trial"]
        assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == list(range(6))
        assert all(r.info.status in ("FINISHED", "KILLED") for r in trials), [r.info.status for r in trials]
        assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {search.info.run_id}
        workers = [r for r in runs if r.data.tags.get("kerasflow.level") == "worker"]
        assert len(workers) == 2 and all(w.info.status == "FINISHED" for w in workers)
        assert all(w.data.tags["kerasflow.search_run"] == search.info.run_id for w in workers)
        in_containers = sum(w.data.metrics["trials_run_here"] for w in workers)
        assert in_containers >= 2, in_containers  # the containers took trials from the queue
        assert PG_PASSWORD not in json.dumps([{**r.data.params, **r.data.tags} for r in runs])
    finally:
        for proc in [*joiners, *([lead] if lead else []), server]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
        for name in ("j1", "j2"):
            docker("rm", "-fv", f"kerasflow-{name}")
