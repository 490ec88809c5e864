"""`make run`'s launcher (kerasflow/launch/) without an engine: the MLflow run exists from the moment the
run is queued and is what `mlflow run --run-id` trains into; a run cancelled in line ends KILLED; a run
whose launcher died is closed, a live one never; and the checks `make run` makes in the foreground before it
detaches or builds. The real-engine flows: tests/test_engine_make_run.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
from helpers import ROOT, assert_user_error, free_port
from helpers.stand_ins import calls, script

from kerasflow import config, preflight, runqueue
from kerasflow.launch import run
from kerasflow.storeops import server
from kerasflow.track import orphans

PROJECT = """name: pin
entry_points:
  main:
    parameters:
      x: {type: float, default: 1}
    command: "python pin.py {x}"
"""
PIN = "import sys, mlflow\nwith mlflow.start_run():\n    mlflow.log_metric('m', float(sys.argv[1]))\n"


def _request(root: Path, tmp_path: Path, **kw: object) -> run.Request:
    return run.Request(root=root, store=tmp_path / "store", logs=tmp_path / "logs", name="pinned", **kw)


@pytest.mark.slow
def test_mlflow_run_trains_into_the_run_made_when_it_was_queued(tmp_path, monkeypatch):
    """`mlflow run --run-id` is "internal" in MLflow's help: this pins that it logs into the given run,
    which keeps the tags and parameters `mlflow run` itself would have given it, and makes no other."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "MLproject").write_text(PROJECT)
    (project / "pin.py").write_text(PIN)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    request = _request(project, tmp_path, params=["x=3"], experiment="pin")
    run_id, experiment_id = run.create_run(request, uri, tmp_path / "lock")
    client = mlflow.MlflowClient(uri)
    made = client.get_run(run_id)
    assert made.info.status == "SCHEDULED"
    assert made.data.params == {"x": "3"} and made.data.tags["mlflow.project.entryPoint"] == "main"
    assert made.data.tags["kerasflow.launch"] == "local" and made.data.tags["kerasflow.queue"] == "queued"
    done = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "run", str(project), "-e", "main",
                           "--experiment-id", experiment_id, "--run-id", run_id, "--env-manager", "local",
                           "-P", "x=3"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr[-3000:]
    [only] = client.search_runs([experiment_id])
    assert only.info.run_id == run_id and only.info.status == "FINISHED"
    assert only.data.metrics == {"m": 3.0} and only.data.params == {"x": "3"}


