"""The GPU box as a shared queue: `make run` waits for its devices in first-come order, for every user.

Why: a slot used to be a lock file named by the exact GPUS string in each checkout's logs/, so `GPUS=0`
and `GPUS=all` both ran on GPU 0 and two users' checkouts never excluded each other; a busy slot was
refused and people polled by hand. Now:

- one machine-wide folder (KERASFLOW_QUEUE_DIR, default /tmp/kerasflow-queue, sticky and world-writable
  like /tmp) holds a ticket per run in line or running: a small JSON file whose owner holds flock(2) on
  it, so it is live exactly while its process lives (the kernel drops the lock however the process dies);
- a device (`gpu0`, `gpu1`, ... and, with CPU_SLOTS=N on a box without GPUs, `cpu0` ... `cpu{N-1}`) is
  held by binding an abstract unix socket named after the folder and the device: the kernel gives the
  name to one process at a time, frees it when that process (and every child that inherited it) is gone,
  and no other user can unlink, replace or plant it, as they could a lock file in a shared folder;
- a run may start when none of its devices is wanted by an earlier live waiter and all are free (a CPU
  run: one of the pool's slots); it takes its devices in a fixed order (no two runs deadlock), marks
  its ticket running and starts the run (make run's `mlflow run`, or queue-wait's command), which
  inherits ticket and devices until it ends.

Another user of the box writes into the same folder, so a ticket is untrusted input (the threat model of
docs/gpu-server.md): read bounded, only as a regular file, parsed as JSON and checked, never executed.
What a ticket cannot say about itself comes from the kernel: its owner is the file's owner (not a name or
a field), its place in line is when it was made (its ctime, which no user can set back), and the process
`make cancel` signals is the one holding its lock (/proc/locks), checked to be the owner's and to be
older than the ticket. `make queue` opens no path and no URL another user wrote, and prints every field
cleaned of control characters and bounded. A malformed ticket is skipped with one warning, never a crash.
Standard library only (the light host env runs this).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import pwd
import re
import signal
import socket
import stat
import tempfile
import time
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kerasflow import box
from kerasflow.errors import UserError

# Lazy imports: mlflow, in `progress` only (seconds to load; the table without running runs needs none).

log = logging.getLogger(__name__)

DIR_ENV = "KERASFLOW_QUEUE_DIR"
DEFAULT_DIR = "/tmp/kerasflow-queue"  # noqa: S108 - shared on purpose: every user of the box queues here
TICKET_MAX = 4096  # bytes of a ticket another user may have written
FIELD_MAX = 160  # characters of one field shown in `make queue`
NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
DEVICE = re.compile(r"(gpu|cpu)[0-9]{1,4}")
RUN_ID = re.compile(r"[0-9a-f]{32}")
TICKET_FILE = re.compile(r"t-([0-9]{20})-([0-9]{1,10})-([0-9]{1,10})")
WAITING, RUNNING = "waiting", "running"


class Malformed(ValueError):
    """A file in the queue folder that is not a ticket we can use (why, for the one warning)."""


@dataclass
class Ticket:
    """One run in line or running: what `make queue` shows. `devices` are those it needs (GPU runs) or
    the pool it takes one of (CPU runs, `pool="cpu"`); once running, the ones it holds. Of a ticket read
    from the folder, `uid`, `user`, `since` and `order` come from the file (kernel), not from its text."""

    name: str
    user: str
    devices: list[str]
    pool: str = "gpu"
    state: str = WAITING
    log: str = ""
    session: str = ""
    tracking: str = ""
    run_id: str = ""
    queued: float = 0.0
    started: float = 0.0
    pid: int = 0
    uid: int = 0
    path: Path | None = field(default=None, compare=False)
    since: float = field(default=0.0, compare=False)
    order: tuple[int, str] = field(default=(0, ""), compare=False)

    def record(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k not in ("path", "since", "order")}
        return json.dumps(data, sort_keys=True) + "\n"


def user_name(uid: int | None = None) -> str:
    """A login name for the table: uid-N where none is known (a container user)."""
    uid = os.getuid() if uid is None else uid
    with contextlib.suppress(KeyError, OSError):
        return pwd.getpwuid(uid).pw_name
    return f"uid-{uid}"


def clean(text: object, limit: int = FIELD_MAX) -> str:
    """A field as it may be printed: control and format characters (escape sequences, bidi overrides)
    become '?', and it is cut to `limit` characters."""
    shown = "".join("?" if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in str(text))
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


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
    """The GPUs of this box (kerasflow/box.py), or none on a box without."""
    return box.gpu_indexes()


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


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read-only fd of `path` when it is a plain file (not a link, FIFO, socket or device: opening a
    FIFO would hang, a link could point anywhere); Malformed otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise Malformed(why) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise Malformed("not a regular file")
    return fd, info


def _held(fd: int) -> bool:
    """Someone holds flock on the file behind `fd` (its owner process lives)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _finite(value: str) -> float:
    raise ValueError(f"{value} is not a number a ticket may hold")


