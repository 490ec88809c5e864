"""The machine's line for `make run` (kerasflow/runqueue.py), with real processes, real flock(2) and two
real UIDs: `kerasflow queue-wait` is what the driver execs to wait, `queue` and `cancel` what users run.
The run itself is stood in for by a short shell command here; test_engine_make_run queues real
`make run`s on the engine."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT, assert_user_error

from kerasflow import runqueue
from kerasflow.errors import UserError

OTHER_UID = 4242  # a second user of the box, with no passwd entry (as in a container)


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch):
    """A queue folder and a scratch folder every UID can reach (pytest's tmp_path is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="kf-queue-", dir="/tmp"))
    top.chmod(0o755)
    work = top / "work"
    work.mkdir()
    work.chmod(0o1777)
    monkeypatch.setenv(runqueue.DIR_ENV, str(top / "line"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _waiter(box: Path, name: str, run: str, *, uid: int | None = None,  # noqa: PLR0913
            env: dict[str, str] | None = None, no_wait: bool = False) -> subprocess.Popen[str]:
    """`make run`'s wait, then `run` (a shell line) in place of the driver."""
    work = box / "work"
    cmd = [sys.executable, "-m", "kerasflow", "queue-wait", "--name", name,
           "--log", str(work / f"{name}.log"), "--status", str(work / f"{name}.status"),
           *(["--no-wait"] if no_wait else []), "--", "bash", "-c", run]
    if uid is not None:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    full = {**os.environ, "GPU": "off", "CPU_SLOTS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _until(what, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _kerasflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kerasflow", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def _line() -> list[tuple[str, str, int]]:
    found = runqueue.tickets(runqueue.folder())
    return [(t.name, t.state, runqueue.place(t, found)) for t in found]


@pytest.mark.slow  # a second UID must reach this checkout: `make test`'s, not the quick loop's private clone
def test_two_users_share_one_line_in_order_and_a_killed_or_cancelled_waiter_leaves_no_place(box):
    """CPU_SLOTS=1: root's run holds the slot; another UID's run and two more of root's wait in the order
    they came; `make queue` shows 1 running and places 1-3; `make cancel` of one takes it out; a waiter
    SIGKILLed leaves no stale place; the others run one after the other, the other user's included."""
    if os.geteuid() != 0:
        pytest.skip("a second UID needs root to start (CI runs as root)")
    reach = subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
                            sys.executable, "-c", "import kerasflow"], cwd="/", capture_output=True,
                           text=True, env=os.environ, timeout=120)
    assert reach.returncode == 0, f"uid {OTHER_UID} cannot run this checkout's Python: {reach.stderr[-500:]}"
    work = box / "work"
    release = work / "release-first"
    first = _waiter(box, "first",
                    f"date +%s.%N > {work}/first.start; until [ -e {release} ]; do sleep 0.1; done")
    _until(lambda: (work / "first.start").exists())
    theirs = _waiter(box, "theirs", f"date +%s.%N > {work}/theirs.start; sleep 1", uid=OTHER_UID)
    _until(lambda: len(_line()) == 2)
    gone = _waiter(box, "gone", "echo never")
    _until(lambda: len(_line()) == 3)
    later = _waiter(box, "later", f"date +%s.%N > {work}/later.start")
    _until(lambda: len(_line()) == 4)
    assert _line() == [("first", "running", 0), ("theirs", "waiting", 1), ("gone", "waiting", 2),
                       ("later", "waiting", 3)]

    shown = _kerasflow("queue")
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.splitlines()
    assert rows[0].split() == ["NAME", "USER", "SLOT", "STATE", "PLACE", "ELAPSED", "EPOCH", "VAL", "METRIC",
                               "MLFLOW", "RUN", "LOG"]
    assert rows[1].split()[:5] == ["first", "root", "cpu0", "running", "-"]
    assert rows[2].split()[:4] == ["theirs", f"uid-{OTHER_UID}", "cpu0", "waiting"]  # the one CPU slot
    assert [r.split()[0] for r in rows[1:]] == ["first", "theirs", "gone", "later"]

    # another user's run is not theirs to cancel (root's may be: an admin); ours is, and the ones behind
    # it move up
    as_other = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups"]
    theirs_cancel = subprocess.run([*as_other, sys.executable, "-m", "kerasflow", "cancel", "later"],
                                   cwd=ROOT, capture_output=True, text=True, env=os.environ, timeout=120)
    assert_user_error(theirs_cancel, "no run named 'later' of yours", "(yours: theirs)", "make queue")
    cancelled = _kerasflow("cancel", "later")
    assert cancelled.returncode == 0 and "later left the line" in cancelled.stdout, cancelled.stderr
    assert later.wait(timeout=30) == 143 and (work / "later.status").read_text().strip() == "143"
    assert "left the line" in (work / "later.log").read_text()
    gone.kill()  # SIGKILL: no handler runs, the kernel drops its ticket's lock
    gone.wait(timeout=30)
    _until(lambda: [n for n, _, _ in _line()] == ["first", "theirs"])

    release.touch()
    assert first.wait(timeout=60) == 0
    assert theirs.wait(timeout=60) == 0, theirs.stderr.read()
    assert float((work / "theirs.start").read_text()) > 0 and not (work / "later.start").exists()
    assert "theirs starts on cpu0" in (work / "theirs.log").read_text()
    _until(lambda: _line() == [])
    assert _kerasflow("queue").stdout.strip() == "queue: no run is running or waiting on this machine"


def test_gpus_lock_per_device_in_a_fixed_order_first_come_first_served(box, monkeypatch):
    """A stand-in nvidia-smi lists 2 GPUs: GPUS=0 holds gpu0, so GPUS=all waits; GPUS=1, later, waits
    behind it (gpu1 is free, but the earlier run wants it); GPUS=all then runs alone, then GPUS=1."""
    fake = box / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "GPU": "auto"}
    work = box / "work"
    gate = work / "gate"
    stamp = "date +%s.%N > {work}/{name}.start; sleep {sleep}; date +%s.%N > {work}/{name}.end"
    zero = _waiter(box, "zero", f"{stamp.format(work=work, name='zero', sleep=0)}; until [ -e {gate} ]; do "
                   "sleep 0.1; done", env={**env, "GPUS": "0"})
    _until(lambda: (work / "zero.start").exists())
    every = _waiter(box, "every", stamp.format(work=work, name="every", sleep=1), env={**env, "GPUS": "all"})
    _until(lambda: len(_line()) == 2)
    one = _waiter(box, "one", stamp.format(work=work, name="one", sleep=0), env={**env, "GPUS": "1"})
    _until(lambda: len(_line()) == 3)
    time.sleep(3)  # gpu1 is free all along: "one" must still wait for "every", which came first
    assert _line() == [("zero", "running", 0), ("every", "waiting", 1), ("one", "waiting", 2)]
    busy = _waiter(box, "busy", "true", env={**env, "GPUS": "0"}, no_wait=True)
    assert busy.wait(timeout=60) == 2
    assert "gpu0 busy with zero (root, 0 min)" in busy.stderr.read()
    gate.touch()
    for proc in (zero, every, one):
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    times = {n: float((work / f"{n}.start").read_text()) for n in ("zero", "every", "one")}
    assert times["zero"] < times["every"] < times["one"]
    assert float((work / "every.end").read_text()) <= times["one"]
    assert "every starts on gpu0, gpu1" in (work / "every.log").read_text()

    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(UserError, match=r"GPUS=3 names GPU 3, but nvidia-smi lists 0, 1"):
        runqueue.wanted("auto", "3", "")
    assert runqueue.wanted("auto", "1,0", "") == ("gpu", ["gpu0", "gpu1"])
    assert runqueue.wanted("off", "all", "") == ("", [])  # a CPU run without CPU_SLOTS: no line
    with pytest.raises(UserError, match="CPU_SLOTS=many is not a number"):
        runqueue.wanted("off", "all", "many")


def test_tickets_other_users_write_are_checked_never_trusted(box, monkeypatch):
    """The folder is shared: a ticket nobody holds is stale, and a held one that is not our JSON
    (oversized, wrong types, a name that is no name) is skipped, not shown or acted on."""
    import fcntl

    where = runqueue.folder()
    assert where.stat().st_mode & 0o7777 == 0o1777
    held = []
    bodies = [b"{" * 10_000, {"name": "$(reboot)", "user": "x", "devices": ["cpu0"]},
              {"name": "ok", "user": "x", "devices": ["../etc"]},
              {"name": "fine", "user": "x", "devices": ["cpu0"]}]
    for i, body in enumerate(bodies):
        path = where / f"t-{i:020d}-0-{os.getpid()}"
        path.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    (where / f"t-{9:020d}-0-1").write_text(json.dumps({"name": "stale", "user": "x", "devices": ["cpu0"]}))
    assert [t.name for t in runqueue.tickets(where)] == ["fine"]
    for fd in held:
        os.close(fd)
    assert runqueue.tickets(where) == []
    (where.parent / "plain").mkdir(mode=0o755)
    os.chown(where.parent / "plain", OTHER_UID, OTHER_UID)
    monkeypatch.setenv(runqueue.DIR_ENV, str(where.parent / "plain"))
    with pytest.raises(UserError, match=f"belongs to uid {OTHER_UID} and is not shared"):
        runqueue.folder()


# --- another user of the box turns the shared folder against you (issue: the shared GPU box) ------------
# Each attack below worked on the queue before tickets were read as untrusted files: the owner came from
# the file's name, the order from its name, the log path and server URL were opened as the reader.

ATTACKER, VICTIM = 4242, 4243  # two more UIDs of the box, with no passwd entry (as in a container)

PLANT = r"""
import fcntl, json, os, sys
where, specs = sys.argv[1], json.loads(sys.argv[2])
held = []
for spec in specs:
    path = os.path.join(where, spec["file"])
    if spec.get("kind") == "fifo":
        os.mkfifo(path, 0o644)
    elif spec.get("kind") == "symlink":
        os.symlink(spec["target"], path)
    else:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, spec["body"].encode())
        held.append(fd)
print("ready", flush=True)
sys.stdin.read()
"""


def _as(uid: int, *cmd: str) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]


