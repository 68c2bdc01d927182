"""The one way a test starts a local fake server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pytest_httpserver import HTTPServer

from tests.fakes.tls import TestCA


@contextmanager
def local_server(tls: TestCA | None = None) -> Iterator[HTTPServer]:
    """A started server on 127.0.0.1 at a free port, stopped on exit; HTTPS with a
    certificate from `tls` when given, plain http otherwise.

    Threaded, so a test's deliberately slow answer does not hold up the next request.
    """
    context = tls.server_context() if tls is not None else None
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context, threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()
