"""The one place that builds the `mlflow server` command line over a store.

    kerasflow server [STORE] [--port N] [--auth]   (`make server [AUTH=1]`, `make run`)

`make server`, the server `make run` starts (kerasflow/launch/run.py), `make ui` (run_mlflow_ui.bash) and
the notebook's private server (kerasflow.experiments.explore) all serve a store the same way: bound to
127.0.0.1, Host and CORS checks limited to the local names, artifacts proxied from STORE/artifacts
(runs logged through it get `mlflow-artifacts:/` locations), the sqlite database created under the
store's lock before MLflow sees it (MLflow's own first migration races when two processes start at once).
A legacy file store needs MLFLOW_ALLOW_FILE_STORE=true since MLflow 3.13. `--auth` turns on MLflow's
basic auth for a server others reach (users and passwords in STORE/auth, kept with the store).

Several users on one box each run their store's server: without PORT, a store's server takes the first
free port from 5000 on (5001 is left to `make serve`) when it first starts and keeps it in
STORE/server-port, so the second user's `make run` gets 5002 instead of failing on the first user's
5000, and every later start (make run, make server, make ui, make doctor) finds the same port, and
the same tunnel. A user's servers are found by
their processes (this user's, serving this store), never by a pid file: `make server-stop` stops them.
"""

from __future__ import annotations

import contextlib
import os
import secrets as random_secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kerasflow import pglock, ports, urlauth
from kerasflow.errors import UserError
from kerasflow.files import atomic_write
from kerasflow.ports import HOST, check_port
from kerasflow.track import store

# Lazy imports: mlflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).


def prepare(store_path: Path) -> None:
    """Create a new sqlite store (under its lock) so that MLflow only ever opens a migrated database."""
    kind, path = store.locate(store_path)
    if kind == "sqlite":
        uri = store.sqlite_uri(path)
        store.check_backend(uri)
        store.init_sqlite(uri)
        (path.parent / store.ARTIFACTS).mkdir(exist_ok=True)


def database_url(url: str) -> tuple[str, dict[str, str]]:
    """A database URL without its password, and the environment that carries it (PGPASSWORD, which
    psycopg2 reads; never a command line, a log line or a param)."""
    clean, user, password = urlauth.split_credentials(url)
    if not clean.startswith(("postgresql://", "postgresql+psycopg2://")):
        raise UserError(f"DB={urlauth.redact(url)} is not a postgresql:// URL: give "
                        "postgresql://USER@HOST:PORT/DATABASE (password in PGPASSWORD or ~/.pgpass)")
    scheme, rest = clean.split("://", 1)
    url = pglock.driver_url(f"{scheme}://{user + '@' if user else ''}{rest}")
    return url, ({"PGPASSWORD": password} if password is not None else {})


def prepare_database(url: str, artifacts: Path) -> None:
    """Create MLflow's schema in a PostgreSQL database once, under an advisory lock (MLflow's own first
    migration, run by several servers or workers at once, races as it does on sqlite)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with pglock.advisory_lock(url, pglock.MLFLOW_SCHEMA):
        SqlAlchemyStore(url, str(artifacts)).engine.dispose()


# fnmatch patterns MLflow's --allowed-hosts takes (mlflow/server/security_utils.py)
ALLOWED_HOSTS = (f"{HOST}:*", "localhost:*")

AUTH_DIR = "auth"  # in the store folder: the basic-auth users database and its config (0600)


def auth_secret_key(folder: Path) -> str:
    """The CSRF secret MLflow's auth app needs, made once and kept (0600) so restarts and several
    workers agree on it; MLFLOW_FLASK_SERVER_SECRET_KEY, when set, wins."""

    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = folder / "flask_secret_key"
    if not path.is_file():
        atomic_write(path, random_secrets.token_hex(32), mode=0o600)
    return path.read_text().strip()


def auth_config(store_path: Path) -> Path:
    """MLflow basic auth kept in the store folder (not the current directory), its config 0600.

    The admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD the first time (MLflow creates the admin
    user then); never from a command line or a config file under version control.
    """
    kind, path = store.locate(store_path)
    if kind != "sqlite":
        raise UserError("basic auth needs a sqlite store: migrate it first (make migrate STORE=...)")
    folder = path.parent.resolve() / AUTH_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    users = folder / "basic_auth.db"
    if not users.exists() and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise UserError("basic auth needs an admin password the first time: export "
                        "MLFLOW_AUTH_ADMIN_PASSWORD=... (then log in as admin and add users)")
    ini = folder / "basic_auth.ini"
    atomic_write(ini, "[mlflow]\n"
                 "default_permission = READ\n"
                 f"database_uri = {store.sqlite_uri(users)}\n"
                 "admin_username = admin\n"
                 "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                 "grant_default_workspace_access = false\n", mode=0o600)
    return ini


def command(store_path: Path, port: int, auth: bool = False,
            db: str = "") -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and environment for this store (sqlite, or a legacy file store),
    or for a PostgreSQL database `db` with the artifacts in STORE/artifacts."""
    kind, path = ("postgresql", store_path / store.DB_FILE) if db else store.locate(store_path)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if kind == "postgresql":
        url, secret_env = database_url(db)
        env.update(secret_env)
        args = ["--backend-store-uri", url,
                "--artifacts-destination", str(store_path.resolve() / store.ARTIFACTS)]
    elif kind == "sqlite":
        args = ["--backend-store-uri", store.sqlite_uri(path),
                "--artifacts-destination", str(path.parent.resolve() / store.ARTIFACTS)]
    else:
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
        root = path.resolve()
        args = ["--backend-store-uri", str(root), "--default-artifact-root", str(root)]
    if auth:
        ini = auth_config(store_path)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = auth_secret_key(ini.parent)
        args += ["--app-name", "basic-auth"]
    # Any PORT of the local names: VS Code or `ssh -L 5001:127.0.0.1:5000` forward to another local
    # port, and the browser's Host header names that one. Other names stay refused (DNS rebinding);
    # MLflow's own default would also admit every private-network address.
    local = ",".join(ALLOWED_HOSTS)
    origins = ",".join(f"http://{host}" for host in ALLOWED_HOSTS)
    return [str(bindir / "mlflow"), "server", *args, "--host", HOST, "--port", str(port),
            "--allowed-hosts", local, "--cors-allowed-origins", origins], env


