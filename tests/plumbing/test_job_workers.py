"""A worker outlives the database going away and coming back: it reconnects by itself."""

import time

import pytest
from django.db import connection

from clusters.tasks import place_waiting_users
from tests.workers import no_worker_outlives_its_test, start_worker  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def status_of(job_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", [job_id])
        return cursor.fetchone()[0]


def wait_for(job_id: int, status: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while status_of(job_id) != status:
        assert time.monotonic() < deadline, f"job {job_id} is {status_of(job_id)}, not {status}"
        time.sleep(0.2)


def test_a_worker_reconnects_after_the_database_dropped_its_connections():
    worker = start_worker("survivor", queues="hopsworks", one_shot=False)
    wait_for(place_waiting_users.defer(), "succeeded")  # the worker is up and working

    with connection.cursor() as cursor:  # the database drops every other session
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert all(terminated for (terminated,) in cursor.fetchall())

    wait_for(place_waiting_users.defer(), "succeeded")
    assert worker.poll() is None  # the same process, not a restart