@pytest.mark.slow
def test_a_run_cancelled_while_it_waits_ends_killed_and_make_queue_showed_its_id(tmp_path):
    """CPU_SLOTS=1 held by another command: `kerasflow run` waits in line with its MLflow run SCHEDULED
    (its place on the run, its id in `make queue`); `kerasflow cancel` ends it KILLED, status 143."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GPU": "off", "CPU_SLOTS": "1",
           "KERASFLOW_QUEUE_DIR": str(tmp_path / "line"), "KF_PREFLIGHT_DONE": "1",
           "LOGS": str(tmp_path / "logs"), "STORE": str(tmp_path / "store")}
    env.pop("KERASFLOW_NOTIFY", None)
    (tmp_path / "logs").mkdir()
    holder = subprocess.Popen([sys.executable, "-m", "kerasflow", "queue-wait", "--name", "holder", "--log",
                               str(tmp_path / "holder.log"), "--status", str(tmp_path / "holder.status"),
                               "--", "sleep", "120"], env=env, cwd=ROOT)
    waiter = None
    try:
        deadline = time.monotonic() + 60
        holder_log = tmp_path / "holder.log"
        while not holder_log.exists() or "starts on" not in holder_log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        waiter = subprocess.Popen([sys.executable, "-m", "kerasflow", "run", "--root", str(ROOT),
                                   "--foreground", "--name", "waits", "-P", "epochs=1"], env=env, cwd=ROOT,
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        mine = None
        while mine is None or not mine.run_id:
            assert time.monotonic() < deadline and waiter.poll() is None, waiter.communicate()
            time.sleep(0.2)
            os.environ[runqueue.DIR_ENV] = env["KERASFLOW_QUEUE_DIR"]
            try:
                mine = runqueue.find("waits")
            finally:
                del os.environ[runqueue.DIR_ENV]
        shown = subprocess.run([sys.executable, "-m", "kerasflow", "queue"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert mine.run_id in shown.stdout and "waiting" in shown.stdout, shown.stdout
        client = mlflow.MlflowClient(uri)
        while not client.get_run(mine.run_id).data.tags.get("kerasflow.queue", "").startswith("waiting"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.get_run(mine.run_id).info.status == "SCHEDULED"
        cancel = subprocess.run([sys.executable, "-m", "kerasflow", "cancel", "waits"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert waiter.wait(timeout=60) == 143
        assert client.get_run(mine.run_id).info.status == "KILLED"
        assert (tmp_path / "logs" / "waits.status").read_text().strip() == "143"
    finally:
        holder.terminate()
        holder.wait(timeout=30)
        if waiter and waiter.poll() is None:
            waiter.kill()


@pytest.mark.slow
def test_a_run_whose_launcher_died_is_closed_and_a_live_one_in_a_container_is_not(tmp_path, monkeypatch):
    """SIGKILL to a launcher (or a reboot) left its run SCHEDULED for good; and a run training in make
    run's container, whose run folder is a path of that container, was closed as an orphan while alive."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "MLproject").write_text(PROJECT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(orphans, "GRACE", 0)  # (a run younger than GRACE is left alone: a lock handover)
    client = mlflow.MlflowClient(uri)
    held = tmp_path / "held.lock"
    holder = subprocess.Popen(["flock", str(held), "sleep", "120"], start_new_session=True)
    try:
        while not (held.exists() and runqueue.lock_holder(held)):
            time.sleep(0.05)
        dead, _ = run.create_run(_request(project, tmp_path), uri, tmp_path / "nobody.lock")
        alive, _ = run.create_run(_request(project, tmp_path), uri, held)
        training, _ = run.create_run(_request(project, tmp_path), uri, held)
        client.update_run(training, status="RUNNING")
        client.set_tag(training, orphans.RUN_DIR_TAG, "/workspace/outputs/seen-only-in-the-container")
        closed = orphans.close(client)
        assert client.get_run(dead).info.status == "FAILED" and len(closed) == 1
        assert "launcher" in client.get_run(dead).data.tags[orphans.CLOSED_TAG]
        assert client.get_run(alive).info.status == "SCHEDULED"
        assert client.get_run(training).info.status == "RUNNING"
    finally:
        os.killpg(holder.pid, 9)  # flock and the sleep that holds its lock
        holder.wait()
    orphans.close(client)  # its launcher gone now: the training's folder decides (gone here: FAILED)
    assert client.get_run(alive).info.status == "FAILED"
    assert client.get_run(training).info.status == "FAILED"


OTHER = 4246  # another user of the box (no passwd entry needed: setpriv)


