"""Local ports for the servers we start (MLflow, the model server): checked before starting, so that a
busy or impossible port is one line instead of a server that dies in its log."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from kerasflow.errors import UserError

HOST = "127.0.0.1"  # every server we start listens here only: reach it over `ssh -L`
DEFAULT_PORT = 5000  # the first port a store's server tries; the store keeps the one it got
SERVE_PORT = 5001  # the model server's default (`make serve`): never taken by a store's server
# where a store's server looks for a free port (the second user's store server on 5001 made every
# `make serve` on the box fail with "port 5001 is busy")
PORT_RANGE = [p for p in range(DEFAULT_PORT, DEFAULT_PORT + 100) if p != SERVE_PORT]


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not busy
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_port(port: int, what: str = "the server") -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"port {port} is out of range for {what}: give a port from 1024 to 65535 "
                        "(--port N / PORT=N)")
    if not port_free(port):
        raise UserError(f"port {port} on {HOST} is busy (another server running?): choose another port "
                        f"for {what} with --port N (make: PORT=N)")


def free_port(host: str = HOST) -> int:
    """A port the kernel says is free now (for a private server: the notebook's, the tests')."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def answers(url: str, timeout: float = 3) -> bool:
    """THE health probe of every MLflow server we start or are given: GET URL/health answers 2xx."""
    try:  # an http(s) URL: callers check the scheme
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout):  # noqa: S310
            return True
    except OSError:
        return False


def wait_answers(url: str, seconds: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll `answers` until it does (True), `seconds` pass or `alive()` says the server died (False)."""
    deadline = time.monotonic() + seconds
    while not answers(url, timeout=2):
        if not alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def is_loopback(url: str) -> bool:
    """Whether a URL's host is this machine only (127.0.0.0/8, ::1, localhost)."""
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
