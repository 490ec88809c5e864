"""Which RUNNING runs `orphans.close` may mark FAILED: only those whose process is provably dead, on
real MLflow (sqlite) and real folder locks. The same with a real container: tests/test_engine_image.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import mlflow
import pytest

from kerasflow.errors import UserError
from kerasflow.track import orphans
from kerasflow.train import rundir


def _running(client: mlflow.MlflowClient, exp: str, name: str, tags: dict[str, str]) -> str:
    run_id = client.create_run(exp, run_name=name, tags=tags).info.run_id
    return run_id


def test_an_unseen_folder_is_dead_only_when_its_heartbeat_stopped(tmp_path, monkeypatch):
    """Before: a run training in another mount namespace of this host (a container with --network host:
    the same host name) was marked FAILED by the next `kerasflow runs`, since the path it tagged does not
    exist here. Now an unseen folder is judged by the run's heartbeat; a seen one by its lock; a path that
    exists here but is another folder (another folder id) is not the run's folder."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("kerasflow", artifact_location=str(tmp_path / "artifacts"))
    fresh, stale = orphans.heartbeat(), {orphans.HEARTBEAT_TAG: str(int((time.time() - 3600) * 1000))}
    unseen = {orphans.HOST_TAG: orphans.tags(tmp_path)[orphans.HOST_TAG],
              orphans.RUN_DIR_TAG: "/workspace/outputs/only-in-the-container", orphans.FOLDER_TAG: "f" * 32}
    alive = _running(client, exp, "alive", {**unseen, **fresh})
    silent = _running(client, exp, "silent", {**unseen, **stale})
    # a folder here at the tagged path, free, but another folder (its id differs): not the run's lock
    other = tmp_path / "other"
    other.mkdir()
    (other / rundir.LOCK_FILE).write_text("")
    rundir.folder_id(other)
    elsewhere = _running(client, exp, "elsewhere", {**unseen, orphans.RUN_DIR_TAG: str(other), **fresh})
    # a folder seen here: its lock decides, whatever the heartbeat says
    held = tmp_path / "held"
    held.mkdir()
    seen = _running(client, exp, "seen", {**orphans.tags(held), **stale})
    holder = subprocess.Popen(["flock", str(held / rundir.LOCK_FILE), "sleep", "60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while rundir.process_gone(held) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(orphans.close(client)) == ["silent"]
        assert client.get_run(seen).info.status == "RUNNING"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and the sleep that holds its lock
        holder.wait()
    assert orphans.close(client) == ["seen"]
    status = {r: client.get_run(r).info.status for r in (alive, silent, elsewhere, seen)}
    assert status == {alive: "RUNNING", silent: "FAILED", elsewhere: "RUNNING", seen: "FAILED"}
    assert "heartbeat stopped 60 min ago" in client.get_run(silent).data.tags[orphans.CLOSED_TAG]
    monkeypatch.setenv(orphans.HEARTBEAT_GRACE_VARIABLE, "0")
    time.sleep(0.01)
    assert sorted(orphans.close(client)) == ["alive", "elsewhere"]
    monkeypatch.setenv(orphans.HEARTBEAT_GRACE_VARIABLE, "ten minutes")
    with pytest.raises(UserError, match="KERASFLOW_HEARTBEAT_GRACE='ten minutes' is not a number"):
        orphans.heartbeat_grace()


def test_a_run_closed_while_alive_that_finishes_loses_the_orphan_tag(tmp_path, monkeypatch):
    """Before: a live run wrongly closed as an orphan ended FINISHED but kept `closed_as_orphan`, and the
    warning had told its user to resume a run that was alive. Now the finish moves the tag aside."""
    from kerasflow.track import store, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("kerasflow", artifact_location=str(tmp_path / "artifacts"))
    run_id = _running(client, exp, "alive", {})
    client.set_tag(run_id, orphans.CLOSED_TAG, "2026-12-05T20:00:00: its heartbeat stopped 11 min ago")
    client.set_terminated(run_id, "FAILED")
    with store.activated(uri), tracking.run_status(run_id):
        pass
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and orphans.CLOSED_TAG not in run.data.tags
    assert "heartbeat stopped" in run.data.tags["kerasflow.closed_while_alive"]


def test_a_fifo_where_a_tag_points_never_hangs_the_check(tmp_path):
    """A run's folder tag comes from the store, which another user may write: a folder holding FIFOs
    named `.lock` and `folder_id` made the check block on opening them. Now only regular files are
    read (never blocking), and a folder whose lock cannot be read proves nothing: the run stays."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("kerasflow", artifact_location=str(tmp_path / "artifacts"))
    trap = tmp_path / "trap"
    trap.mkdir()
    os.mkfifo(trap / rundir.LOCK_FILE)
    os.mkfifo(trap / rundir.FOLDER_ID_FILE)
    stale = {orphans.HEARTBEAT_TAG: str(int((time.time() - 3600) * 1000))}
    run_id = _running(client, exp, "trap", {orphans.HOST_TAG: orphans.tags(tmp_path)[orphans.HOST_TAG],
                                            orphans.RUN_DIR_TAG: str(trap), **stale})
    signal.alarm(20)  # a blocking open would hang here for good
    try:
        assert orphans.close(client) == []
    finally:
        signal.alarm(0)
    assert client.get_run(run_id).info.status == "RUNNING"
