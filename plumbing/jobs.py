"""Background jobs on Procrastinate: jobs are rows in PostgreSQL, so a job deferred inside
a transaction exists only if that transaction commits, and any number of workers on any
number of machines share the queue (`python manage.py worker`, plumbing/worker.py).

Each app keeps its jobs in its `tasks.py` (autodiscovered); this module holds what they
share: deferring once, the two kinds of failure, and the watch over dead workers.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging

from django.db import transaction
from django.utils import timezone
from procrastinate import RetryStrategy, sql
from procrastinate.contrib.django import app
from procrastinate.exceptions import AlreadyEnqueued

from plumbing import outbound

logger = logging.getLogger(__name__)


class TargetGone(Exception):
    """The cluster, user or event a job was for no longer exists: the job ends failed with
    this reason and is not retried."""


class StillFailing(Exception):
    """An outside system is still down or refusing: retried with backoff."""


# Retried with growing waits (5 s, 25 s, 2 min, 10 min, ...) for outside systems that are
# down; a job for something that no longer exists, or a bug, is not retried.
OUTSIDE_SYSTEM_RETRY = RetryStrategy(
    max_attempts=6, exponential_wait=5, retry_exceptions={StillFailing}
)


def background(func):
    """A job runs off the request path: its outside calls get the background deadline and
    their retries (`plumbing.outbound`), not a web request's single short attempt."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        with outbound.background_work():
            return func(*args, **kwargs)

    return run


def defer(task, *, queueing_lock: str | None = None, lock: str | None = None, **kwargs):
    """Queue `task(**kwargs)` in the current transaction: it exists only if the transaction
    commits. With a `queueing_lock`, a job already waiting under the same lock is enough
    (returns None); a `lock` keeps jobs sharing it from running at the same time."""
    options = {
        k: _lock_name(v) for k, v in {"queueing_lock": queueing_lock, "lock": lock}.items() if v
    }
    configured = task.configure(**options) if options else task
    if not queueing_lock:
        # Nothing to be a duplicate of: no savepoint (two round trips a job saved, and
        # usage batches queue one each).
        return configured.defer(**kwargs)
    try:
        with transaction.atomic():  # a savepoint: a duplicate must not break the caller's
            return configured.defer(**kwargs)
    except AlreadyEnqueued:
        return None


def _lock_name(name: str) -> str:
    """A lock's name as stored: names made of printable characters only are kept as they
    are; any other is replaced by a digest of it (same name, same digest). Procrastinate
    reads a duplicate queueing lock back from PostgreSQL's error text with a pattern that
    stops at a line break: a lock naming, say, an event id sent with one raised an
    AssertionError instead of AlreadyEnqueued."""
    if name.isprintable():
        return name
    return "sha256:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


# Seconds without a heartbeat after which a worker is taken for dead and its jobs retried
# (workers beat every 10 s by default).
DEAD_WORKER_AFTER = 60


def stalled_jobs_retry(*, seconds_since_heartbeat: float = DEAD_WORKER_AFTER) -> int:
    """Put back in the queue the jobs of workers that died (killed, machine lost)."""
    stalled = app.connector.get_sync_connector().execute_query_all(
        query=sql.queries["select_stalled_jobs_by_heartbeat"],
        queue=None,
        task_name=None,
        seconds_since_heartbeat=seconds_since_heartbeat,
    )
    now = timezone.now()
    for job in stalled:
        app.job_manager.retry_job_by_id(job_id=job["id"], retry_at=now)
        logger.warning("job %s (%s) of a dead worker is queued again", job["id"], job["task_name"])
    return len(stalled)


def jobs_retry(*, job_ids: list[int]) -> int:
    """Queue again the given jobs that failed or are stuck running; returns how many."""
    from procrastinate.contrib.django.models import ProcrastinateJob

    retriable = ProcrastinateJob.objects.filter(pk__in=job_ids, status__in=["failed", "doing"])
    now = timezone.now()
    count = 0
    for job_id in retriable.values_list("pk", flat=True):
        app.job_manager.retry_job_by_id(job_id=job_id, retry_at=now)
        count += 1
    return count


def jobs_cancel(*, job_ids: list[int]) -> int:
    """Cancel the given jobs that are still waiting; returns how many."""
    from procrastinate.contrib.django.models import ProcrastinateJob

    waiting = ProcrastinateJob.objects.filter(pk__in=job_ids, status="todo")
    return sum(
        bool(app.job_manager.cancel_job_by_id(job_id=job_id))
        for job_id in waiting.values_list("pk", flat=True)
    )


@app.periodic(cron="* * * * *")
@app.task(queue="maintenance", name="plumbing.retry_stalled_jobs")
def retry_stalled_jobs(timestamp: int) -> int:
    return stalled_jobs_retry()


@app.periodic(cron="30 3 * * *")
@app.task(queue="maintenance", name="plumbing.delete_old_jobs")
def delete_old_jobs(timestamp: int) -> None:
    """Succeeded jobs are kept a week for the record; failed ones stay until dealt with."""
    app.connector.get_sync_connector().execute_query(
        query=sql.queries["delete_old_jobs"],
        nb_hours=7 * 24,
        queue=None,
        statuses=["succeeded"],
    )


def queued_message(count: int, what: str, *, task_name: str):
    """What an admin action that queued jobs says: how many, and where to watch them."""
    from django.urls import reverse
    from django.utils.html import format_html

    url = reverse("admin:procrastinate_procrastinatejob_changelist") + f"?task_name={task_name}"
    return format_html('{} {} queued; <a href="{}">watch them in Jobs</a>.', count, what, url)


@app.task(queue="maintenance", name="plumbing.ping")
def ping() -> str:
    """A health check that does nothing: a "pong" result shows that a worker takes jobs from
    the queue it was deferred to (`ping.configure(queue=...).defer()`)."""
    return "pong"


def utc_day_of(timestamp: int) -> dt.date:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).date()
