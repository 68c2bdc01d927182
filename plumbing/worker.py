"""The worker process: Procrastinate's worker, started again in the same process when the
database takes its connections away.

Procrastinate's worker ends as soon as one of its own statements fails: fetching the next
job, the heartbeat, the periodic deferrer. A database restart, a failover, or an
operator's `pg_terminate_backend` that lands while one of them is in flight stops the
worker for good (the connection pool only replaces connections found dead *before* use),
and upstream leaves restarting it to a supervisor (procrastinate#1116). `make run` has no
supervisor, and under one (a Kubernetes Deployment) each such worker would pay a process
start and the supervisor's growing back-off. So the worker is run again here, in the same
process: after a wait of 1 s, doubled up to 30 s while the database stays away, back to 1 s
once a run has lasted a minute.

Each run registers a new worker id. A fetch whose COMMIT reached PostgreSQL but whose answer
was lost leaves its job "doing" under the previous id, whose heartbeat has stopped, so the
stalled-job watch (`plumbing.jobs.retry_stalled_jobs`) queues it again: nothing is lost.

SIGINT or SIGTERM stops it for good: the running jobs finish first (Procrastinate's graceful
shutdown); a second signal stops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from procrastinate import App
from procrastinate.exceptions import ConnectorException

logger = logging.getLogger(__name__)

FIRST_WAIT_SECONDS = 1.0
MAX_WAIT_SECONDS = 30.0
# A run that lasted this long was healthy: the next failure starts the waits again from 1 s.
HEALTHY_RUN_SECONDS = 60.0


async def run_worker(app: App, **options: Any) -> None:
    """Run the worker on an opened `app` until a signal stops it (or, with `wait=False`,
    until no job is left), starting it again after the database dropped it."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    current: asyncio.Task | None = None

    def stop() -> None:
        # The first signal: a graceful stop (cancelling run_worker_async makes Procrastinate
        # finish the running jobs); then the default handlers, so a second one ends us now.
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
        stopping.set()
        if current is not None:
            current.cancel()

    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop)
    wait = FIRST_WAIT_SECONDS
    try:
        while not stopping.is_set():
            started = loop.time()
            current = asyncio.create_task(
                app.run_worker_async(**options, install_signal_handlers=False)
            )
            try:
                await current
            except asyncio.CancelledError:
                if stopping.is_set():
                    return
                raise
            except ConnectorException as exc:
                reason = " ".join(str(exc.__cause__ or exc).split()) or "database error"
                logger.warning("The worker lost the database (%s).", reason)
            else:
                if not options.get("wait", True) or stopping.is_set():
                    return
                # Procrastinate stops a worker whose heartbeat or periodic deferrer failed
                # (it has logged why).
                logger.warning("The worker stopped by itself.")
            finally:
                current = None
            if loop.time() - started >= HEALTHY_RUN_SECONDS:
                wait = FIRST_WAIT_SECONDS
            logger.warning("Starting the worker again in %g s.", wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
            wait = min(wait * 2, MAX_WAIT_SECONDS)
    finally:
        if not stopping.is_set():
            for number in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(number)
