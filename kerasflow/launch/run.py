"""`make run` = `kerasflow run` = `./project_driver.bash`: train with `mlflow run` in the project image,
tracked by this store's MLflow server (or MLFLOW_TRACKING_URI), one step per function below.

    start(request)  ->  claim the name, check the box (seconds, in the foreground), then either detach
                        (tmux running this same command with --foreground) or run in the foreground:
                        the server, the MLflow run (created now, SCHEDULED while it waits), the machine's
                        line, the image, `mlflow run --run-id` in the container, a user's stop -> KILLED,
                        one notification.

Why the run is created before it waits: `make queue` shows its id at once, a run cancelled in line ends
KILLED instead of never having existed, and nothing has to read the id back out of `mlflow run`'s log.
`mlflow run` is handed the run by `--run-id` (its help calls the option internal; tests pin that it
works) and still writes the same run: `mlflow.projects.utils._create_run` makes it here, with the tags and
parameters `mlflow run` would have given it.

Why the container is stopped, not `mlflow run` killed: killed, it would leave the container training and
the run RUNNING. Stopped, `mlflow run` sees the container fail and ends; the run then ends KILLED.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TextIO
from urllib.parse import urlsplit

from kerasflow import box, notify, ports, preflight, runqueue, urlauth
from kerasflow.errors import Terminated, UserError
from kerasflow.launch import image as images
from kerasflow.storeops import server
from kerasflow.storeops.proxy_artifacts import proxy_experiment
from kerasflow.track import orphans, shell_line

# Lazy imports: mlflow, where the run is created, marked and ended (the checks and `--help` need none).
log = logging.getLogger(__name__)
NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
SHELL_SAFE = re.compile(shell_line.SHELL_SAFE)  # what `mlflow run`'s one `bash -c` line passes whole
DETACHED_ENV = "KF_DETACHED_ENV"  # a detached run's environment: a 0600 file, read once and removed
CHECKED_ENV = "KF_PREFLIGHT_DONE"  # the checks ran in the foreground already (the detached half)
SESSION_ENV = "KF_TMUX_SESSION"  # the prefix of each run's tmux session (tests use their own)
QUEUE_TAG = "kerasflow.queue"  # where the run is: waiting (its place), started, left the line
RUN_ENV = "KF_QUEUED_RUN"  # RUN_ID:EXPERIMENT_ID of the run a detached launch made in the foreground
RUN_GIVEN = re.compile(r"[0-9a-f]{32}:[0-9]{1,30}")
NOT_PASSED = ("TMUX", "TMUX_PANE", DETACHED_ENV)  # the outer tmux's, not the detached run's


@dataclasses.dataclass
class Request:
    """One `make run`, as the user gave it (paths made absolute by the command)."""

    root: Path
    store: Path
    logs: Path
    entry: str = "main"
    experiment: str = "kerasflow"
    name: str = ""
    mode: str = "auto"  # auto (tmux over SSH) | detach | foreground
    no_wait: bool = False
    port: int | None = None
    params: list[str] = dataclasses.field(default_factory=list)
    out: Callable[[str], None] = lambda _: None  # what the user reads on stdout (the command prints)
    err: Callable[[str], None] = lambda _: None  # notes before the run's log exists (stderr)

    @property
    def session(self) -> str:
        return f"{os.environ.get(SESSION_ENV, 'kerasflow')}-{self.name}"

    @property
    def log(self) -> Path:
        return self.logs / f"{self.name}.log"

    @property
    def status_file(self) -> Path:
        return self.logs / f"{self.name}.status"

    @property
    def container(self) -> str:
        return f"kerasflow-{self.name}"


class Console:
    """The run's lines: on stderr (the terminal, or the tmux pane) and appended to its log. A terminal
    that went away (a hangup) costs the screen copy only."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            with contextlib.suppress(OSError):
                fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.buffer.write(data)
                sys.stderr.flush()

    def say(self, text: str) -> None:
        self.write(f"{text}\n".encode(errors="replace"))


