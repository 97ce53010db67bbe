"""Loopback helpers for tests that start servers."""

import socket

# Ports already handed out in this process. A server binds its port only once it has
# started, so until then the system may offer the same port again: two servers of one
# test module then met on one port (the HTTP health check of one got the other's
# HTTP/2 gRPC frames).
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process
    has not handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
