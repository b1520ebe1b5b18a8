"""A free TCP port on loopback, for a server this process is about to start (embedded Redis, a
local node's metrics). Another process may take it in between; callers that bind it report that."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
