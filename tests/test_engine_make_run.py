"""`make run` (kerasflow/launch) on a real engine, foreground and detached in real tmux: the host
server, `mlflow run`, the run FINISHED with metrics, artifacts and a model that loads on the host by alias;
a team server with a login; one store in both orders; runs waiting in line, `make queue`, `make cancel`
(KILLED); a hangup ends the run KILLED, never RUNNING; every MLproject entry point. Fixtures:
tests/helpers/engine.py."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from helpers import TINY, assert_user_error, free_port, require_tool, wait_http
from helpers.engine import (
    VENV,
    User,
    client,
    docker,
    foreign_files,
    fresh_clone,
    make_run,
    runs_named,
    stop,
    tiny_p,
)
from helpers.receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.engine]


# --- make run ----------------------------------------------------------------------------------------
def test_make_run_trains_in_the_container_and_the_model_loads_on_the_host(
    foreground_run, image, user, checkout, run_env
):
    import mlflow

    result = foreground_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Changing param values is not allowed" not in result.stdout + result.stderr
    assert (checkout / "logs" / "fg.status").read_text().strip() == "0"
    [run] = [r for r in runs_named(run_env) if r.data.params.get("register_model") == "kfdemo"]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.entryPoint"] == "main"
    # the user's own image ran, not the one kerasflow:latest named before (another user's)
    assert run.data.tags["mlflow.docker.image.id"] == image["id"]
    assert docker("image", "inspect", "--format", "{{.Id}}", "kerasflow:latest").stdout.strip() == image["id"]
    c = client(run_env)
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1]
    assert "test_accuracy" in run.data.metrics
    # MLflow's own params (shell-quoted command-line text) and ours agree: one value per key
    assert run.data.params["augment"] == "false" and run.data.params["splits_file"] == "''"
    assert "n_outer_folds" not in run.data.params  # main takes no folds keys, and logs only its identity
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "curves.png", "history.json"} <= artifacts, artifacts
    # the training ran as the user: what it wrote in the checkout is theirs
    assert not foreign_files(checkout, user.uid)
    mlflow.set_tracking_uri(f"http://127.0.0.1:{run_env['PORT']}")
    try:
        model = mlflow.keras.load_model("models:/kfdemo@candidate")
        import numpy as np

        assert model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape[0] == 2
    finally:
        mlflow.set_tracking_uri(None)


def test_make_run_logs_into_a_team_server_with_a_login_and_never_shows_the_password(
    image, user, checkout, workdir
):
    """MLFLOW_TRACKING_URI=http://user:pass@host is used (not replaced by a local server), and the
    password reaches the container through a 0600 env file, never a command line, a log or a param,
    every character kept (a single trailing '=' was dropped by the driver's env-file loop: 401)."""
    from urllib.parse import quote

    password = f"Team pass #\"q'{uuid.uuid4().hex[:8]}="
    port = free_port()
    team = workdir / "team-store"
    server = user.popen(
        ["python", "-m", "kerasflow", "server", str(team), "--port", str(port), "--auth"],
        cwd=checkout, env={"MLFLOW_AUTH_ADMIN_PASSWORD": password},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
        login = f"admin:{quote(password, safe='')}"
        env = {"GPU": "off", "MLFLOW_TRACKING_URI": f"http://{login}@127.0.0.1:{port}"}
        result = user.run(["make", "run", f"VENV={VENV}",
                           f"ARGS={shlex.join(['--foreground', '--name', 'team', *tiny_p(epochs=1)])}"],
                          cwd=checkout, env=env)
        log = (checkout / "logs" / "team.log").read_text()
        assert result.returncode == 0, log[-4000:]
        assert "using the MLflow server from MLFLOW_TRACKING_URI" in log
        assert password not in log + result.stdout + result.stderr
        assert quote(password, safe="") not in log + result.stdout + result.stderr
        import mlflow

        c = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", password
        try:
            [run] = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
            assert run.info.status == "FINISHED"
            assert password not in json.dumps({**run.data.params, **run.data.tags})
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_one_store_in_both_orders_and_every_model_loads(image, user, checkout, run_env):
    """make track then make run into the same experiment, and the other way round: before, the first
    order lost `make run`'s model (its experiment's host-path location was not in the container), the
    second died in make track ('the tracking URI must be a valid http or https URI')."""

    sets = [x for t in [*TINY, "epochs=1"] for x in ("--set", t)]

    def track(experiment: str, name: str) -> None:
        args = shlex.join(["--experiment", experiment, *sets, "--set", f"run_name={name}"])
        result = user.run(["make", "track", f"VENV={VENV}", f"ARGS={args}"], cwd=checkout, env={"GPU": "off"})
        assert result.returncode == 0, result.stderr[-3000:]

    def run(experiment: str, name: str) -> None:
        args = ["--foreground", "--name", name, "--experiment", experiment, *tiny_p(epochs=1)]
        result = make_run(user, checkout, run_env, args)
        assert result.returncode == 0, (checkout / "logs" / f"{name}.log").read_text()[-3000:]

    track("track-first", "tf-embedded")
    run("track-first", "tf-run")
    run("run-first", "rf-run")
    track("run-first", "rf-embedded")
    c = client(run_env)
    models = {}
    for experiment in ("track-first", "run-first"):
        for r in c.search_runs([c.get_experiment_by_name(experiment).experiment_id]):
            assert r.info.status == "FINISHED"
            models[f"{experiment}/{r.info.run_id[:8]}"] = f"models:/{r.outputs.model_outputs[0].model_id}"
    assert len(models) == 4
    # as the user, as a user would: MLflow writes `registered_model_meta` beside a model it loads from
    # a local path, so a root test process would leave root-owned files in the user's store
    server = f"http://127.0.0.1:{run_env['PORT']}"
    for where in (server, str(checkout / "store")):  # through the server (UI, notebook), then directly
        loaded = user.run(["python", "-c", LOAD_MODELS, where, *models.values()], cwd=checkout)
        assert loaded.returncode == 0 and loaded.stdout.strip() == "4 loaded", loaded.stderr[-3000:]


LOAD_MODELS = """
import contextlib, sys, mlflow, numpy as np
from kerasflow.track import store
where = sys.argv[1]
if where.startswith("http"):
    mlflow.set_tracking_uri(where)
with contextlib.nullcontext() if where.startswith("http") else store.open_store(where, create=False):
    for uri in sys.argv[2:]:
        model = mlflow.keras.load_model(uri)
        assert model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape[0] == 2
print(len(sys.argv[2:]), "loaded")
"""


def test_a_real_param_conflict_is_one_line(image, user, checkout, run_env):
    """A run id whose logged epochs differ from the config's: refused in one line, the run not RUNNING."""
    c = client(run_env)
    exp = c.get_experiment_by_name("kerasflow") or c.get_experiment(c.create_experiment("kerasflow"))
    exp_id = getattr(exp, "experiment_id", None) or exp
    run = c.create_run(exp_id)
    c.log_param(run.info.run_id, "epochs", "7")
    result = user.run(
        ["python", "train_mlflow.py", *[x for t in TINY for x in ("--set", t)], "--set", "epochs=1"],
        cwd=checkout,
        env={"MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{run_env['PORT']}"},
    )
    assert_user_error(result, "already has param epochs='7'", "epochs=1", "new run")
    assert c.get_run(run.info.run_id).info.status == "FAILED"


@pytest.mark.usefixtures("foreground_run", "image")
def test_an_experiment_location_holding_a_command_is_refused_and_nothing_runs(
    user, checkout, workdir, run_env
):
    """Any member of a server can make an experiment whose artifact location holds `$(...)`; MLflow puts
    that location unquoted in the `bash -c` line that starts the container, so before the check the
    next `make run` into it executed the command on the box. Now: one line naming the value, no run,
    no container, nothing executed. (After foreground_run: this session's server is up.)"""
    c = client(run_env)
    marker = workdir / "executed-by-mlflow-run"
    c.create_experiment("evil", artifact_location=f"{workdir}/evil$(touch {marker})")
    # the server as a team server is given (MLFLOW_TRACKING_URI): make run's own store server would
    # refuse the location earlier, as outside its store (proxy-artifacts)
    team = {**run_env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{run_env['PORT']}"}
    result = make_run(user, checkout, team,
                      ["--foreground", "--name", "inject", "--experiment", "evil", *tiny_p(epochs=1)])
    log = (checkout / "logs" / "inject.log").read_text()
    assert result.returncode == 2, log[-3000:]
    assert "experiment 'evil' stores artifacts at" in log and "Use another --experiment" in log, log[-3000:]
    assert "Traceback" not in log
    assert not marker.exists()
    assert c.search_runs([c.get_experiment_by_name("evil").experiment_id]) == []
    assert docker("container", "inspect", "kerasflow-inject").returncode != 0


def test_detached_make_runs_wait_in_line_and_a_cancelled_run_ends_killed(image, user, checkout, run_env):
    """CPU_SLOTS=1, detached in real tmux: while one run trains, three more wait in line in their tmux
    sessions (before: the second was refused, and people polled by hand); `make queue` shows 1 running
    (epoch and validation metric from MLflow) and places 1-3; a waiter whose tmux session is killed
    leaves no place; `make cancel` stops the running one, which ends KILLED (a user's stop, not FAILED);
    the others then run one after the other, FINISHED. The same name twice is refused."""
    require_tool("tmux")
    told = Receiver()  # KERASFLOW_NOTIFY: one message per ended run, from the driver on the host
    # a notifier URL with a login: it reached tmux's command line, which every user reads in `ps`
    secret = f"Notify-pw-{uuid.uuid4().hex[:8]}"
    env = {**run_env, "SSH_CONNECTION": "127.0.0.1 5555 127.0.0.1 22", "CPU_SLOTS": "1",
           "KERASFLOW_NOTIFY": told.url.replace("json://", f"json://hook:{secret}@")}
    logs = checkout / "logs"
    started = make_run(user, checkout, env, ["--name", "det", *tiny_p(epochs=200, synthetic_examples=2000)])
    assert started.returncode == 0, started.stdout + started.stderr
    assert "tmux attach -t" in started.stdout and "make queue" in started.stdout
    assert f"ssh -L {run_env['PORT']}:127.0.0.1:{run_env['PORT']}" in started.stdout  # the exact tunnel
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        log = (logs / "det.log").read_text() if (logs / "det.log").exists() else ""
        if docker("ps", "-q", "--filter", "name=^kerasflow-det$").stdout.strip() and "Epoch 3/" in log:
            break
        assert not (logs / "det.status").exists(), log[-3000:]
        time.sleep(1)
    assert "Epoch 3/" in log, log[-3000:]
    second = make_run(user, checkout, run_env, ["--foreground", "--name", "det", *tiny_p()])
    assert_user_error(second, "a run named 'det' is already in progress", "(its launcher: pid", "tmux attach")
    for name in ("next", "gone", "last"):
        waiting = make_run(user, checkout, env, ["--name", name, *tiny_p(epochs=1)])
        assert waiting.returncode == 0, waiting.stdout + waiting.stderr

    def queue() -> list[list[str]]:
        shown = user.run(["make", "--no-print-directory", "queue", f"VENV={VENV}"], cwd=checkout, env=env,
                         timeout=120)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        return [row.split() for row in shown.stdout.splitlines() if row.split()[:1] != ["NAME"]]

    while len(rows := queue()) < 4 and time.monotonic() < deadline:
        time.sleep(1)
    assert [(r[0], r[3], r[4]) for r in rows] == [("det", "running", "-"), ("next", "waiting", "1"),
                                                  ("gone", "waiting", "2"), ("last", "waiting", "3")], rows
    assert rows[0][6].isdigit() and int(rows[0][6]) >= 3 and rows[0][7].startswith("val_"), rows[0]
    # every run has its MLflow run from the moment it is queued: the waiting ones are SCHEDULED, with
    # their place in line on the run (before: the id was scraped from the log once `mlflow run` ran)
    ids = {r[0]: r[8] for r in rows}
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids.values()), rows
    scheduled = client(run_env).get_run(ids["next"])
    assert scheduled.info.status == "SCHEDULED", scheduled.info
    assert scheduled.data.tags["kerasflow.queue"].startswith("waiting for a CPU slot, place 1 in line")
    assert client(run_env).get_run(ids["det"]).info.status == "RUNNING"
    assert rows[1][1] == user.name and rows[0][-1] == str(logs / "det.log")
    assert "waiting for a CPU slot, place 1 in line" in (logs / "next.log").read_text()
    assert not [a for a in _command_lines() if secret.encode() in a], "a secret on a command line"

    killed = user.run(["tmux", "kill-session", "-t", f"{run_env['KF_TMUX_SESSION']}-gone"], cwd=checkout,
                      env=env, timeout=60)
    assert killed.returncode == 0, killed.stderr
    while [r[0] for r in queue()] != ["det", "next", "last"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [(r[0], r[4]) for r in queue()] == [("det", "-"), ("next", "1"), ("last", "2")]

    cancel = user.run(["make", "--no-print-directory", "cancel", "NAME=det", f"VENV={VENV}"], cwd=checkout,
                      env=env, timeout=300)
    assert cancel.returncode == 0 and "det stopped" in cancel.stdout, cancel.stdout + cancel.stderr
    assert (logs / "det.status").read_text().strip() not in ("", "0")
    assert client(run_env).get_run(ids["det"]).info.status == "KILLED", (logs / "det.log").read_text()[-3000:]
    # the waiter whose session was killed left the line: its run ends KILLED, not SCHEDULED for good
    gone = client(run_env).get_run(ids["gone"]).info.status
    assert gone == "KILLED", gone
    for name in ("next", "last"):
        status = logs / f"{name}.status"
        while not status.exists() and time.monotonic() < deadline + 600:
            time.sleep(1)
        server_log = logs / "mlflow-server.log"
        assert status.read_text().strip() == "0", (logs / f"{name}.log").read_text()[-3000:] + (
            server_log.read_text()[-3000:] if server_log.exists() else "")
    ran = {n: client(run_env).get_run(ids[n]).info for n in ("next", "last")}
    assert all(info.status == "FINISHED" for info in ran.values())
    # one after the other, in the order they came (a run's start_time is when it was queued: its first
    # epoch's metric says when it trained)
    first_epoch = client(run_env).get_metric_history(ids["last"], "val_accuracy")[0].timestamp
    assert ran["next"].end_time <= first_epoch
    assert not (logs / "gone.status").exists() or (logs / "gone.status").read_text().strip() != "0"
    assert queue() == ["queue: no run is running or waiting on this machine".split()]
    told.close()
    titles = sorted(m["title"] for m in told.messages)
    # (gone ended KILLED in line: its MLflow run existed from the moment it was queued, so it is told too)
    assert titles == ["kerasflow run det: KILLED", "kerasflow run gone: KILLED",
                      "kerasflow run last: FINISHED", "kerasflow run next: FINISHED"]
    killed_message = next(m["message"] for m in told.messages if "det:" in m["title"])
    assert "last lines of the log:" in killed_message and "val_accuracy=" in killed_message


def _command_lines() -> list[bytes]:
    """Every process's argv, as any user of the box reads it (`ps`)."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            found.append(path.read_bytes())
    assert found
    return found


def test_a_hangup_stops_the_container_and_ends_the_run(image, user, checkout, run_env):
    """SIGHUP to the whole foreground group (an SSH session dropping without tmux): `mlflow run` used to
    die, leaving the run RUNNING and the container training on."""
    args = ["--foreground", "--name", "hup", *tiny_p(epochs=200, synthetic_examples=2000)]
    # started with SIGHUP at its default even when the tests run under nohup (bash cannot trap a signal
    # ignored at its start)
    ignored = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        proc = user.popen(["make", "run", f"VENV={VENV}", f"ARGS={shlex.join(args)}"], cwd=checkout,
                          env=run_env, new_session=True)
    finally:
        signal.signal(signal.SIGHUP, ignored)
    log = checkout / "logs" / "hup.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = docker("ps", "-q", "--filter", "name=^kerasflow-hup$").stdout.strip()
        if running and log.exists() and "Epoch 2/" in log.read_text():
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:] + proc.stderr.read()[-2000:]
        time.sleep(1)
    assert running, "the training container never ran"
    os.killpg(proc.pid, signal.SIGHUP)
    status = checkout / "logs" / "hup.status"
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status.exists(), log.read_text()[-3000:]
    assert status.read_text().strip() not in ("", "0")
    assert docker("ps", "-aq", "--filter", "name=^kerasflow-hup$").stdout.strip() == ""
    [run] = [r for r in runs_named(run_env) if r.data.params.get("synthetic_examples") == "2000"
             and r.data.params.get("epochs") == "200" and r.info.start_time > 0
             and r.info.run_id in log.read_text()]
    assert run.info.status == "KILLED"  # not a failure of the training: its session went away
    text = log.read_text()
    assert "launcher: SIGHUP: stopping container kerasflow-hup" in text, text[-4000:]
    proc.wait(timeout=60)


# --- every MLproject entry point through make run -----------------------------------------------------


def test_every_entry_point_runs_through_make_run(image, user, checkout, run_env):
    """splits, cv (main: the other tests; tune: test_engine_team's workers run `-e tune` through make
    run, and test_experiments the lead's retrain), then analyze over the cv's fold runs."""
    small = tiny_p(n_outer_folds=2, n_inner_folds=2)
    steps = [
        # splits takes the data and folds sections only (no model or training keys)
        (
            "splits",
            [
                "-e",
                "splits",
                "-P",
                "data_source=synthetic",
                "-P",
                "synthetic_examples=200",
                "-P",
                "n_outer_folds=2",
                "-P",
                "n_inner_folds=2",
                "-P",
                "out=outputs/engine-splits.json",
            ],
        ),
        ("cv", ["-e", "cv", *small, "-P", "n_outer=1", "-P", "n_inner=1"]),  # splits made when none given
        ("analyze", ["-e", "analyze", "-P", "filter=tags.kerasflow.level = 'inner_fold'"]),
    ]
    for name, args in steps:
        result = make_run(user, checkout, run_env, ["--foreground", "--name", f"ep-{name}", *args])
        assert result.returncode == 0, f"{name}: " + result.stdout[-4000:] + result.stderr[-2000:]
        assert (checkout / "logs" / f"ep-{name}.status").read_text().strip() == "0"
    assert (checkout / "outputs" / "engine-splits.json").is_file()
    assert (checkout / "outputs" / "splits.json").is_file()  # the cv entry point wrote its folds
    by_entry: dict[str, list] = {}
    for run in runs_named(run_env):
        by_entry.setdefault(run.data.tags.get("mlflow.project.entryPoint", ""), []).append(run)
    for entry in ("splits", "cv", "analyze"):
        assert by_entry.get(entry) and all(r.info.status == "FINISHED" for r in by_entry[entry]), entry
    levels = {r.data.tags.get("kerasflow.level") for r in runs_named(run_env)}
    assert {"cv", "outer_fold", "inner_fold"} <= levels, levels
    analyzed = runs_named(run_env, filter_string="tags.kerasflow.level = 'inner_fold'")
    assert analyzed and all(
        "analysis_threshold" in r.data.metrics or any(k.startswith("analysis_") for k in r.data.metrics)
        for r in analyzed
    )
    assert not foreign_files(checkout, user.uid)


# --- two users on one box, no flags ---------------------------------------------------------------------


def test_two_users_run_at_once_without_a_port_and_each_sees_their_own_through_a_tunnel(  # noqa: PLR0913
        image, user, checkout, workdir, build_env, run_env):
    """Before: every store's server took 127.0.0.1:5000, so the second user's `make run` failed with
    "port 5000 answers as an MLflow server that is not this store's own ... set PORT". Now two UIDs, two
    checkouts, one engine, no PORT: both train at once, each store's server takes a port of its own
    (kept in STORE/server-port) and each user sees their own run, and only it, through their forward."""
    import mlflow

    require_tool("socat")
    other_name = f"kfother{uuid.uuid4().hex[:4]}"
    subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", other_name],
                   check=True)
    group = subprocess.run(["stat", "-c", "%G", "/var/run/docker.sock"], capture_output=True, text=True,
                           check=True).stdout.strip()
    subprocess.run(["usermod", "-aG", group, other_name], check=True)
    entry = pwd.getpwnam(other_name)
    other = User(other_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), via_root=True)
    procs, forwards = [], []
    try:
        people = {}
        for who, name in ((user, "two-a"), (other, "two-b")):
            home = fresh_clone(user, checkout, workdir, name)  # the same commit: the same image tag
            subprocess.run(["chown", "-R", f"{who.uid}:{who.gid}", str(home)], check=True)
            env = {**build_env, "GPU": "off", "KF_TMUX_SESSION": f"kf-two-{name}",
                   "KERASFLOW_QUEUE_DIR": run_env["KERASFLOW_QUEUE_DIR"]}  # one line for both
            people[name] = (who, home, env)
        for name, (who, home, env) in people.items():
            args = ["--foreground", "--name", name, *tiny_p(epochs=2)]
            procs.append(who.popen(["make", "run", f"VENV={VENV}", f"ARGS={shlex.join(args)}"], cwd=home,
                                   env=env))
        for proc in procs:
            out, err = proc.communicate(timeout=1500)
            assert proc.returncode == 0, out[-2000:] + err[-3000:]
        ports = {name: int((home / "store" / "server-port").read_text())
                 for name, (_, home, _) in people.items()}
        assert ports["two-a"] != ports["two-b"], ports
        for name, (who, home, _) in people.items():
            local = free_port()  # the laptop's side of `ssh -L local:127.0.0.1:PORT box`
            forwards.append(subprocess.Popen(["socat", f"TCP-LISTEN:{local},bind=127.0.0.1,reuseaddr,fork",
                                              f"TCP:127.0.0.1:{ports[name]}"]))
            wait_http(f"http://localhost:{local}/health")
            c = mlflow.MlflowClient(f"http://localhost:{local}")
            seen = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
            assert [r.info.user_id for r in seen] == [who.name], [r.info for r in seen]
            assert seen[0].info.status == "FINISHED"
            log = (home / "logs" / f"{name}.log").read_text()
            assert f"ssh -L {ports[name]}:127.0.0.1:{ports[name]}" in log  # the exact tunnel, printed
    finally:
        stop(forwards)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for who, home, env in locals().get("people", {}).values():
            who.run(["make", "--no-print-directory", "server-stop", f"VENV={VENV}"], cwd=home, env=env,
                    timeout=120)
        docker("rmi", f"kerasflow:{image['tag'].split(':')[1].rsplit('-u', 1)[0]}-u{other.uid}.{other.gid}",
               f"kerasflow:latest-u{other.uid}.{other.gid}")
        subprocess.run(["userdel", "-r", other_name], capture_output=True)
