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


# Lock waits of this test's database only: the suite's other workers (and anyone else on the
# server) run their own databases on the same PostgreSQL, and a wait of theirs is not ours.
_WAITING = """
    SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database() AND l.pid <> %s
"""


def lock_waits(cursor=None, *, besides: int = 0, locktype: str | None = None) -> int:
    """How many locks backends of this database (other than pid `besides`) wait for (of
    `locktype`, if given). `cursor`: a connection's own, else Django's default."""
    sql, params = _WAITING, [besides]
    if locktype is not None:
        sql, params = sql + " AND l.locktype = %s", [besides, locktype]
    if cursor is not None:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]
    with connection.cursor() as own:
        own.execute(sql, params)
        return own.fetchone()[0]