def checked_command(store_path: Path, port: int, *, auth: bool = False,
                    db: str = "") -> tuple[list[str], dict[str, str]]:
    """`command` after the checks a user's mistake fails (port, --auth with --db), nothing created but
    the auth folder --auth keeps in the store."""
    check_port(port, "the MLflow server")
    if auth and db:
        raise UserError("--auth keeps its users in the sqlite store: use it without --db, or put the "
                        "team server behind docker/compose (docs/team-server.md)")
    if auth:
        prepare(store_path)  # the auth folder lives in the store
    return command(store_path, port, auth=auth, db=db)


def make_ready(store_path: Path, db: str = "") -> None:
    """The store (or the PostgreSQL schema and the artifact folder) created before MLflow opens it."""
    if db:
        url, secret_env = database_url(db)
        os.environ.update(secret_env)
        (store_path / store.ARTIFACTS).mkdir(parents=True, exist_ok=True)
        prepare_database(url, store_path / store.ARTIFACTS)
    else:
        prepare(store_path)


PORT_FILE = store.PORT_FILE


def backend_uri(store_path: Path) -> str:
    """What `--backend-store-uri` a server of this store runs with (how its process is recognised)."""
    cmd, _ = command(store_path, ports.DEFAULT_PORT)
    return cmd[cmd.index("--backend-store-uri") + 1]


@dataclass(frozen=True)
class Running:
    """A store server of this user's: its process, port and backend."""

    pid: int
    port: int
    backend: str


def running(uid: int | None = None) -> list[Running]:
    """This user's MLflow servers, from /proc (their command lines, which `command` wrote): a pid file in
    a folder is a claim, a process of ours is a fact."""
    uid = os.getuid() if uid is None else uid
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        # `mlflow server ...`, as the kernel ran the script: its interpreter first, then the script
        at = next((i for i, a in enumerate(args[:3]) if Path(a).name == "mlflow"), None)
        if at is None or args[at + 1:at + 2] != ["server"] or "--port" not in args:
            continue
        with contextlib.suppress(ValueError, IndexError):
            found.append(Running(int(proc.name), int(args[args.index("--port") + 1]),
                                 args[args.index("--backend-store-uri") + 1]))
    return sorted(found, key=lambda r: r.port)


def serving(store_path: Path) -> list[Running]:
    """This user's servers of this store."""
    with contextlib.suppress(UserError):
        uri = backend_uri(store_path)
        return [r for r in running() if r.backend == uri]
    return []


def _kept_port(store_path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = (store_path / PORT_FILE).read_text()[:16].strip()
        port = int(text)
        if 1024 <= port <= 65535:
            return port
    return None


def server_port(store_path: Path, given: int | None = None, *, keep: bool = True) -> tuple[int, str]:
    """The port of this store's server and a note when it changed: the one given (PORT, --port), else
    the port this user's server of the store already listens on, else the one kept with the store while
    it is free, else the first free one from 5000 (kept in STORE/server-port from then on)."""
    if given is not None:
        return given, ""
    mine = serving(store_path)
    if mine:
        return mine[0].port, ""
    kept = _kept_port(store_path)
    if kept is not None and ports.port_free(kept):
        return kept, ""
    port = next((p for p in ports.PORT_RANGE if ports.port_free(p)), None) or ports.free_port()
    if keep:  # a store one may only read keeps nothing, and gets the same choice next time
        with contextlib.suppress(OSError):
            store_path.mkdir(parents=True, exist_ok=True)
            atomic_write(store_path / PORT_FILE, f"{port}\n")
    note = f"port {kept} (kept with the store) is taken by another server: now {port}" if kept else ""
    return port, note


def stop(store_path: Path, timeout: float = 20) -> list[Running]:
    """Stop this user's servers of this store with every process they started (`mlflow server` runs
    uvicorn and its workers as children: killed alone, it left them serving the port): SIGTERM to the
    whole tree, SIGKILL to what is left after `timeout`. Returns the servers it stopped."""
    found = serving(store_path)
    stop_tree([server.pid for server in found], timeout)
    return found


def stop_tree(roots: list[int], timeout: float = 20) -> None:
    """SIGTERM to these processes of ours and their descendants, SIGKILL to what is left after `timeout`."""
    tree = [pid for root in roots for pid in _tree(root)]
    for pid in tree:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
        time.sleep(0.2)
    for pid in tree:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _tree(root: int) -> list[int]:
    """`root` and its descendants (this user's: a process of another user is not ours to signal)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if proc.stat().st_uid != os.getuid():
                continue
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on TCP `port` (any address), as the kernel lists them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found.add(fields[9])
    return found


def holds_port(pid: int, port: int) -> bool:
    """Whether process `pid` or one of its descendants listens on `port`: the server we started got the
    port, rather than a server of another user (or store) that took it first and answers there."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return False
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{member}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return True
    return False


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
