"""What the benchmarks share: a scratch database (created, used, dropped; its name starts
with `bench`), and Django set up on it as production runs (DEBUG off in this process)."""

from __future__ import annotations

import os
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