def _parse(fd: int, info: os.stat_result, path: Path) -> Ticket:
    """The ticket in `fd`, checked: bounded, JSON, known fields of the right types, names that are names;
    owner, times and order from the file itself."""
    if info.st_size > TICKET_MAX:
        raise Malformed(f"{info.st_size} bytes, more than a ticket's {TICKET_MAX}")
    try:
        data = json.loads(os.read(fd, TICKET_MAX + 1), parse_constant=_finite)
        if not isinstance(data, dict):
            raise Malformed("not a JSON object")
        known = {k: data[k] for k in Ticket.__dataclass_fields__ if k in data and k in _STORED}
        ticket = Ticket(**known)
    except (ValueError, TypeError) as exc:
        raise Malformed(f"not a ticket ({str(exc)[:80]})") from exc
    strings = (ticket.name, ticket.user, ticket.pool, ticket.state, ticket.log, ticket.session,
               ticket.tracking, ticket.run_id)
    if not all(isinstance(s, str) and len(s) <= 1024 for s in strings):
        raise Malformed("a field that is not a short string")
    if not NAME.fullmatch(ticket.name):
        raise Malformed("a name with characters a run name cannot have")
    if (not isinstance(ticket.devices, list) or not 0 < len(ticket.devices) <= 256
            or not all(isinstance(d, str) and DEVICE.fullmatch(d) for d in ticket.devices)):
        raise Malformed("devices that are not gpuN / cpuN")
    if ticket.state not in (WAITING, RUNNING) or ticket.pool not in ("gpu", "cpu"):
        raise Malformed("an unknown state or pool")
    if ticket.run_id and not RUN_ID.fullmatch(ticket.run_id):
        raise Malformed("a run id that is not an MLflow run id")
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in (ticket.queued, ticket.started)):
        raise Malformed("a time that is not a finite number")
    ticket.uid, ticket.user, ticket.pid = info.st_uid, user_name(info.st_uid), 0
    ticket.since, ticket.order, ticket.path = info.st_ctime, (info.st_ctime_ns, path.name), path
    return ticket


_STORED = {"name", "user", "devices", "pool", "state", "log", "session", "tracking", "run_id", "queued",
           "started"}


def _tidy(path: Path, info: os.stat_result) -> None:
    """Our own ticket of a run that ended (nobody holds it): removed, so the folder does not grow."""
    if info.st_uid == os.getuid():
        with contextlib.suppress(OSError):
            path.unlink()


def tickets(where: Path, warn: Callable[[str], None] | None = None) -> list[Ticket]:
    """The live tickets, first come first (by when each was made); a ticket caught mid-rewrite by its
    owner is read again once; a file that is no ticket is skipped with one warning (`warn`)."""
    warn = warn or (lambda text: log.warning(text))
    found = []
    for path in where.iterdir():
        if not TICKET_FILE.fullmatch(path.name):
            continue
        for attempt in range(3):
            try:
                fd, info = _open_regular(path)
            except Malformed as exc:
                if isinstance(exc.__cause__, FileNotFoundError):  # ended while we looked
                    break
                with contextlib.suppress(OSError):
                    owner = path.lstat().st_uid
                    warn(f"queue: skipping {clean(path.name)} (uid {owner}): {exc}")
                break
            try:
                if not _held(fd):
                    _tidy(path, info)
                    break
                found.append(_parse(fd, info, path))
                break
            except Malformed as exc:
                if attempt < 2:  # its owner truncates then writes: read again in a moment
                    time.sleep(0.05)
                    continue
                warn(f"queue: skipping {clean(path.name)} (uid {info.st_uid}): {exc}")
            finally:
                os.close(fd)
    return sorted(found, key=lambda t: t.order)