def _plant(uid: int, where: Path, specs: list[dict]) -> subprocess.Popen[str]:
    """Files another user puts in the queue folder, their tickets held live (flocked) until closed."""
    proc = subprocess.Popen(_as(uid, sys.executable, "-c", PLANT, str(where), json.dumps(specs)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _ticket(name: str, **fields: object) -> str:
    return json.dumps({"name": name, "user": "root", "devices": ["cpu0"], "pool": "cpu", "state": "waiting",
                       **fields})


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("other UIDs need root to start (CI runs as root)")


@pytest.mark.slow  # other UIDs must reach this checkout: `make test`'s, not the quick loop's private clone
def test_a_planted_ticket_never_makes_cancel_signal_a_process_the_planter_picked(box):
    """The attacker plants `t-<early>-<victim uid>-<pid of the victim's other process>` named like the
    victim's run: before, the victim's `make cancel` SIGTERMed that process and the run kept waiting.
    Now the ticket is the attacker's (its file's owner), so the victim's own run leaves the line and the
    other process lives; root's cancel, which may stop anyone's run, signals only the process the kernel
    says holds a ticket, of that ticket's owner."""
    _need_root()
    where = runqueue.folder()
    work = box / "work"
    precious = subprocess.Popen(_as(VICTIM, "sleep", "300"))
    root_precious = subprocess.Popen(["sleep", "300"])
    holder = _waiter(box, "holder", f"until [ -e {work}/go ]; do sleep 0.1; done")
    _until(lambda: [t.state for t in runqueue.tickets(where)] == ["running"])
    victim = _waiter(box, "victim", "echo never", uid=VICTIM)
    _until(lambda: len(runqueue.tickets(where)) == 2)
    planted = _plant(ATTACKER, where, [
        {"file": f"t-{1:020d}-{VICTIM}-{precious.pid}", "body": _ticket("victim")},
        {"file": f"t-{2:020d}-0-{root_precious.pid}", "body": _ticket("holder", state="running")},
    ])
    try:
        cancel = subprocess.run(_as(VICTIM, sys.executable, "-m", "kerasflow", "cancel", "victim"), cwd=ROOT,
                                capture_output=True, text=True, env=os.environ, timeout=120)
        assert cancel.returncode == 0 and "victim left the line" in cancel.stdout, cancel.stderr
        assert victim.wait(timeout=30) == 143
        assert precious.poll() is None, "the victim's other process was signalled"
        # root's own run first; the planted 'holder' is the attacker's, and its process is theirs
        by_root = _kerasflow("cancel", "holder")
        assert by_root.returncode == 0 and "holder stopped" in by_root.stdout, by_root.stderr
        assert holder.wait(timeout=30) != 0 and root_precious.poll() is None
    finally:
        planted.kill()
        for proc in (precious, root_precious, holder, victim):
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_make_queue_opens_no_path_or_url_another_user_wrote_and_prints_no_control_characters(box):
    """A planted running ticket names a FIFO as its log (make queue hung), a log only we can read (its
    run id went to their server), and their server as `tracking` (our MLFLOW_TRACKING_USERNAME/PASSWORD
    went with it as Basic auth); its fields hold escape sequences (cleared the screen, set the window
    title, forged rows) and claim to be root. Now: nothing is opened or connected, the row is shown
    cleaned and under the file owner's uid."""
    _need_root()
    where = runqueue.folder()
    fifo = box / "work" / "log.fifo"
    os.mkfifo(fifo)
    private = box / "private.log"
    private.write_text("=== Running command in run with ID '0123456789abcdef0123456789abcdef' ===\n")
    private.chmod(0o600)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[Hfake  root  gpu0  running\n"
    planted = _plant(ATTACKER, where, [
        {"file": f"t-{1:020d}-0-1", "body": _ticket("fifo", state="running", log=str(fifo), tracking=url,
                                                      user=evil, session=evil)},
        {"file": f"t-{2:020d}-0-1", "body": _ticket("private", state="running", log=str(private),
                                                      tracking=url)},
        {"file": f"t-{3:020d}-0-1", "body": _ticket("shown", log=evil)},
    ])
    try:
        login = {"MLFLOW_TRACKING_USERNAME": "me", "MLFLOW_TRACKING_PASSWORD": "s3cret"}
        shown = _kerasflow("queue", env=login)
        assert shown.returncode == 0, shown.stderr
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected to their URL
        assert not any(c in shown.stdout for c in "\x1b\x07\r"), repr(shown.stdout)
        rows = shown.stdout.splitlines()
        assert len(rows) == 4, rows  # the header and three rows: no forged row
        assert {r.split()[0] for r in rows[1:]} == {"fifo", "private", "shown"}
        assert all(r.split()[1] == f"uid-{ATTACKER}" for r in rows[1:]), rows  # not "root"
    finally:
        planted.kill()
        listener.close()


@pytest.mark.slow
def test_malformed_tickets_are_skipped_with_one_warning_and_a_forged_time_buys_no_place(box):
    """Planted, held live: a ticket with "started": NaN (crashed make queue and every waiter), one over
    the size limit, a FIFO and a symlink named as tickets, `cpu0.lock` as a FIFO and `gpu0.lock` as a
    symlink (hung or crashed waiters), and a waiting ticket named with an early time, planted after our
    waiter (it jumped the line). Now make queue shows our runs and one warning per bad file; our waiter
    is first and runs."""
    _need_root()
    where = runqueue.folder()
    work = box / "work"
    first = _waiter(box, "first", f"until [ -e {work}/go ]; do sleep 0.1; done")
    _until(lambda: [t.state for t in runqueue.tickets(where)] == ["running"])
    ours = _waiter(box, "ours", f"touch {work}/ours.ran")
    _until(lambda: len(runqueue.tickets(where)) == 2)
    time.sleep(0.05)
    planted = _plant(ATTACKER, where, [
        {"file": f"t-{1:020d}-0-1", "body": '{"name": "nan", "user": "x", "devices": ["cpu0"], '
                                            '"started": NaN, "state": "running", "pool": "cpu"}'},
        {"file": f"t-{2:020d}-0-1", "body": _ticket("huge", log="x" * 5000)},
        {"file": f"t-{3:020d}-0-1", "kind": "fifo"},
        {"file": f"t-{4:020d}-0-1", "kind": "symlink", "target": "/etc/shadow"},
        {"file": "cpu0.lock", "kind": "fifo"},
        {"file": "gpu0.lock", "kind": "symlink", "target": "/etc/shadow"},
        {"file": f"t-{5:020d}-0-1", "body": _ticket("jumper")},
    ])
    try:
        shown = _kerasflow("queue")
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        warnings = [w for w in shown.stderr.splitlines() if w.startswith("warning: queue: skipping")]
        assert len(warnings) == 4, shown.stderr
        assert any("NaN is not a number" in w for w in warnings), warnings
        assert any("bytes" in w for w in warnings), warnings
        rows = {r.split()[0]: r.split() for r in shown.stdout.splitlines()[1:]}
        assert set(rows) == {"first", "ours", "jumper"}, shown.stdout
        assert rows["ours"][4] == "1" and rows["jumper"][4] == "2"  # made later: behind us, whatever its name
        (work / "go").touch()
        assert first.wait(timeout=60) == 0
        assert ours.wait(timeout=60) == 0, ours.stderr.read()
        assert (work / "ours.ran").exists()
        assert "Traceback" not in ours.stderr.read()
    finally:
        planted.kill()
        for proc in (first, ours):
            proc.kill()
