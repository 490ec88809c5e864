"""The GPU box as a shared queue: `make run` waits for its devices in first-come order, for every user.

Why: a slot used to be a lock file named by the exact GPUS string in each checkout's logs/, so `GPUS=0`
and `GPUS=all` both ran on GPU 0 and two users' checkouts never excluded each other; a busy slot was
refused and people polled by hand. Now:

- one machine-wide folder (KERASFLOW_QUEUE_DIR, default /tmp/kerasflow-queue, sticky and world-writable
  like /tmp) holds a lock file per device (`gpu0`, `gpu1`, ... and, with CPU_SLOTS=N on a box without
  GPUs, `cpu0` ... `cpu{N-1}`) and a ticket per run in line;
- a ticket is a small JSON file whose owner holds flock(2) on it: it is live exactly while its process
  lives (the kernel drops the lock however the process dies), so a killed waiter leaves no stale place;
- a run may start when none of its devices is wanted by an earlier live waiter and all are free (a CPU
  run: one of the pool's slots); it takes its devices' locks in a fixed order (no two runs deadlock),
  marks its ticket running and execs the driver, which inherits the locks until the run ends.

Data written by other users is untrusted: tickets are read bounded, parsed as JSON and checked, never
executed. Standard library only (the light host env runs this).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kerasflow.errors import UserError

# Lazy imports: mlflow, in `progress` only (seconds to load; the table without running runs needs none).

DIR_ENV = "KERASFLOW_QUEUE_DIR"
DEFAULT_DIR = "/tmp/kerasflow-queue"  # noqa: S108 - shared on purpose: every user of the box queues here
TICKET_MAX = 4096  # bytes read of a ticket another user may have written
NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
DEVICE = re.compile(r"(gpu|cpu)[0-9]{1,4}")
TICKET_FILE = re.compile(r"t-([0-9]{20})-([0-9]{1,10})-([0-9]{1,10})")
WAITING, RUNNING = "waiting", "running"


@dataclass
class Ticket:
    """One run in line or running: what `make queue` shows. `devices` are those it needs (GPU runs) or
    the pool it takes one of (CPU runs, `pool="cpu"`); once running, the ones it holds."""

    name: str
    user: str
    devices: list[str]
    pool: str = "gpu"
    state: str = WAITING
    log: str = ""
    session: str = ""
    tracking: str = ""
    queued: float = 0.0
    started: float = 0.0
    pid: int = 0
    uid: int = 0
    path: Path | None = field(default=None, compare=False)

    def record(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        return json.dumps(data, sort_keys=True) + "\n"


def user_name() -> str:
    """Who this is, for the table: the login name, or uid-N where none is known (a container user)."""
    with contextlib.suppress(KeyError, OSError):
        return pwd.getpwuid(os.getuid()).pw_name
    return f"uid-{os.getuid()}"


def folder() -> Path:
    """The machine-wide queue folder, created sticky and world-writable (as /tmp is) by its first user;
    one that another user could have planted otherwise is refused."""
    path = Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)
    if not path.exists():  # made whole (1777) under a temp name, then renamed: never seen half-made
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        temp.chmod(0o1777)
        try:
            temp.rename(path)
        except OSError:  # another user's first run made it meanwhile
            temp.rmdir()
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"the queue folder {path} is not a folder: remove it, or set {DIR_ENV}=another path")
    if info.st_uid != os.getuid() and info.st_mode & 0o1777 != 0o1777:
        raise UserError(f"the queue folder {path} belongs to uid {info.st_uid} and is not shared (mode "
                        f"{info.st_mode & 0o7777:o}): ask them to `chmod 1777 {path}`, or set {DIR_ENV}")
    return path


def gpu_indexes() -> list[str]:
    """The GPUs `nvidia-smi` lists (their indexes), or none on a box without."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def wanted(gpu: str, gpus: str, cpu_slots: str) -> tuple[str, list[str]]:
    """What a run with these GPU / GPUS / CPU_SLOTS settings waits for: ("gpu", the devices it needs all
    of), ("cpu", the pool it takes one of), or ("", []) for a CPU run on a box without CPU_SLOTS (no line:
    runs share the CPU as before)."""
    listed = gpu_indexes() if gpu != "off" else []
    if listed:
        if gpus in ("", "all"):
            return "gpu", [f"gpu{i}" for i in listed]
        asked = [g.strip() for g in gpus.split(",") if g.strip()]
        unknown = [g for g in asked if g not in listed]
        if unknown or not asked:
            raise UserError(f"GPUS={gpus} names GPU {', '.join(unknown) or '?'}, but nvidia-smi lists "
                            f"{', '.join(listed)}: set GPUS=all or indexes from that list")
        return "gpu", [f"gpu{i}" for i in sorted(set(asked), key=int)]
    if not cpu_slots.strip():
        return "", []
    if not cpu_slots.strip().isdigit() or not 1 <= int(cpu_slots) <= 256:
        raise UserError(f"CPU_SLOTS={cpu_slots} is not a number of runs at once (1-256): e.g. CPU_SLOTS=1")
    return "cpu", [f"cpu{i}" for i in range(int(cpu_slots))]


