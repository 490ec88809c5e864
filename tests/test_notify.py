"""Run notifications (kerasflow/notify.py) through Apprise's JSON webhook to a loopback receiver the test
starts: one message per run, the right status and metrics, a failure's log tail without secrets, and a
receiver that never answers costs the run a few seconds at most."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import pytest
from helpers import ROOT, TINY, assert_user_error, set_args
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


class Drip:
    """A webhook that takes the request, then answers one byte every 2 s (for at most a minute): Apprise
    waits on it, and its thread pool kept the sending process alive after `send` gave up."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"json://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.accepted: list[float] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import time

        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            self.accepted.append(time.monotonic())
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 30:
                conn.sendall(bytes([byte]))
                time.sleep(2)

    def close(self) -> None:
        self.sock.close()


def test_a_webhook_that_drips_frees_the_run_and_its_slot_within_the_timeout_plus_a_second(tmp_path):
    """The run's process holds a CPU slot in the machine's line (as `make run`'s driver does) and sends
    its end message to a webhook that answers a byte every 2 s: with KERASFLOW_NOTIFY_TIMEOUT=2 the slot
    is free (the next run in line starts) within 2 + 1 s of the webhook taking the request. Before, the
    process lived on in Apprise's thread pool, and the slot with it."""
    import time

    drip = Drip()
    queue_dir = tmp_path / "line"
    log = tmp_path / "run.log"
    log.write_text("done\n")
    env = _env(KERASFLOW_NOTIFY=drip.url, KERASFLOW_NOTIFY_TIMEOUT="2", GPU="off", CPU_SLOTS="1",
               KERASFLOW_QUEUE_DIR=str(queue_dir))

    def waiter(name: str, *command: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "kerasflow", "queue-wait", "--name", name, "--log",
                                 str(tmp_path / f"{name}.log"), "--status", str(tmp_path / f"{name}.status"),
                                 "--", *command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = waiter("first", sys.executable, "-m", "kerasflow", "notify-run", "--name", "first", "--log",
                   str(log), "--exit", "0")
    try:
        deadline = time.monotonic() + 60
        first_log = tmp_path / "first.log"
        while not first_log.exists() or "starts on cpu0" not in first_log.read_text():
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        stamp = tmp_path / "second.started"
        write_time = f"import time, pathlib; pathlib.Path({str(stamp)!r}).write_text(repr(time.monotonic()))"
        second = waiter("second", sys.executable, "-c", write_time)
        assert second.wait(timeout=120) == 0, second.stderr.read()
        assert first.wait(timeout=30) == 0
        assert drip.accepted, "the webhook was never called"
        took = float(stamp.read_text()) - drip.accepted[0]
        assert took <= 3.0, f"the slot was free {took:.1f} s after the webhook took the request"
        assert "did not answer within 2 s" in first.stderr.read()
    finally:
        drip.close()
        first.kill()


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "5s", "0"])
def test_a_bad_notify_timeout_is_one_line_before_the_run_not_a_traceback_after_it(value, tmp_path):
    """`make track` checks KERASFLOW_NOTIFY_TIMEOUT before it trains (a FINISHED run ended in a traceback
    with inf or nan); a message sent anyway (make run's driver) warns and waits the default."""
    done = subprocess.run([sys.executable, "-m", "kerasflow", "track", *set_args([*TINY, "epochs=1"]),
                           "--store", str(tmp_path / "store")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=_env(KERASFLOW_NOTIFY="json://127.0.0.1:9/x",
                                                KERASFLOW_NOTIFY_TIMEOUT=value))
    assert_user_error(done, f"KERASFLOW_NOTIFY_TIMEOUT={value} is not a number of seconds",
                      "KERASFLOW_NOTIFY_TIMEOUT=5")
    assert not (tmp_path / "store").exists() or "RUNNING" not in _statuses(tmp_path / "store")


def _statuses(store) -> str:
    from helpers import client_for

    c = client_for(store)
    return " ".join(r.info.status for e in c.search_experiments() for r in c.search_runs([e.experiment_id]))


def test_redaction_hides_every_login_token_and_secret_variable(monkeypatch, tmp_path):
    """What a failed run's tail may hold, each case a leak before: two URLs with passwords in one word,
    tokens in variables outside a fixed list, a short password, Basic auth, and a tail cut mid-URL."""
    from kerasflow import notify

    for name, value in {"HF_TOKEN": "hf_tok3nvalue", "WANDB_API_KEY": "wandb0123456789",
                        "AWS_SESSION_TOKEN": "aws-session-xyz", "GITHUB_TOKEN": "ghp_abcdef123456",
                        "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "pw"}.items():
        monkeypatch.setenv(name, value)
    text = ("retry http://ana:first-secret@h1:5000,https://bob:second-secret@h2/x\n"
            "env: hf_tok3nvalue wandb0123456789 aws-session-xyz ghp_abcdef123456\n"
            "login as admin with pw refused (pwd=/tmp)\n"
            "Authorization: Basic YWRtaW46cHc=\n")
    shown = notify.redact(text)
    for secret in ("first-secret", "second-secret", "hf_tok3nvalue", "wandb0123456789", "aws-session-xyz",
                   "ghp_abcdef123456", "YWRtaW46cHc", " pw "):
        assert secret not in shown, (secret, shown)
    assert "ana:***@h1:5000" in shown and "bob:***@h2/x" in shown and "pwd=/tmp" in shown
    log = tmp_path / "run.log"
    log.write_text("x" * 100 + "\nlogin http://admin:Hunter2-long-pw@team:5000/ refused\nend\n")
    cut = len("x" * 100 + "\nlogin http://admin:Hunt")
    tail = notify.tail_of(str(log), limit=log.stat().st_size - cut)
    assert "er2-long-pw" not in notify.redact(tail) and tail.endswith("end")
