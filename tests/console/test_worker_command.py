"""`manage.py worker` on a database it cannot reach at the start: a clear error at once, not a
traceback after the connection pool's 30 s."""

import os
import subprocess
import sys

from tests.sockets import free_port
from tests.workers import ROOT


def test_a_worker_that_cannot_reach_the_database_says_so_at_once():
    url = f"postgres://postgres@127.0.0.1:{free_port()}/nothing"

    result = subprocess.run(
        [sys.executable, "manage.py", "worker"],
        cwd=ROOT,
        env={**os.environ, "DEBUG": "1", "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=25,  # the pool alone would give up only after 30 s
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "The worker cannot reach the database" in result.stderr
    assert "Connection refused" in result.stderr
    assert "Check DATABASE_URL" in result.stderr
