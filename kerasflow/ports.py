"""Local ports for the servers we start (MLflow, the model server): checked before starting, so that a
busy or impossible port is one line instead of a server that dies in its log."""

from __future__ import annotations

import socket

from kerasflow.errors import UserError

HOST = "127.0.0.1"  # every server we start listens here only: reach it over `ssh -L`


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