class Tolerant(io.TextIOBase):
    """sys.stdout/sys.stderr of a run whose terminal may go away (a hangup, a killed tmux session): a
    write that fails is dropped. Without it, the first print after the hangup (MLflow prints a line in
    `set_terminated`) raised EIO in the middle of ending the run, which stayed SCHEDULED or RUNNING."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    @property
    def buffer(self) -> object:
        return self.stream.buffer

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return self.stream.isatty()
        return False


def read_detached_env() -> None:
    """The detached half's environment, from the 0600 file its foreground half wrote (NUL-separated
    NAME=VALUE), never from tmux's command line: the tmux server keeps that argv for its life, and every
    user of the box reads it in `ps`. The file and its private folder are removed once read."""
    path = os.environ.pop(DETACHED_ENV, "")
    if not path:
        return
    with open(path, "rb") as f:
        entries = f.read().split(b"\0")
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    for entry in entries:
        name, sep, value = entry.decode(errors="surrogateescape").partition("=")
        if sep and name:
            os.environ[name] = value


# --- before anything starts ---------------------------------------------------------------------------


def claim_name(req: Request) -> bool:
    """An automatic name (ENTRY-TIME, then -2, -3...) is claimed by creating its log exclusively: two
    `make run` started in the same second are two runs. Returns whether the name was made here."""
    if req.name:
        if not NAME.fullmatch(req.name):
            raise UserError(f"--name '{req.name}' may only hold letters, digits, '.', '_' and '-'")
        return False
    base = f"{req.entry}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        req.name = base if n == 1 else f"{base}-{n}"
        try:
            os.close(os.open(req.log, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            continue
    raise UserError(f"1000 runs named {base}-N exist in {req.logs}: give one with --name")


def lock_name(req: Request) -> int:
    """One launcher per run name (its log, status and container are that name's): a flock, taken
    atomically and released by the kernel when its holder dies, however it dies. Returns the held fd."""
    lock = req.logs / f"run-{req.name}.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = runqueue.lock_holder(lock)
        raise UserError(f"a run named '{req.name}' is already in progress (its launcher: pid "
                        f"{holder or '?'}): choose another --name, or attach with: tmux attach -t "
                        f"{req.session}") from None
    return fd


def check(req: Request) -> int:
    """Everything that can fail in seconds, in the foreground, before anything is started, built or
    detached (a detached run would fail in a log nobody reads, after building an 8 GB image). Returns
    the server's port (the one given, else the store's own)."""
    if not SHELL_SAFE.match(str(req.root)):
        raise UserError(f"the checkout {req.root} holds a space or a shell character, which `mlflow run` "
                        "cannot pass to docker: move it to a plain path")
    uri = urlauth.tracking_uri_from_env()
    port, note = server.server_port(req.store, req.port, keep=not uri)
    if note:
        req.err(f"note: {note}")
    if os.environ.get(CHECKED_ENV):
        return port
    for found in preflight.for_make_run(
            root=req.root, entry=req.entry, params=req.params, gpu=os.environ.get("GPU", "auto"),
            image_tag=images.tag(req.root), uri=uri, port=port, store=req.store, logs=req.logs,
            data_mount=os.environ.get("DATA", "")):
        if found.status == preflight.FAIL:
            raise UserError(found.line)
        if found.status == preflight.NOTE:
            req.err(f"note: {found.line}")
    return port


def wants_detach(req: Request) -> bool:
    return req.mode == "detach" or (req.mode == "auto" and bool(os.environ.get("SSH_CONNECTION"))
                                    and not os.environ.get("TMUX"))


def queue_ticket(req: Request, tracking: str, run_id: str = "") -> runqueue.Ticket | None:
    """This run's place in the machine's line; None for a run that needs no slot (CPU, no CPU_SLOTS)."""
    pool, devices = runqueue.wanted(os.environ.get("GPU", "auto"), os.environ.get("GPUS", "all"),
                                    os.environ.get("CPU_SLOTS", ""))
    if not pool:
        return None
    return runqueue.Ticket(name=req.name, user=runqueue.user_name(), devices=devices, pool=pool,
                           log=str(req.log), session=req.session, tracking=tracking, run_id=run_id)


def refuse_when_busy(req: Request) -> None:
    """--no-wait, detached: refused now, in the foreground, not in a log nobody reads."""
    ticket = queue_ticket(req, "")
    if ticket:
        line, fds = runqueue.wait(ticket, no_wait=True, say=lambda _: None)
        line.leave()
        for fd in fds:
            os.close(fd)


def queue_run(req: Request, port: int) -> tuple[str, int]:
    """A detached run's server and MLflow run, made in the foreground: the user sees the run id (and any
    failure) before the command returns, and `make run`s started one after the other take their places
    in line in that order. Returns RUN_ID:EXPERIMENT_ID for the detached half, and the server's port."""
    con = Console(req.log)
    uri = ensure_server(req, port, con)
    with held_signals():
        run_id, experiment_id = create_run(req, uri, req.logs / f"run-{req.name}.lock")
    con.say(f"launcher: MLflow run {run_id} (experiment '{req.experiment}', {uri})")
    return f"{run_id}:{experiment_id}", urlsplit(uri).port or port


