"""Mail has one deadline for a whole send: a mail server answering a byte at a time cannot
hold the job that sends (nor the rows it has locked)."""

from __future__ import annotations

import socket
import time

import pytest
from django.core.mail import EmailMessage, get_connection

from tests.fakes.raw_servers import _Server


class DripSMTP(_Server):
    """Greets like a mail server, one byte every `interval` seconds, without end."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__()
        self.interval = interval

    def _serve(self, conn: socket.socket) -> None:
        greeting = b"220 " + b"x" * 10_000
        for byte in greeting:
            if self._stop.is_set():
                return
            conn.sendall(bytes([byte]))
            time.sleep(self.interval)


class QuickSMTP(_Server):
    """Enough of SMTP for one message: it is accepted."""

    def _serve(self, conn: socket.socket) -> None:
        conn.sendall(b"220 quick ESMTP\r\n")
        reader = conn.makefile("rb")
        in_data = False
        while line := reader.readline():
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    conn.sendall(b"250 queued\r\n")
                continue
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                conn.sendall(b"250 quick\r\n")
            elif verb == b"DATA":
                in_data = True
                conn.sendall(b"354 go on\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")


def backend(port: int, *, deadline: float):
    return get_connection(
        "plumbing.mail.DeadlineEmailBackend",
        host="127.0.0.1",
        port=port,
        timeout=5,
        deadline=deadline,
    )


def message(connection) -> EmailMessage:
    return EmailMessage(
        "Hello", "Body", "from@example.com", ["to@example.com"], connection=connection
    )


def test_an_smtp_url_gets_the_backend_with_a_deadline():
    from tests.platform_site.test_settings import PRODUCTION
    from tests.subprocess_django import run_django

    code = (
        "from django.conf import settings; "
        "print(settings.EMAIL_BACKEND, settings.EMAIL_DEADLINE_SECONDS)"
    )
    for url in ("smtp://mail.example.com:25", "smtp+tls://u:p@mail.example.com:587"):
        result = run_django(code, **PRODUCTION, EMAIL_URL=url, EMAIL_DEADLINE_SECONDS="45")
        assert result.stdout.split() == ["plumbing.mail.DeadlineEmailBackend", "45.0"], (
            result.stderr
        )


def test_a_mail_server_that_drips_its_greeting_ends_the_send_at_the_deadline():
    with DripSMTP() as slow:
        # A byte comes every 0.1 s: the per-operation timeout of 5 s is never reached.
        connection = backend(slow.port, deadline=1.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not finish within 1 s"):
            message(connection).send()
        elapsed = time.monotonic() - started

    assert elapsed < 1.0 + 1.0


def test_a_mail_server_that_answers_gets_the_message():
    with QuickSMTP() as quick:
        connection = backend(quick.port, deadline=5.0)
        assert message(connection).send() == 1
