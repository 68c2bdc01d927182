"""Running queued jobs inside a test.

Most tests run in one transaction that is rolled back at the end, which a real worker (its
own connection) cannot see. `run_jobs()` does a worker's round in this thread and
transaction instead, through Procrastinate's own SQL (register a worker, fetch the next
job, finish it): the queue itself is real, only the loop is here. The worker processes
themselves are tested in tests/console/test_workers.py against committed data.
"""

from __future__ import annotations

import contextlib
import json

from procrastinate import sql
from procrastinate.contrib.django import app

from plumbing.jobs import StillFailing, TargetGone


def run_queued_jobs(*, limit: int = 200) -> list[tuple[str, str]]:
    """Run every job waiting (jobs deferred by these jobs too); returns (task, status)."""
    connector = app.connector.get_sync_connector()
    worker = connector.execute_query_one(query=sql.queries["register_worker"])["worker_id"]
    ran = []
    try:
        for _ in range(limit):
            job = connector.execute_query_one(
                query=sql.queries["fetch_job"], queues=None, worker_id=worker
            )
            if job is None or job["id"] is None:
                break
            task = app.tasks[job["task_name"]]
            args = job["args"]
            args = json.loads(args) if isinstance(args, str) else args  # Django leaves jsonb text
            try:
                task.func(**args)
            except (StillFailing, TargetGone):  # the job's own failure: the test reads it
                status = "failed"
            except Exception:
                connector.execute_query(
                    query=sql.queries["finish_job"],
                    job_id=job["id"],
                    status="failed",
                    delete_job=False,
                )
                raise  # anything else is a bug the test must show
            else:
                status = "succeeded"
            connector.execute_query(
                query=sql.queries["finish_job"], job_id=job["id"], status=status, delete_job=False
            )
            ran.append((job["task_name"], status))
    finally:
        connector.execute_query(query=sql.queries["unregister_worker"], worker_id=worker)
    return ran


@contextlib.contextmanager
def run_jobs():
    """`with run_jobs(): ...` runs the jobs queued inside the block when it ends."""
    yield
    run_queued_jobs()


def job_with_status(status: str) -> int:
    """A queued `clusters.place_waiting_users` job, brought to `status` ("todo", "failed",
    "succeeded") through Procrastinate's own SQL; returns its id."""
    from clusters.tasks import place_waiting_users

    job_id = place_waiting_users.defer()
    if status == "todo":
        return job_id
    connector = app.connector.get_sync_connector()
    worker = connector.execute_query_one(query=sql.queries["register_worker"])["worker_id"]
    fetched = connector.execute_query_one(
        query=sql.queries["fetch_job"], queues=None, worker_id=worker
    )
    assert fetched["id"] == job_id
    connector.execute_query(
        query=sql.queries["finish_job"], job_id=job_id, status=status, delete_job=False
    )
    return job_id