def place(me: Ticket, line: list[Ticket]) -> int:
    """1 + the live waiters before `me` (made earlier) that want any of its devices (0: it is running)."""
    if me.state == RUNNING:
        return 0
    ahead = [t for t in line
             if t.state == WAITING and t.order < me.order and set(t.devices) & set(me.devices)]
    return 1 + len(ahead)


def _device_address(where: Path, device: str) -> str:
    """The abstract socket name that stands for `device` in the line of `where` (one name per folder, so
    a test's or a second team's folder is a line of its own)."""
    key = hashlib.sha256(str(where.resolve()).encode()).hexdigest()[:24]
    return f"\0kerasflow-queue-{key}-{device}"


def _take(where: Path, device: str) -> int | None:
    """The device, held by this process (and whatever inherits the fd) until it ends; None when busy."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(_device_address(where, device))
    except OSError:
        sock.close()
        return None
    return sock.detach()


def _try_take(where: Path, devices: list[str]) -> list[int] | None:
    """Every device of `devices` without waiting, in sorted order; all or nothing."""
    fds: list[int] = []
    for device in sorted(devices, key=lambda d: (d[:3], int(d[3:]))):
        fd = _take(where, device)
        if fd is None:
            for held in fds:
                os.close(held)
            return None
        fds.append(fd)
    return fds


def turn(where: Path, me: Ticket, line: list[Ticket]) -> list[int] | None:
    """The devices' handles when it is `me`'s turn and they are free, else None."""
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
    busy = [f"{t.name} ({clean(t.user, 40)}, {int((now - t.since) // 60)} min)" for t in line
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


POLL_S = 0.5  # how often a waiting run looks at the line: the next run starts within this of a free slot
# (2 s made "the slot is free within the notifier's timeout plus a second" true half the time)


def wait(me: Ticket, *, no_wait: bool = False, poll: float = POLL_S,
         say: Callable[[str], None] = print) -> tuple[Line, list[int]]:
    """Stand in line until it is this run's turn; returns the ticket (now running) and the device
    handles, both to be inherited by the run. `no_wait`: refuse instead of waiting (one line)."""
    where = folder()
    ticket_line = Line(where, me)
    last = None
    warned: set[str] = set()

    def warn_once(text: str) -> None:
        if text not in warned:
            warned.add(text)
            say(f"warning: {text}")

    try:
        while True:
            line = tickets(where, warn_once)
            mine = next((t for t in line if t.path == me.path), None)
            if mine is None:  # our own ticket always reads; a moment's doubt is a rewrite in flight
                time.sleep(0.05)
                continue
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


def find(name: str, line: list[Ticket] | None = None) -> Ticket | None:
    """The live ticket of the run named `name` that this user owns (root: anyone's)."""
    line = tickets(folder()) if line is None else line
    for ticket in line:
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
    run_id: str
    log: str


def rows(line: list[Ticket], progress: dict[str, tuple[str, str]] | None = None) -> list[Row]:
    """The table: running first (by start), then waiting by place; every field cleaned."""
    now = time.time()
    progress = progress or {}
    out = []
    for t in line:
        epoch, metric = progress.get(_key(t), ("", ""))
        one_of = t.pool == "cpu" and t.state == WAITING and len(t.devices) > 1  # any one of cpu0-N
        slot = f"{t.devices[0]}-{len(t.devices) - 1}" if one_of else ",".join(t.devices)
        out.append(Row(t.name, clean(t.user, 40), clean(slot, 40), t.state, place(t, line), now - t.since,
                       clean(epoch, 12), clean(metric, 40), t.run_id, clean(t.log)))
    return sorted(out, key=lambda r: (r.state != RUNNING, r.place, -r.elapsed))


def elapsed(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def table(found: list[Row]) -> str:
    if not found:
        return "queue: no run is running or waiting on this machine"
    head = ("NAME", "USER", "SLOT", "STATE", "PLACE", "ELAPSED", "EPOCH", "VAL METRIC", "MLFLOW RUN", "LOG")
    body = [(r.name, r.user, r.slot, r.state, str(r.place or "-"), elapsed(r.elapsed), r.epoch or "-",
             r.metric or "-", r.run_id or "-", r.log) for r in found]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in [head, *body]]
    return "\n".join(lines)


def _key(ticket: Ticket) -> str:
    return ticket.path.name if ticket.path else ticket.name


def progress(line: list[Ticket]) -> dict[str, tuple[str, str]]:
    """Current epoch and last validation metric of each of THIS user's running runs, read from its MLflow
    server (a short timeout, no retries: a server that does not answer shows '-'). Another user's ticket
    names paths and URLs we must not open as us (with our credentials): their progress is not shown."""
    mine = [t for t in line if t.state == RUNNING and t.uid == os.getuid()
            and t.tracking.startswith(("http://", "https://"))]
    running = [(t, t.run_id) for t in mine if t.run_id]
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
                out[_key(ticket)] = (str(epoch), f"{key}={metrics[key]:.4f}")
    return out


def lock_holder(path: Path) -> int | None:
    """The pid holding flock on `path`, as the kernel keeps it (/proc/locks), not as any file says."""
    try:
        info = path.stat()
        with open("/proc/locks", "rb") as f:
            text = f.read(1 << 22).decode(errors="replace")
    except OSError:
        return None
    want = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in text.splitlines():
        fields = line.split()
        if "->" not in fields and len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            with contextlib.suppress(ValueError):
                return int(fields[4])
    return None


def _process(pid: int) -> tuple[int, float] | None:
    """(real uid, start time as epoch seconds) of a live process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), -1)
    return uid, boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def verified_pid(ticket: Ticket) -> int:
    """The process that is this ticket's run: it holds the ticket's lock (the kernel says so), runs as
    the ticket's owner and started before the ticket was made. Else one line, and nothing is signalled."""
    pid = lock_holder(ticket.path) if ticket.path else None
    proc = _process(pid) if pid and pid > 1 else None
    if pid is None or proc is None:
        raise UserError(f"run {ticket.name!r}: no live process holds its ticket (it is ending): see "
                        "`make queue` in a moment")
    uid, started = proc
    if uid != ticket.uid or started > ticket.since + 1:
        raise UserError(f"run {ticket.name!r}: the process holding its ticket (pid {pid}) is not the run "
                        f"its owner (uid {ticket.uid}) started; nothing was signalled: see `make queue`")
    return pid


def cancel(name: str, timeout: float = 180) -> str:
    """A waiting run leaves the line; a running one is stopped (its launcher's SIGTERM path: the container
    stops and the MLflow run ends KILLED). Returns what was done."""
    line = tickets(folder())
    ticket = find(name, line)
    if ticket is None:
        others = [t.name for t in line if t.uid == os.getuid()]
        raise UserError(f"no run named {name!r} of yours is running or waiting on this machine"
                        f"{' (yours: ' + ', '.join(others) + ')' if others else ''}: see `make queue`")
    was = ticket.state
    pid = verified_pid(ticket)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while lock_holder(ticket.path) == pid and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.3)
    if lock_holder(ticket.path) == pid:  # type: ignore[arg-type]
        raise UserError(f"run {name!r} (pid {pid}) did not stop within {timeout:.0f} s: look at "
                        f"{clean(ticket.log) or 'its log'}")
    if was == WAITING:
        return f"cancel: {name} left the line"
    return f"cancel: {name} stopped (its MLflow run ends KILLED; log: {clean(ticket.log)})"
