"""The one way a test starts a local fake server."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pytest_httpserver import HTTPServer
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request

from tests.fakes.tls import TestCA

# How long a kept-alive connection may sit idle before the fake drops it.
IDLE_SECONDS = 30


class _KeepAliveHandler(WSGIRequestHandler):
    """Werkzeug's handler, but keeping the connection open after an answer, as real servers
    (Hopsworks' Payara, the Kubernetes API server) do with HTTP/1.1.

    Werkzeug always answers "Connection: close" because http.server cannot skip a request
    body the application did not read before the next request line. So the body, when its
    length is given, is read here first and the application reads it from memory; a chunked
    body (no length) still closes the connection.
    """

    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS
    # TCP_NODELAY, as the real servers set it: http.server writes the headers and the body
    # apart, and with Nagle's algorithm the body's last segment would wait for the client's
    # delayed ACK of the headers (~20-40 ms an answer on Linux).
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        super().finish()

    def _body_length(self) -> int | None:
        """The body's length, None when it is not given (chunked or not a number)."""
        if "Transfer-Encoding" in self.headers:
            return None
        length = self.headers.get("Content-Length", "0").strip() or "0"
        return int(length) if length.isdigit() else None

    def _keeps_alive(self) -> bool:
        return (
            self.request_version == "HTTP/1.1"
            and self._body_length() is not None
            and "100-continue" not in (self.headers.get("Expect") or "").lower()
            and (self.headers.get("Connection") or "").lower() != "close"
        )

    def run_wsgi(self) -> None:
        if not self._keeps_alive():
            return super().run_wsgi()
        # After answering, werkzeug reads whatever the client sent since, to discard a body
        # (it reads until 10 MB or the end): on a kept-alive connection that is the next
        # request, and the read would wait for a connection that stays open. So the body is
        # read here, exactly its length, and the application and that discarding read it
        # from memory.
        body = self.rfile.read(self._body_length())
        rfile, self.rfile = self.rfile, io.BytesIO(body)
        try:
            return super().run_wsgi()
        finally:
            self.rfile = rfile

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection" and value.lower() == "close" and self._keeps_alive():
            return
        super().send_header(keyword, value)


class KeepAliveHTTPServer(HTTPServer):
    """pytest_httpserver's server speaking HTTP/1.1 with keep-alive (threaded: one thread
    per connection). `stop()` also closes the connections kept open, so a client cannot go
    on talking to a stopped server."""

    def start(self) -> None:
        # pytest_httpserver's start(), with our request handler.
        if self.is_running():
            raise RuntimeError("Server is already running")
        self.server = make_server(
            self.host,
            self.port,
            Request.application(self.application),
            ssl_context=self.ssl_context,
            threaded=True,
            request_handler=_KeepAliveHandler,
        )
        self.server.open_connections = set()
        self.server.connections_lock = threading.Lock()
        self.port = self.server.port
        self.server_thread = threading.Thread(target=self.thread_target, daemon=True)
        self.server_thread.start()

    def stop(self) -> None:
        server = self.server
        super().stop()
        if server is not None:
            with server.connections_lock:
                connections = list(server.open_connections)
            for connection in connections:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def local_server(tls: TestCA | None = None) -> Iterator[HTTPServer]:
    """A started server on 127.0.0.1 at a free port, stopped on exit; HTTPS with a
    certificate from `tls` when given, plain http otherwise.

    Threaded, so a test's deliberately slow answer does not hold up the next request, and
    keeping connections alive between requests like the real servers it stands for.
    """
    context = tls.server_context() if tls is not None else None
    server = KeepAliveHTTPServer(host="127.0.0.1", port=0, ssl_context=context, threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()