def detach(req: Request, port: int, queued: str) -> None:
    """tmux runs this same command with --foreground; its environment goes through a 0600 file."""
    if not shutil.which("tmux"):
        raise UserError("tmux is not installed (needed to keep the run alive after you log out): "
                        "apt-get install tmux, or pass --foreground")
    if subprocess.run(["tmux", "has-session", "-t", f"={req.session}"], capture_output=True).returncode == 0:
        raise UserError(f"tmux session '{req.session}' exists: tmux attach -t {req.session}, or end it")
    folder = tempfile.mkdtemp(prefix="kerasflow-run-")  # 0700
    env = {**{k: v for k, v in os.environ.items() if k not in NOT_PASSED}, CHECKED_ENV: "1",
           "PORT": str(port), "STORE": str(req.store), "LOGS": str(req.logs), RUN_ENV: queued}
    path = Path(folder) / "env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(f"{k}={v}\0".encode(errors="surrogateescape") for k, v in env.items()))
    cmd = ["env", f"{DETACHED_ENV}={path}", sys.executable, "-m", "kerasflow", "run",
           *argv(req, "--foreground")]
    out = subprocess.run(["tmux", "new-session", "-d", "-s", req.session, "-c", str(req.root),
                          shlex.join(cmd)], capture_output=True, text=True)
    if out.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"tmux could not start session '{req.session}' ({out.stderr.strip()}): see `tmux ls`")
    req.out(f"started '{req.name}' in tmux session '{req.session}' (detached), MLflow run "
            f"{queued.split(':')[0]}")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        req.out(f"  watch:   {tunnel(port)}")
    req.out(f"  follow:  tail -f {req.log}")
    req.out(f"  attach:  tmux attach -t {req.session}     (detach again: Ctrl-b d)")
    req.out(f"  status:  cat {req.status_file}      (the exit code, once it ends)")
    req.out(f"  queue:   make queue                      (its place in line and run id; make cancel "
            f"NAME={req.name} stops it)")


def argv(req: Request, mode: str) -> list[str]:
    """The command line that makes the same run again (the detached half)."""
    out = ["--root", str(req.root), "-e", req.entry, "--experiment", req.experiment, "--name", req.name, mode]
    out += ["--no-wait"] if req.no_wait else []
    return out + [a for p in req.params for a in ("-P", p)]


def tunnel(port: int) -> str:
    return (f"http://{ports.HOST}:{port}   (from a laptop: ssh -L {port}:{ports.HOST}:{port} "
            f"{socket.gethostname() or 'HOST'})")


# --- the run --------------------------------------------------------------------------------------------


