"""Run work in real threads that start together, each with its own database connection."""

import threading

from django.db import connection


def run_at_once(target, items, *, prepare=None, timeout: float = 120) -> None:
    """Call target(item) for each item in its own thread, released at the same moment.
    With `prepare`, each thread first runs prepare(item) and the barrier then releases
    target(prepared) (work that must happen before the race, like starting a login).
    A failure in any thread fails the test."""
    barrier = threading.Barrier(len(items))
    errors = []

    def worker(item):
        try:
            if prepare is not None:
                item = prepare(item)
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
