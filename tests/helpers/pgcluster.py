"""A throwaway PostgreSQL cluster (Debian's postgresql-15) on 127.0.0.1: the tests' `postgres` fixture
and bench/bench_stores.py. Run as the `postgres` user when the caller is root (the server refuses
root); stopped by the pid it wrote, and its folder removed."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    port: int
    createdb: Callable[[str], str]  # a new, empty database -> its URL (user kf, no password in it)


@contextmanager
def throwaway_cluster(password: str) -> Iterator[Cluster]:
    """A running cluster whose superuser `kf` logs in with `password` over TCP (scram-sha-256)."""
    bins = bindir()
    if bins is None:
        raise RuntimeError("no PostgreSQL (initdb) here: install postgresql-15")
    base = Path(tempfile.mkdtemp(prefix="kf-pg-"))
    data, pwfile = base / "data", base / "pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")
    port = _free_port()
    pid = None
    try:
        subprocess.run(as_postgres([str(bins / "initdb"), "-D", str(data), "-U", "kf", f"--pwfile={pwfile}",
                                    "--auth-host=scram-sha-256", "--auth-local=trust"]),
                       check=True, capture_output=True)
        subprocess.run(as_postgres([str(bins / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
                                    "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {base}", "start"]),
                       check=True, capture_output=True, timeout=60)
        pid = int((data / "postmaster.pid").read_text().split()[0])

        def createdb(name: str) -> str:
            cmd = [str(bins / "createdb"), "-h", str(base), "-p", str(port), "-U", "kf", name]
            subprocess.run(as_postgres(cmd), check=True, capture_output=True)
            return f"postgresql://kf@127.0.0.1:{port}/{name}"

        yield Cluster(port, createdb)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)  # smart shutdown of the postmaster we started, by its pid
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)
