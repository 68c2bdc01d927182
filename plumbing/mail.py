"""SMTP with a total deadline.

Django's SMTP backend gives each socket operation `EMAIL_TIMEOUT`, so a mail server that
sends its greeting (or any answer) one byte at a time holds the sending job forever, and
with it the rows the job has locked (`billing.alerts.spending_alerts_send`). This backend
gives one `send_messages` call `EMAIL_DEADLINE_SECONDS` in all: when they have passed, the
sockets it opened are shut down, the blocked read ends, and the send fails with a
`TimeoutError` saying so (the job records it and retries).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from django.conf import settings
from django.core.mail.backends.smtp import EmailBackend


class DeadlineEmailBackend(EmailBackend):
    def __init__(self, *args, deadline: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = float(deadline if deadline is not None else settings.EMAIL_DEADLINE_SECONDS)
        self._sockets: list[socket.socket] = []
        opened = self._sockets

        class Watched(super().connection_class):
            # Every socket smtplib opens (before the greeting is read), so the watchdog can
            # end a read that would not end by itself.
            def _get_socket(self, host, port, timeout):
                sock = super()._get_socket(host, port, timeout)
                opened.append(sock)
                return sock

        self._watched = Watched

    @property
    def connection_class(self):
        return self._watched

    def send_messages(self, email_messages):
        expired = threading.Event()

        def cut():
            expired.set()
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.deadline, cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            return super().send_messages(email_messages)
        except Exception as error:
            if expired.is_set():
                raise TimeoutError(
                    f"the mail server at {self.host}:{self.port} did not finish within "
                    f"{self.deadline:g} s"
                ) from error
            raise
        finally:
            watchdog.cancel()
            if expired.is_set():
                self.connection = None  # shut down: the next send opens a new one
            self._sockets.clear()
