"""Just enough of the PostgreSQL wire protocol to refuse a login the way a real server (or
Supabase's pooler) does, so connection errors reach our code as psycopg raises them."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


def _error_response(code: str, message: str) -> bytes:
    fields = (
        b"".join(
            tag + value.encode() + b"\0"
            for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
        )
        + b"\0"
    )
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


class RefusingPostgres:
    """Accepts connections, asks for a cleartext password (or not) and answers with an error.

    mode "password": asks for the password, records it, answers 28P01 like PostgreSQL.
    mode "tenant": answers Supavisor's "Tenant or user not found" after the startup message.
    """

    def __init__(self, mode: str = "password"):
        self.mode = mode
        self.passwords: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = False

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self.sock.close()

    def _read_exact(self, conn, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(ConnectionError, OSError):
                self._handle(conn)

    def _handle(self, conn):
        while True:
            length, code = struct.unpack("!II", self._read_exact(conn, 8))
            self._read_exact(conn, length - 8)
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: "not here"
                conn.sendall(b"N")
                continue
            break  # the StartupMessage
        if self.mode == "tenant":
            conn.sendall(_error_response("XX000", "Tenant or user not found"))
            return
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        tag = self._read_exact(conn, 1)
        (length,) = struct.unpack("!I", self._read_exact(conn, 4))
        body = self._read_exact(conn, length - 4)
        if tag == b"p":
            self.passwords.append(body.rstrip(b"\0").decode())
        conn.sendall(_error_response("28P01", 'password authentication failed for user "postgres"'))