def _held(path: Path) -> bool:
    """Someone holds flock on `path` (its owner process lives)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    finally:
        os.close(fd)
    return False


def _read(path: Path) -> Ticket | None:
    """A ticket file, checked: bounded, JSON, known fields of the right types, names that are names."""
    match = TICKET_FILE.fullmatch(path.name)
    if not match:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(TICKET_MAX))
        ticket = Ticket(**{k: data[k] for k in Ticket.__dataclass_fields__ if k in data and k != "path"})
    except (OSError, ValueError, TypeError):
        return None
    strings = (ticket.name, ticket.user, ticket.pool, ticket.state, ticket.log, ticket.session,
               ticket.tracking)
    if (not all(isinstance(s, str) and len(s) <= 1024 for s in strings) or not NAME.fullmatch(ticket.name)
            or not isinstance(ticket.devices, list) or len(ticket.devices) > 256
            or not all(isinstance(d, str) and DEVICE.fullmatch(d) for d in ticket.devices)
            or ticket.state not in (WAITING, RUNNING) or ticket.pool not in ("gpu", "cpu")
            or not all(isinstance(x, int | float) for x in (ticket.queued, ticket.started))):
        return None
    ticket.pid, ticket.uid = int(match[3]), int(match[2])  # from the file name its owner made
    ticket.path = path
    return ticket


def tickets(where: Path) -> list[Ticket]:
    """The live tickets, first come first; a ticket being rewritten is read again once."""
    found = []
    for path in sorted(where.glob("t-*")):
        if not _held(path):
            match = TICKET_FILE.fullmatch(path.name)
            if match and int(match[2]) == os.getuid():  # our own, of a run that ended: tidy it away
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        ticket = _read(path)
        if ticket is None:  # caught mid-rewrite by its owner: once more
            time.sleep(0.05)
            ticket = _read(path)
        if ticket is not None:
            found.append(ticket)
    return found


def place(me: Ticket, line: list[Ticket]) -> int:
    """1 + the live waiters before `me` that want any of its devices (0: it is running)."""
    if me.state == RUNNING:
        return 0
    ahead = [t for t in line if t.state == WAITING and t.path and me.path and t.path.name < me.path.name
             and set(t.devices) & set(me.devices)]
    return 1 + len(ahead)


def _lock_path(where: Path, device: str) -> Path:
    path = where / f"{device}.lock"
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.fchmod(fd, 0o644)  # readable by all: another user's flock needs only a read-only open
            os.close(fd)
    return path


def _try_take(where: Path, devices: list[str]) -> list[int] | None:
    """flock every device of `devices` without waiting, in sorted order; all or nothing."""
    fds: list[int] = []
    for device in sorted(devices, key=lambda d: (d[:3], int(d[3:]))):
        fd = os.open(_lock_path(where, device), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            for held in fds:
                os.close(held)
            return None
        fds.append(fd)
    return fds


def turn(where: Path, me: Ticket, line: list[Ticket]) -> list[int] | None:
    """The device locks when it is `me`'s turn and they are free, else None."""
    if place(me, line) != 1:
        return None
    if me.pool == "cpu":
        for device in me.devices:
            fds = _try_take(where, [device])
            if fds:
                me.devices = [device]
                return fds
        return None
    return _try_take(where, me.devices)