def ensure_server(req: Request, port: int, con: Console) -> str:
    """The server in MLFLOW_TRACKING_URI, else this store's own (started when none of ours serves it, by
    one `make run` at a time); an experiment made by an embedded command gets proxied artifacts. Returns
    its URL: the port may differ from `port` when another user's server took that one first."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        con.say("note: using the MLflow server from MLFLOW_TRACKING_URI")
        return uri.rstrip("/")
    # one starter at a time: two `make run` started together would both start a server on the port
    starting = os.open(req.logs / "mlflow-server.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(starting, fcntl.LOCK_EX)
        port = start_server(req, port, con)
    finally:
        os.close(starting)
    new = proxy_experiment(req.store, req.experiment)
    if new:
        con.say(f"note: experiment '{req.experiment}' now logs new runs to {new} (the same folder, "
                "through the store's server)")
    return f"http://{ports.HOST}:{port}"


SERVER_TRIES = 5  # ports tried when other users' servers keep taking the one this store chose
LOST_PORT_S = 20  # seconds another server may answer on our port before ours counts as having lost it


def start_server(req: Request, port: int, con: Console) -> int:
    """This store's server on `port`, or on the next free one when another user's server took it between
    the check and the start (two users starting at once both see 5000 free): only a server whose process
    holds the port counts as ours, never one that merely answers there. Returns the port it serves on."""
    for _ in range(SERVER_TRIES):
        url = f"http://{ports.HOST}:{port}"
        if any(r.port == port for r in server.serving(req.store)) and ports.answers(url):
            con.say(f"note: using this store's MLflow server at {tunnel(port)}")
            return port
        if ports.port_free(port):
            started = launch_server(req, port, con)
            if started:
                return port
        if req.port is not None:
            raise UserError(f"port {port} (PORT) is taken by a server that is not this store's: unset PORT "
                            "(the store then keeps a port of its own), or set PORT=another port")
        taken = port
        port, _ = server.server_port(req.store, None)  # the next free one, kept with the store
        con.say(f"note: port {taken} was taken by another server just now: this store's server takes {port}")
    raise UserError(f"no port for this store's server after {SERVER_TRIES} tries (other servers took each): "
                    "set PORT=a free port")


def launch_server(req: Request, port: int, con: Console) -> bool:
    """Start the store's server in its own session (it outlives this run and a tmux pane's hangup);
    True once it answers from a process of its own, False when it lost the port to another server."""
    server_log = req.logs / "mlflow-server.log"
    con.say(f"note: starting an MLflow server over {req.store} at {tunnel(port)}; log: {server_log}; "
            "make server-stop stops it")
    cmd, env = server.checked_command(req.store, port)
    server.make_ready(req.store)
    with open(server_log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=req.root)
    (req.logs / "mlflow-server.pid").write_text(f"{proc.pid}\n")
    deadline, foreign = time.monotonic() + 180, 0.0
    while time.monotonic() < deadline and proc.poll() is None:
        if ports.answers(f"http://{ports.HOST}:{port}", timeout=2):
            if server.holds_port(proc.pid, port):
                return True
            foreign = foreign or time.monotonic()  # another server answers there: ours cannot bind
            if time.monotonic() - foreign > LOST_PORT_S:
                break
        time.sleep(0.3)
    if proc.poll() is None and not foreign:
        server.stop_tree([proc.pid])
        last = (server_log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the MLflow server did not come up on port {port} within 180 s: {last[:300]}")
    server.stop_tree([proc.pid])
    return False  # the port was taken under it


def parse_params(params: list[str]) -> dict[str, str]:
    out = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"-P {item!r} is not key=value: e.g. -P epochs=3")
        out[key] = value
    return out


def create_run(req: Request, uri: str, lock: Path, launch: str = "local",  # noqa: PLR0913
               tags: dict[str, str] | None = None, params: list[str] | None = None) -> tuple[str, str]:
    """The MLflow run, made now (SCHEDULED), as `mlflow run` would make it: returns (run id,
    experiment id). The experiment's id and artifact path reach MLflow's shell line, so they are checked
    (kerasflow/track/shell_line.py). `launch` names who settles it (local: this launcher; slurm: its job)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow
    from mlflow.projects.utils import _create_run

    client = mlflow.MlflowClient(uri)
    experiment_id = shell_line.experiment_for_docker(client, req.experiment)
    given = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri sets it: whether the user did counts
    mlflow.set_tracking_uri(uri)
    try:
        run = _create_run(str(req.root), experiment_id, str(req.root), None, req.entry,
                          parse_params(req.params if params is None else params))
    finally:
        if given is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = given
    run_id = run.info.run_id
    client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in {
        orphans.LAUNCH_TAG: launch, orphans.LOCK_TAG: str(lock), orphans.HOST_TAG: socket.gethostname(),
        QUEUE_TAG: "queued", **(tags or {})}.items()])
    client.update_run(run_id, status="SCHEDULED")
    return run_id, experiment_id