@pytest.fixture
def shared():
    """A folder every user of the box may write, as /tmp is (pytest's own tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="kf-shared-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _as_other(*cmd: str) -> list[str]:
    return ["setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", *cmd]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a second UID (setpriv as root)")
@pytest.mark.slow
def test_an_image_lock_another_user_holds_for_ever_is_one_line_not_a_hang(shared, monkeypatch):
    """The shared /tmp/kerasflow-latest.lock: another user took it and never let go; every make run on the
    box waited for ever in `flock` (the bash driver), now one line names the holder after the limit."""
    from kerasflow.errors import UserError
    from kerasflow.launch import image

    lock = shared / "latest.lock"
    holder = subprocess.Popen(_as_other("flock", str(lock), "sleep", "60"), start_new_session=True)
    try:
        while not (lock.exists() and runqueue.lock_holder(lock)):
            time.sleep(0.05)
        monkeypatch.setenv(image.LATEST_LOCK_ENV, str(lock))
        said: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(UserError, match=r"has been held for 1 s \(by pid [0-9]+\).*LATEST_LOCK"):
            image.point_latest("kerasflow:none", "kerasflow-none", alive=lambda: True, say=said.append,
                               limit=1)
        assert time.monotonic() - t0 < 10 and "waiting" in said[0]
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a second UID (setpriv as root)")
@pytest.mark.slow
def test_a_lock_path_in_a_run_tag_opens_only_a_plain_file_of_this_user(shared):
    """The launch-lock path comes from a run's tag: anyone who writes to a shared store can set it. Another
    user's file, a FIFO, a link or a device is never judged 'gone' (their run is not ours to close) and a
    FIFO is never opened for long; only this user's free lock file, or none, says the launcher is gone."""
    tmp_path = shared
    theirs = tmp_path / "theirs.lock"
    subprocess.run(_as_other("touch", str(theirs)), check=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "mine.lock")
    (tmp_path / "mine.lock").write_text("")
    t0 = time.monotonic()
    for path in (theirs, fifo, link, Path("/dev/zero")):
        assert not orphans.launcher_gone(path), path
    assert time.monotonic() - t0 < 5
    assert orphans.launcher_gone(tmp_path / "mine.lock") and orphans.launcher_gone(tmp_path / "none.lock")


# --- make run: the foreground checks (before it detaches or builds) -------------------------------