def holders(where: Path, devices: list[str], line: list[Ticket]) -> str:
    """Who runs on these devices, for a refusal or a waiting line: `det (ana, 12 min)`."""
    now = time.time()
    busy = [f"{t.name} ({t.user}, {int((now - t.started) // 60)} min)" for t in line
            if t.state == RUNNING and set(t.devices) & set(devices)]
    return ", ".join(busy) or "a run that is ending"


class Line:
    """This process's ticket: made live (flocked) before anyone can see it, rewritten in place."""

    def __init__(self, where: Path, ticket: Ticket) -> None:
        self.where = where
        self.ticket = ticket
        ticket.pid, ticket.uid, ticket.queued = os.getpid(), os.getuid(), time.time()
        name = f"t-{time.time_ns():020d}-{ticket.uid}-{ticket.pid}"
        temp = where / f".{name}"
        self.fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o644)
        os.fchmod(self.fd, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self._write()
        os.rename(temp, where / name)
        ticket.path = where / name

    def _write(self) -> None:
        data = self.ticket.record().encode()
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, data)

    def running(self) -> None:
        self.ticket.state, self.ticket.started = RUNNING, time.time()
        self._write()

    def leave(self) -> None:
        with contextlib.suppress(OSError):
            if self.ticket.path:
                self.ticket.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def fds(self) -> list[int]:
        return [self.fd]


def wait(me: Ticket, *, no_wait: bool = False, poll: float = 2.0,
         say: Callable[[str], None] = print) -> tuple[Line, list[int]]:
    """Stand in line until it is this run's turn; returns the ticket (now running) and the device locks,
    both to be inherited by the run. `no_wait`: refuse instead of waiting (one line)."""
    where = folder()
    ticket_line = Line(where, me)
    last = None
    try:
        while True:
            line = tickets(where)
            mine = next((t for t in line if t.path == me.path), me)
            fds = turn(where, mine, line)
            if fds is not None:
                me.devices = mine.devices
                ticket_line.running()
                return ticket_line, fds
            spot = place(mine, line)
            if no_wait:
                raise UserError(f"{', '.join(me.devices)} busy with {holders(where, me.devices, line)}"
                                f"{f' ({spot - 1} waiting before this run)' if spot > 1 else ''}: wait in "
                                "line (without --no-wait), or see `make queue`")
            if spot != last:
                say(f"queue: waiting for {', '.join(me.devices) if me.pool == 'gpu' else 'a CPU slot'}, "
                    f"place {spot} in line (now running: {holders(where, me.devices, line)}); "
                    f"`make queue` shows the line, `make cancel NAME={me.name}` leaves it")
                last = spot
            time.sleep(poll)
    except BaseException:
        ticket_line.leave()
        raise


def find(name: str) -> Ticket | None:
    """The live ticket of the run named `name` of this user (root: of anyone)."""
    for ticket in tickets(folder()):
        if ticket.name == name and (ticket.uid == os.getuid() or os.getuid() == 0):
            return ticket
    return None


@dataclass(frozen=True)
class Row:
    """One line of `make queue`."""

    name: str
    user: str
    slot: str
    state: str
    place: int
    elapsed: float
    epoch: str
    metric: str
    log: str