def end_run(uri: str, run_id: str, status: str, why: str = "") -> None:
    """The run ends `status` unless it already ended; a server that does not answer costs a warning."""
    try:
        import mlflow

        client = mlflow.MlflowClient(uri)
        run = client.get_run(run_id)
        if run.info.status in ("FINISHED", "FAILED", "KILLED") and not (
                status == "KILLED" and run.info.status == "FAILED"):
            return
        if why:
            client.set_tag(run_id, QUEUE_TAG, why[:500])
        client.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001 - the run's own outcome is already decided
        log.warning(f"MLflow run {run_id} could not be marked {status} ({str(exc)[:200]}): the next "
                    "command that opens the store closes it")


def mlflow_command(req: Request, experiment_id: str, run_id: str) -> list[str]:
    """`mlflow run` in the image: host network (the server is on 127.0.0.1), --init (signals reach the
    training), a container name per run (`docker stop kerasflow-NAME` stops exactly this one), the
    credentials through a 0600 env file, the GPUs, DATA read-only at /data."""
    args = ["-A", "network=host", "-A", "init", "-A", f"name={req.container}"]
    if os.environ.get("KF_ENV_FILE"):
        args += ["-A", f"env-file={os.environ['KF_ENV_FILE']}"]
    gpus = gpu_value()
    if gpus:  # single quotes keep the value's double quotes through MLflow's `bash -c` line
        args += ["-A", f"gpus='{gpus}'"]
    data = os.environ.get("DATA", "")
    if data:
        folder = Path(data).resolve()
        if not folder.is_dir():
            raise UserError(f"DATA={data} is not a folder: give the dataset folder to mount at /data "
                            "(read-only)")
        if not SHELL_SAFE.match(str(folder)):
            raise UserError(f"DATA {folder} holds a space or a shell character, which `mlflow run` cannot "
                            "pass to docker: move it to a plain path")
        args += ["-A", f"volume={folder}:/data:ro"]
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    params = [a for p in req.params for a in ("-P", p)]
    return [mlflow_bin, "run", str(req.root), "-e", req.entry, "--experiment-id", experiment_id,
            "--run-id", run_id, *args, *params]


def gpu_value() -> str:
    """docker's --gpus value when a GPU can be used, else "": GPU=auto falls back to CPU (the checks
    said so), GPU=on was refused by them without one, GPU=off never asks."""
    if os.environ.get("GPU", "auto") == "off":
        return ""
    if preflight.gpu_runtime(os.environ.get("GPU", "auto")).status != preflight.PASS:
        return ""
    return images.gpus_value(os.environ.get("GPUS", "all"), len(box.gpu_indexes()))


