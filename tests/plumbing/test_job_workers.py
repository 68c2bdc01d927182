"""A worker outlives the database going away and coming back: it reconnects by itself, in
the same process, whatever it was doing when its connections were dropped."""

import signal
import time

import psycopg
import pytest
from django.db import connection

from clusters.models import CapacityWait
from clusters.tasks import place_waiting_users
from tests.workers import database_url, no_worker_outlives_its_test, start_worker  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def status_of(job_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", [job_id])
        return cursor.fetchone()[0]


def wait_for(job_id: int, status: str, worker, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while status_of(job_id) != status:
        if worker.poll() is not None:
            errors = worker.communicate()[1].decode()[-3000:]
            pytest.fail(
                f"the worker ended ({worker.returncode}) with job {job_id} "
                f"{status_of(job_id)}:\n{errors}"
            )
        assert time.monotonic() < deadline, f"job {job_id} is {status_of(job_id)}, not {status}"
        time.sleep(0.2)


def terminate_the_others(cursor, *, besides: int) -> None:
    """Terminates every other client session on the test database (the worker's among them;
    one that ended meanwhile is simply gone)."""
    cursor.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND backend_type = 'client backend' "
        "AND pid NOT IN (pg_backend_pid(), %s)",
        [besides],
    )
    assert any(terminated for (terminated,) in cursor.fetchall())


def wait_until_a_statement_waits(statement: str, seconds: float = 30) -> None:
    """Until another session's statement containing `statement` waits for a lock."""
    deadline = time.monotonic() + seconds
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE %s",
                [f"%{statement}%"],
            )
            if cursor.fetchone()[0]:
                return
            assert time.monotonic() < deadline, f"no worker's {statement} waited"
            time.sleep(0.05)


def drop_connections_mid_statement(table: str, statement: str) -> None:
    """Holds `table` locked until a worker's `statement` waits for it, then terminates every
    other session: that statement's connection dies while it is in flight."""
    with psycopg.connect(database_url()) as locker:
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        wait_until_a_statement_waits(statement)
        with connection.cursor() as cursor:
            terminate_the_others(cursor, besides=locker.info.backend_pid)
        locker.rollback()


def test_a_worker_reconnects_after_the_database_dropped_its_connections():
    worker = start_worker("survivor", queues="hopsworks", one_shot=False)
    wait_for(place_waiting_users.defer(), "succeeded", worker)  # the worker is up and working

    with connection.cursor() as cursor:  # the database drops every other session
        terminate_the_others(cursor, besides=0)

    wait_for(place_waiting_users.defer(), "succeeded", worker)
    assert worker.poll() is None  # the same process, not a restart


@pytest.mark.parametrize(
    ("table", "statement"),
    [
        ("procrastinate_jobs", "procrastinate_fetch_job_v2"),  # fetching the next job
        ("procrastinate_workers", "procrastinate_update_heartbeat_v1"),  # the heartbeat
    ],
)
def test_a_worker_outlives_its_connection_dropped_in_the_middle_of_a_statement(table, statement):
    worker = start_worker("survivor", queues="hopsworks", one_shot=False)
    wait_for(place_waiting_users.defer(), "succeeded", worker)

    drop_connections_mid_statement(table, statement)

    wait_for(place_waiting_users.defer(), "succeeded", worker)
    assert worker.poll() is None


def test_a_signal_stops_the_worker_for_good():
    worker = start_worker("stopped", queues="hopsworks", one_shot=False)
    wait_for(place_waiting_users.defer(), "succeeded", worker)

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=30) == 0  # ended, not started again


def test_a_signal_lets_the_running_job_finish_before_the_worker_ends():
    worker = start_worker("finisher", queues="hopsworks", one_shot=False)
    wait_for(place_waiting_users.defer(), "succeeded", worker)
    table = CapacityWait._meta.db_table

    with psycopg.connect(database_url()) as locker:  # the next job blocks on this lock
        locker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        job = place_waiting_users.defer()
        wait_until_a_statement_waits(table)
        assert status_of(job) == "doing"

        worker.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert worker.poll() is None  # still waiting for its job
        locker.rollback()

    assert worker.wait(timeout=30) == 0
    assert status_of(job) == "succeeded"
