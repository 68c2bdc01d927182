"""Real worker processes for tests on committed data (transactional tests): started on
the test database, never outliving their test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
STARTED: list[subprocess.Popen] = []


def database_url() -> str:
    """The test database's URL, for other processes and connections of the test's own."""
    s = connection.settings_dict
    auth = quote(s["USER"], safe="")
    if s["PASSWORD"]:
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = quote(str(s["HOST"] or "127.0.0.1"), safe="")
    return f"postgres://{auth}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


def worker_env() -> dict:
    # No periodic job queued at start: each test queues its own.
    return {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": database_url(),
        "JOBS_PERIODIC_MAX_DELAY": "0",
    }


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test():
    yield
    while STARTED:
        worker = STARTED.pop()
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)


def start_worker(name: str, *, queues: str, one_shot: bool = True) -> subprocess.Popen:
    command = ["manage.py", "worker", "--name", name, "--queues", queues]
    worker = subprocess.Popen(
        [sys.executable, *command, *(["--one-shot"] if one_shot else [])],
        cwd=ROOT,
        env=worker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    STARTED.append(worker)
    return worker


def finish(*workers: subprocess.Popen) -> None:
    for worker in workers:
        _, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors.decode()[-2000:]