def run_shown(cmd: list[str], con: Console, env: dict[str, str] | None = None, *,
              started: Callable[[subprocess.Popen[bytes]], None] = lambda _: None,
              pass_fds: tuple[int, ...] = ()) -> int:
    """Run `cmd` in its own session, its output on the console and in the log; its exit status (a
    signal N as 128+N)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env, pass_fds=pass_fds)
    started(proc)

    out = proc.stdout

    def pump() -> None:
        if out is not None:
            for chunk in iter(lambda: out.read1(65536), b""):
                con.write(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    except BaseException:  # a user's stop while it runs (a build): it stops too, then the stop goes on
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        raise
    reader.join(timeout=10)
    return 128 - code if code < 0 else code


class Stopper:
    """A user's stop (make cancel's SIGTERM, Ctrl-C, a hangup): before the container runs, an exception
    that ends the run KILLED; once `mlflow run` runs, the container is stopped and `mlflow run` ends by
    itself (the signal does not reach it: it runs in its own session)."""

    def __init__(self, req: Request, con: Console) -> None:
        self.req, self.con = req, con
        self.signum = 0
        self.child: subprocess.Popen[bytes] | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            return  # one stop per run: a second signal (tmux sends more than one) must not cut the cleanup
        self.signum = signum
        if self.child is None:
            raise Terminated(signum)
        self.con.say(f"launcher: {signal.Signals(signum).name}: stopping container {self.req.container} "
                     "(the MLflow run ends KILLED)")
        self.stop_container()

    def stop_container(self) -> None:
        images.docker("stop", "--time", "10", self.req.container, timeout=60)
        child = self.child
        if child is not None and child.poll() is None and \
                images.docker("container", "inspect", self.req.container).returncode != 0:
            with contextlib.suppress(OSError):  # no container yet: `mlflow run` is still starting it
                os.killpg(child.pid, signal.SIGTERM)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, self)


@dataclasses.dataclass
class Progress:
    """How far one run got: what the end of `foreground` must settle."""

    uri: str = ""
    run_id: str = ""
    line: runqueue.Line | None = None


def credentials_file() -> str:
    """MLflow prints and logs the `docker run -e NAME=VALUE ...` it builds: tracking credentials (and the
    study's database URL) go to the container in a 0600 env file instead. Returns its private folder."""
    if os.environ.get("KF_ENV_FILE") or not (os.environ.get("MLFLOW_TRACKING_USERNAME")
                                             or os.environ.get("KERASFLOW_STUDY_STORAGE")):
        return ""
    folder = tempfile.mkdtemp(prefix="kerasflow-env-")
    os.environ["KF_ENV_FILE"] = str(Path(folder) / "mlflow.env")
    urlauth.write_env_file(os.environ["KF_ENV_FILE"])
    return folder


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """A user's stop (SIGTERM, SIGHUP, SIGINT) waits until the block ends, then is taken."""
    stops = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def steps(req: Request, port: int, con: Console, stopper: Stopper, got: Progress) -> int:
    """Server, MLflow run, line, image, `mlflow run`: the run's exit code."""
    if notify.wanted(start=True):
        notify.send(notify.Message(name=req.name, status="STARTED"))
    got.uri = ensure_server(req, port, con)
    queued = os.environ.pop(RUN_ENV, "")  # made by the foreground half of a detached run
    if RUN_GIVEN.fullmatch(queued):
        got.run_id, experiment_id = queued.split(":")
    else:
        with held_signals():  # a stop while the run is made is taken once its id is known: KILLED
            got.run_id, experiment_id = create_run(req, got.uri, req.logs / f"run-{req.name}.lock")
        con.say(f"launcher: MLflow run {got.run_id} (experiment '{req.experiment}', {got.uri})")
    ticket = queue_ticket(req, got.uri, got.run_id)
    fds: list[int] = []
    if ticket:
        got.line, fds = runqueue.wait(ticket, no_wait=req.no_wait, say=waiting(con, got.uri, got.run_id))
        con.say(f"queue: {req.name} starts on {', '.join(ticket.devices)}")
    mark(got.uri, got.run_id, "RUNNING", f"started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    image = images.ensure(req.root, lambda cmd, env: run_shown(cmd, con, env), con.say)
    cmd = mlflow_command(req, experiment_id, got.run_id)
    images.point_latest(image, req.container, say=con.say,
                        alive=lambda: stopper.child is None or stopper.child.poll() is None)
    con.say(shlex.join(["mlflow", *cmd[1:]]))
    held = tuple(fds + (got.line.fds() if got.line else []))  # devices stay held while `mlflow run` lives
    code = run_shown(cmd, con, {**os.environ, "MLFLOW_TRACKING_URI": got.uri},
                     started=lambda p: setattr(stopper, "child", p), pass_fds=held)
    if stopper.signum:
        stopper.stop_container()  # a container that started after the stop
    if stopper.signum and code != 0:
        end_run(got.uri, got.run_id, "KILLED")
        con.say(f"launcher: MLflow run {got.run_id} ends KILLED (stopped by its user)")
    else:
        end_run(got.uri, got.run_id, "FINISHED" if code == 0 else "FAILED")
    return code


def foreground(req: Request, port: int) -> int:
    """The run itself, in this process (a terminal, or the detached tmux session). Returns its exit code;
    whatever happens, the MLflow run ends (FINISHED, FAILED or KILLED) and the status file is written."""
    req.status_file.unlink(missing_ok=True)
    sys.stdout, sys.stderr = Tolerant(sys.stdout), Tolerant(sys.stderr)  # type: ignore[assignment]
    con = Console(req.log)
    stopper = Stopper(req, con)
    stopper.install()
    got = Progress()
    env_folder = credentials_file()
    try:
        code = steps(req, port, con, stopper, got)
    except Terminated as exc:
        code = exc.exit_code
        con.say(f"queue: {req.name} stopped before its container ran (signal {exc.signum}: make cancel, "
                "Ctrl-C, or its session ended)")
        if got.run_id:
            end_run(got.uri, got.run_id, "KILLED", "stopped before it started")
    except UserError as exc:
        code = exc.exit_code
        con.say(f"error: {exc}")
        if got.run_id:
            end_run(got.uri, got.run_id, "FAILED", str(exc))
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if env_folder:
            shutil.rmtree(env_folder, ignore_errors=True)
    try:
        if notify.wanted():
            notify.run_ended(req.name, code, str(req.log), got.uri, got.run_id)
        req.status_file.write_text(f"{code}\n")
        con.say(f"exit status {code} ({req.status_file})")
    finally:  # the ticket goes last: `make cancel` returns when it is gone, the run's end written
        if got.line:
            got.line.leave()
    return code


def waiting(con: Console, uri: str, run_id: str) -> Callable[[str], None]:
    """The queue's lines, and the place in line on the MLflow run (status SCHEDULED, tag kerasflow.queue)."""
    def say(text: str) -> None:
        con.say(f"{time.strftime('%H:%M:%S')} {text}")
        if text.startswith("queue: waiting"):
            mark(uri, run_id, "", text.removeprefix("queue: ")[:500])
    return say


def mark(uri: str, run_id: str, status: str, where: str) -> None:
    """Say on the MLflow run where it is; best effort (the server answering is checked elsewhere)."""
    with contextlib.suppress(Exception):
        import mlflow

        client = mlflow.MlflowClient(uri)
        client.set_tag(run_id, QUEUE_TAG, where)
        if status:
            client.update_run(run_id, status=status)


def start(req: Request) -> int:
    """`make run`: one run, from the command line to its exit code."""
    req.logs.mkdir(parents=True, exist_ok=True)
    made = claim_name(req)
    try:
        lock = lock_name(req)
        port = check(req)
        if wants_detach(req):
            made = False  # the claimed log is the run's now
            queued = ""
            try:
                if req.no_wait:
                    refuse_when_busy(req)
                queued, port = queue_run(req, port)
                os.close(lock)  # the detached half takes the name itself
                detach(req, port, queued)
            except BaseException as exc:
                if queued:  # made, never to run
                    end_run(os.environ.get("MLFLOW_TRACKING_URI") or f"http://{ports.HOST}:{port}",
                            queued.split(":")[0], "FAILED" if isinstance(exc, UserError) else "KILLED",
                            str(exc) or "stopped before it started")
                raise
            return 0
        made = False
        return foreground(req, port)
    finally:
        if made and req.log.exists() and req.log.stat().st_size == 0:
            req.log.unlink()  # a run that never started leaves no log
