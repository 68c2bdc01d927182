"""What the benchmarks share: a scratch database (created, used, dropped; its name starts
with `bench`), and Django set up on it as production runs (DEBUG off in this process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

PROJECT = Path(__file__).resolve().parent.parent


def _server_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts._replace(path="/postgres").geturl(), parts.path.lstrip("/")


def recreate_database(url: str) -> None:
    server, name = _server_url(url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    server, name = _server_url(url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "1")  # the settings refuse to start without secrets else
    os.environ["DJANGO_SETTINGS_MODULE"] = "platform_site.settings"
    sys.path.insert(0, str(PROJECT))
    import django
    from django.conf import settings

    django.setup()
    # DEBUG makes Django keep every statement's SQL in connection.queries; production does
    # not, so neither does the benchmark process.
    settings.DEBUG = False


def measured_commit(*folders: str) -> str:
    """Which code was measured: the commit, and any uncommitted change in `folders`."""
    try:  # read-only
        commit = subprocess.run(
            ["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT), "status", "--porcelain", "--", *folders],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if dirty.strip():
        changed = ", ".join(line[3:] for line in dirty.splitlines() if line.strip())
        commit += f" + uncommitted changes in {changed}"
    return commit


def run_in_scratch(args, *, setup, benchmark, report, cleanup=None) -> int:
    """Create the scratch database, measure, always clean up (and drop the database unless
    --keep), then print the report and the figures (JSON to --json, else stdout)."""
    recreate_database(args.database_url)
    try:
        setup(args.database_url)
        figures = benchmark(args)
    finally:
        if cleanup is not None:
            cleanup()
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        if not args.keep:
            drop_database(args.database_url)
    print(report(figures), flush=True)
    text = json.dumps(figures, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
        print(f"\nfigures written to {args.json}")
    else:
        print("\n" + text)
    return 0