def driver(sb: dict, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    venv_bin = Path(sys.executable).parent
    return script(sb, "project_driver.bash", *args, KERASFLOW_PYTHON=str(venv_bin / "python"), PORT="1",
                  **env)


def test_a_detached_run_without_its_dataset_fails_in_the_foreground_before_building(sandbox):
    """Before: `make run ARGS=--detach` with the default config and no data exited 0; the image was
    built (8 GB) in tmux, and the missing dataset surfaced only in logs/NAME.log."""
    result = driver(sandbox, "--detach", "--name", "nodata")
    assert_user_error(result, "TFDS malaria is not in", "make data", "data_source=synthetic")
    assert not calls(sandbox, "build") and not calls(sandbox, "run")
    assert "started 'nodata' in tmux" not in result.stdout
    # an image folder that is not there, and a /data path without DATA: named, with the fix
    assert_user_error(driver(sandbox, "--detach", "-P", "data_source=image_dir", "-P", "image_dir=cells"),
                      "is not a folder", "image_dir")
    assert_user_error(driver(sandbox, "--detach", "-P", "tfds_data_dir=/data/tfds"), "DATA is not set")
    # a wrong value is refused by the config, here too, not in the container
    assert_user_error(driver(sandbox, "--detach", "-P", "epochs=many"), "epochs")


@pytest.mark.slow
def test_two_make_runs_started_in_one_second_get_two_names(sandbox):
    """Before: both took ENTRY-TIME, so the second found the first's tmux session (or slot, log and
    container name) and was refused. Now the automatic name is claimed by creating its log exclusively.
    (A stand-in tmux records the sessions; the real detached flow runs in test_engine_make_run.)"""
    tmux = sandbox["bin"] / "tmux"
    tmux.unlink(missing_ok=True)
    tmux.write_text('#!/bin/sh\n[ "$1" = new-session ] && echo "$4" >> "$FAKE_DOCKER_DIR/sessions"; '
                    '[ "$1" != has-session ]\n')
    tmux.chmod(0o755)
    venv_bin = Path(sys.executable).parent
    # GPU=off: one slot per run name, so the two are not refused by the one-run-per-GPU lock (which one
    # of two same-second runs on one GPU gets the slot is a race; CI saw either)
    env = {**sandbox["env"], "KERASFLOW_PYTHON": str(venv_bin / "python"), "KF_PREFLIGHT_DONE": "1",
           "GPU": "off"}
    procs = [subprocess.Popen([str(sandbox["repo"] / "project_driver.bash"), "--detach"], cwd=sandbox["repo"],
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    try:  # (each makes its MLflow run before it detaches: the store's server is started once, for both)
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        server.stop(Path(env["STORE"]))
    assert [p.returncode for p in procs] == [0, 0], outs
    names = sorted(re.search(r"started '([^']+)'", out).group(1) for out, _ in outs)
    assert names[0] != names[1], names  # main-TIME and main-TIME-2 (or two seconds' names)
    sessions = (sandbox["state"] / "sessions").read_text().split()
    assert len(set(sessions)) == 2
    runs = sorted(p.stem for p in Path(sandbox["env"]["LOGS"]).glob("*.log") if p.stem != "mlflow-server")
    assert runs == names


def test_no_engine_or_no_gpu_runtime_fails_before_detaching(sandbox):
    down = driver(sandbox, "--detach", "-P", "data_source=synthetic", FAKE_DOCKER_DAEMON="down")
    assert_user_error(down, "the Docker daemon is not reachable", "systemctl start docker")
    no_gpu = driver(sandbox, "--detach", "-P", "data_source=synthetic", GPU="on")
    assert_user_error(no_gpu, "GPU=on but no NVIDIA container runtime", "nvidia-container-toolkit", "GPU=off")
    assert not calls(sandbox, "build")


def test_the_first_build_is_announced_with_its_time_and_size(sandbox, tmp_path, monkeypatch):
    """The image does not exist: the user learns in the foreground that the run builds it, and how big."""
    checks = preflight.image("kerasflow:abc-u1.1", present=False)
    assert checks.status == preflight.NOTE and "8.1 GB" in checks.line and "minutes" in checks.line
    # make run's checks, on a stand-in engine that has no image yet
    for key, value in {**sandbox["env"], "GPU": "off"}.items():
        monkeypatch.setenv(key, value)
    notes: list[str] = []
    request = run.Request(root=sandbox["repo"], store=tmp_path / "store", logs=tmp_path / "logs",
                          port=free_port(), params=["data_source=synthetic"], err=notes.append)
    run.check(request)
    tag = f"kerasflow:{sandbox['sha']}-u{os.getuid()}.{os.getgid()}"
    assert f"note: {tag} is not built yet: this run builds it first" in "\n".join(notes), notes
    assert "8.1 GB" in "\n".join(notes) and not calls(sandbox, "build")


def test_the_data_check_finds_a_prepared_tfds_folder_and_maps_data(tmp_path):
    cfg = config.load(None, [])
    assert preflight.data(cfg, "main", tmp_path, "").status == preflight.FAIL
    (tmp_path / "data" / "tfds" / "malaria" / "1.0.0").mkdir(parents=True)
    version = tmp_path / "data" / "tfds" / "malaria" / "1.0.0"
    (version / "dataset_info.json").write_text("{}")
    assert preflight.data(cfg, "main", tmp_path, "").status == preflight.FAIL  # the info file alone
    (version / "malaria-train.tfrecord-00000-of-00001").write_bytes(b"")
    assert preflight.data(cfg, "main", tmp_path, "").status == preflight.PASS
    mounted = config.load(None, ["tfds_data_dir=/data/tfds"])
    assert preflight.data(mounted, "main", tmp_path / "elsewhere", str(tmp_path / "data")).status == "pass"
    assert preflight.data(cfg, "analyze", tmp_path / "nothing", "").status == preflight.PASS


def test_the_drivers_help_is_whole():
    """Before: `sed -n '2,16p'` stopped mid-sentence ("... MLflow-3 models logged")."""
    out = subprocess.run([str(ROOT / "project_driver.bash"), "--help"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0
    text = out.stdout.strip()
    assert "A stopped run (make cancel, Ctrl-C, a hangup) ends KILLED." in text  # the whole docstring
    assert text.startswith("usage: kerasflow run ")
    for word in ("-e ENTRY", "--experiment", "--name", "--detach", "-P key=value", "GPU=", "DATA=", "PORT"):
        assert word in text, word
    assert not any(line.startswith("#") or line.startswith("set -") for line in text.splitlines())
