"""Run notifications (kerasflow/notify.py) through Apprise's JSON webhook to a loopback receiver the test
starts: one message per run, the right status and metrics, a failure's log tail without secrets, and a
receiver that never answers costs the run a few seconds at most."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from helpers import ROOT, TINY, set_args
from helpers.receiver import Receiver

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KERASFLOW_NOTIFY"))}
    return env | extra


def test_a_tracked_run_sends_one_message_when_it_starts_and_one_when_it_ends(receiver, tmp_path):
    sets = [*TINY, "epochs=1", "run_name=told", f"output_dir={tmp_path / 'out'}",
            f"cache_dir={tmp_path / 'c'}"]
    done = subprocess.run([sys.executable, "-m", "kerasflow", "track", *set_args(sets), "--store",
                           str(tmp_path / "store")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=_env(KERASFLOW_NOTIFY=receiver.url, KERASFLOW_NOTIFY_START="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    titles = [m["title"] for m in receiver.messages]
    assert titles == ["kerasflow run told: STARTED", "kerasflow run told: FINISHED"], receiver.messages
    body = receiver.messages[1]["message"]
    assert body.startswith("run told ended FINISHED after 0:") and "test_accuracy=" in body
    assert "val_accuracy=" in body and "last lines" not in body


def test_a_failed_make_run_sends_its_log_tail_without_secrets(receiver, tmp_path):
    """What `make run`'s driver sends when a run failed (no MLflow run reached: the log tells)."""
    log = tmp_path / "run.log"
    log.write_text("building the image\n" * 50 + "tracking http://admin:Hunter2-pw@team:5000/ refused\n"
                   "MLFLOW_TRACKING_PASSWORD was Hunter2-pw\nerror: the training failed\n")
    done = subprocess.run([sys.executable, "-m", "kerasflow", "notify-run", "--name", "det", "--log",
                           str(log), "--exit", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=_env(KERASFLOW_NOTIFY=receiver.url, MLFLOW_TRACKING_PASSWORD="Hunter2-pw"))  # noqa: S106
    assert done.returncode == 0, done.stderr
    [message] = receiver.messages
    assert message["title"] == "kerasflow run det: FAILED (exit 2)"
    text = message["message"]
    assert "last lines of the log:" in text and "error: the training failed" in text
    assert "Hunter2" not in text and "admin:***@team:5000" in text
    assert text.count("building the image") < 20  # the tail, not the whole log


def test_a_receiver_that_never_answers_costs_seconds_not_the_run(tmp_path):
    """A socket that accepts and never answers: the message is given up after KERASFLOW_NOTIFY_TIMEOUT
    with one warning line, and the command still succeeds."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"json://127.0.0.1:{silent.getsockname()[1]}/hook"
    log = tmp_path / "run.log"
    log.write_text("done\n")
    try:
        done = subprocess.run([sys.executable, "-m", "kerasflow", "notify-run", "--name", "slow", "--log",
                               str(log), "--exit", "0"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=_env(KERASFLOW_NOTIFY=url, KERASFLOW_NOTIFY_TIMEOUT="2"))
    finally:
        silent.close()
    assert done.returncode == 0, done.stderr
    assert "warning: notify: the notifier did not answer within 2 s; the run goes on" in done.stderr