def rows(line: list[Ticket], progress: dict[str, tuple[str, str]] | None = None) -> list[Row]:
    """The table: running first (by start), then waiting by place."""
    now = time.time()
    progress = progress or {}
    out = []
    for t in line:
        since = t.started if t.state == RUNNING else t.queued
        epoch, metric = progress.get(t.name, ("", ""))
        one_of = t.pool == "cpu" and t.state == WAITING and len(t.devices) > 1  # any one of cpu0-N
        slot = f"{t.devices[0]}-{len(t.devices) - 1}" if one_of else ",".join(t.devices)
        out.append(Row(t.name, t.user, slot, t.state, place(t, line), now - since, epoch, metric, t.log))
    return sorted(out, key=lambda r: (r.state != RUNNING, r.place, -r.elapsed))


def elapsed(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def table(found: list[Row]) -> str:
    if not found:
        return "queue: no run is running or waiting on this machine"
    head = ("NAME", "USER", "SLOT", "STATE", "PLACE", "ELAPSED", "EPOCH", "VAL METRIC", "LOG")
    body = [(r.name, r.user, r.slot, r.state, str(r.place or "-"), elapsed(r.elapsed), r.epoch or "-",
             r.metric or "-", r.log) for r in found]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in [head, *body]]
    return "\n".join(lines)


RUN_ID_IN_LOG = re.compile(rb"in run with ID '([0-9a-f]{32})'")
LOG_HEAD = 1 << 20  # bytes of a run's log read to find its MLflow run id


def run_id_in_log(log: str) -> str | None:
    """The MLflow run id `mlflow run` names in the run's log (`=== Running command ... in run with ID`)."""
    try:
        with open(log, "rb") as f:
            match = RUN_ID_IN_LOG.search(f.read(LOG_HEAD))
    except OSError:
        return None
    return match[1].decode() if match else None


def progress(line: list[Ticket]) -> dict[str, tuple[str, str]]:
    """Current epoch and last validation metric of each running run, read from its MLflow server (a short
    timeout, no retries: a server that does not answer shows '-')."""
    running = [(t, run_id_in_log(t.log)) for t in line
               if t.state == RUNNING and t.tracking.startswith("http")]
    running = [(t, rid) for t, rid in running if rid]
    if not running:
        return {}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    import mlflow

    out = {}
    for ticket, run_id in running:
        with contextlib.suppress(Exception):
            client = mlflow.MlflowClient(tracking_uri=ticket.tracking)
            metrics = client.get_run(run_id).data.metrics
            key = next((k for k in ("val_accuracy", "val_auc", "val_loss") if k in metrics),
                       next((k for k in sorted(metrics) if k.startswith("val_")), None))
            if key:
                steps = client.get_metric_history(run_id, key)
                epoch = max(m.step for m in steps) + 1 if steps else 0
                out[ticket.name] = (str(epoch), f"{key}={metrics[key]:.4f}")
    return out


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def cancel(name: str, timeout: float = 180) -> str:
    """A waiting run leaves the line; a running one is stopped (its driver's SIGTERM path: the container
    stops and the MLflow run ends KILLED). Returns what was done."""
    ticket = find(name)
    if ticket is None:
        others = [t.name for t in tickets(folder()) if t.uid == os.getuid()]
        raise UserError(f"no run named {name!r} of yours is running or waiting on this machine"
                        f"{' (yours: ' + ', '.join(others) + ')' if others else ''}: see `make queue`")
    was = ticket.state
    _terminate(ticket.pid)
    deadline = time.monotonic() + timeout
    while ticket.path and _held(ticket.path) and time.monotonic() < deadline:
        time.sleep(0.3)
    if ticket.path and _held(ticket.path):
        raise UserError(f"run {name!r} (pid {ticket.pid}) did not stop within {timeout:.0f} s: look at "
                        f"{ticket.log or 'its log'}")
    if was == WAITING:
        return f"cancel: {name} left the line"
    return f"cancel: {name} stopped (its MLflow run ends KILLED; log: {ticket.log})"

