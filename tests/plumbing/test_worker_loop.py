"""The loop around Procrastinate's worker (plumbing/worker.py): what it does when a run ends.
The real worker against a real database is in test_job_workers.py; here each run's end is
scripted, to see the waits, and which ends stop the loop for good."""

import asyncio
import os
import signal

import pytest
from procrastinate.exceptions import ConnectorException

from plumbing import worker

SIGTERMED = "sigterm"  # the run waits for jobs until the process gets SIGTERM


class ScriptedApp:
    """Each call of run_worker_async ends as the next item says: raise it, return (None),
    or wait for jobs until a SIGTERM cancels it."""

    def __init__(self, *ends):
        self.ends = list(ends)
        self.calls = []
        self.cancelled = 0

    async def run_worker_async(self, **options):
        self.calls.append(options)
        end = self.ends.pop(0)
        if isinstance(end, BaseException):
            raise end
        if end == SIGTERMED:
            os.kill(os.getpid(), signal.SIGTERM)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


@pytest.fixture
def waits(monkeypatch):
    """The waits between runs, recorded instead of slept."""
    seen = []

    async def wait_for(awaitable, timeout):
        seen.append(timeout)
        awaitable.close()
        raise TimeoutError

    monkeypatch.setattr(worker.asyncio, "wait_for", wait_for)
    return seen


def lost() -> ConnectorException:
    try:
        raise ConnectorException() from OSError("terminating connection")
    except ConnectorException as exc:
        return exc


def test_a_run_that_lost_the_database_is_started_again_after_doubling_waits(waits, caplog):
    app = ScriptedApp(lost(), lost(), lost(), None)

    asyncio.run(worker.run_worker(app, wait=False, queues=["q"]))

    assert waits == [1.0, 2.0, 4.0]
    assert app.calls == [{"wait": False, "queues": ["q"], "install_signal_handlers": False}] * 4
    assert "The worker lost the database (terminating connection)." in caplog.text


def test_the_waits_stop_growing_at_thirty_seconds(waits):
    app = ScriptedApp(*[lost()] * 7, None)

    asyncio.run(worker.run_worker(app, wait=False))

    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_waiting_worker_that_stopped_by_itself_is_started_again_until_a_signal(waits, caplog):
    # A waiting worker returns by itself only when a side task (heartbeat, periodic
    # deferrer) failed; a signal cancels the run, which finishes its jobs, and ends the loop.
    app = ScriptedApp(None, lost(), SIGTERMED)

    asyncio.run(worker.run_worker(app))

    assert len(app.calls) == 3
    assert app.cancelled == 1
    assert waits == [1.0, 2.0]
    assert "The worker stopped by itself." in caplog.text


def test_any_other_error_is_not_hidden(waits):
    app = ScriptedApp(lost(), ValueError("a bug"))

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(worker.run_worker(app, wait=False))
    assert waits == [1.0]
