"""Run work in real threads that start together, each with its own database connection."""

import threading

from django.db import connection


def run_at_once(target, items, *, timeout: float = 120) -> None:
    """Call target(item) for each item in its own thread, released at the same moment.
    A failure in any thread fails the test."""
    barrier = threading.Barrier(len(items))
    errors = []

    def worker(item):
        try:
            barrier.wait(timeout=30)
            target(item)
        except Exception as error:  # surfaced below: a thread must not fail silently
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert errors == []
