"""Raw socket servers on 127.0.0.1 for what a well-behaved fake cannot do: take whatever a
client sends and keep it (a stranger's host, to prove a key never reaches it), or answer
one byte at a time (a slow-drip server, to prove a call ends at its deadline).

    with RecordingListener(tls=test_ca) as stranger:      # https://127.0.0.1:<port>
        ...
    assert stranger.received == b""

    with DripServer(http_response(200, b"{}"), interval=0.05) as slow:
        ...                                               # slow.url, slow.connections

    with SilentListener() as mute:                        # accepts, then says nothing
        ...

Both speak TLS with a certificate from the test CA when given `tls=`, so a client that
verifies against that CA gets as far as sending its request (and its credentials).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from tests.fakes.tls import TestCA


def http_response(
    status: int = 200,
    body: bytes = b"{}",
    *,
    content_type: str = "application/json",
    length: int | None = None,
) -> bytes:
    """A complete HTTP/1.1 answer; `length` overrides Content-Length (to promise more)."""
    head = (
        f"HTTP/1.1 {status} Whatever\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Server:
    def __init__(self, *, tls: TestCA | None = None) -> None:
        self._context = tls.server_context() if tls else None
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.port = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self._context else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self):
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve_safely, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve_safely(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self._context is not None:
                conn = self._context.wrap_socket(conn, server_side=True)
            self._serve(conn)
        except (OSError, ssl.SSLError):
            pass  # the client hung up or failed TLS: nothing to keep
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class RecordingListener(_Server):
    """Keeps every byte every client sends (`received`); answers nothing and hangs up once
    the client has sent a request (or stops sending)."""

    def __init__(self, *, tls: TestCA | None = None) -> None:
        super().__init__(tls=tls)
        self._received = bytearray()

    @property
    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(1)
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                return
            if not data:
                return
            with self._lock:
                self._received += data
            if b"\r\n\r\n" in self._received:
                return


class SilentListener(_Server):
    """Accepts connections and never says a word (not even a TLS handshake), until stopped."""

    def _serve(self, conn: socket.socket) -> None:
        self._stop.wait(30)


class DripServer(_Server):
    """Reads a request, then sends `response` `chunk` bytes every `interval` seconds, for at
    most `for_seconds` (then hangs up), so a client that waits per read never times out."""

    def __init__(
        self,
        response: bytes,
        *,
        interval: float = 0.05,
        chunk: int = 1,
        for_seconds: float = 8.0,
        tls: TestCA | None = None,
    ) -> None:
        super().__init__(tls=tls)
        self.response = response
        self.interval = interval
        self.chunk = chunk
        self.for_seconds = for_seconds

    def _serve(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            data = conn.recv(65536)
            if not data:
                return
            request += data
        # Read the request's body too: closing with unread data would reset the connection
        # and the client would see a reset instead of our answer.
        head, _, body = request.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            data = conn.recv(65536)
            if not data:
                return
            body += data
        ends = time.monotonic() + self.for_seconds
        for start in range(0, len(self.response), self.chunk):
            if self._stop.is_set() or time.monotonic() > ends:
                return
            conn.sendall(self.response[start : start + self.chunk])
            if self.interval:
                time.sleep(self.interval)
