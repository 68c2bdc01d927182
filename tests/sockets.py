"""A free TCP port on 127.0.0.1, for tests that need a port nothing answers on (or their own)."""

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
