"""`make run` works on a demo database of its own, whatever `.env` says: with a production
`.env` beside manage.py, the production database is not touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
PROJECT = (
    "manage.py",
    "Makefile",
    "requirements.txt",
    "requirements-dev.txt",
    "platform_site",
    "plumbing",
    "accounts",
    "clusters",
    "billing",
    "console",
    "templates",
)

pytestmark = [
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
    pytest.mark.django_db,
]


def copy_project(into: Path) -> Path:
    """A copy of the project to run `make` in, so its .env and .localdb are the test's."""
    project = into / "project"
    project.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=ignore)
        else:
            shutil.copy2(source, project / name)
    return project


def python(project: Path, code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "DATABASE_URL"}}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=project,
        env={**clean, "DJANGO_SETTINGS_MODULE": "platform_site.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def make(project: Path, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "DATABASE_URL"}}
    # -o: the virtualenv is the one running this test; make must not try to rebuild it.
    return subprocess.run(
        ["make", f"VENV={VENV}", "-o", f"{VENV}/.installed", "-o", f"{VENV}/bin/python", *args],
        cwd=project,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def production_url(django_db_blocker):
    """A scratch PostgreSQL database standing for production's (dropped afterwards)."""
    import uuid

    import psycopg
    from django.db import connection

    settings = connection.settings_dict
    name = f"prodlike_{uuid.uuid4().hex[:8]}"
    params = {
        "host": settings["HOST"] or "127.0.0.1",
        "port": settings["PORT"] or 5432,
        "user": settings["USER"],
        "dbname": "postgres",
        "autocommit": True,
    }
    with django_db_blocker.unblock(), psycopg.connect(**params) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    host = quote(str(params["host"]), safe="")
    yield f"postgres://{params['user']}@{host}:{params['port']}/{name}"
    with django_db_blocker.unblock(), psycopg.connect(**params) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_make_run_seeds_its_own_database_and_leaves_the_one_in_env_alone(tmp_path, production_url):
    project = copy_project(tmp_path)
    # A production database with a real person on the demo operator's address (only the
    # tables that holds, which is all the check below reads).
    python(
        project,
        "from django.core.management import call_command\n"
        "call_command('migrate', 'accounts', verbosity=0)\n"
        "from accounts.models import User\n"
        "User.objects.create_user('admin@example.com', 'their-own-password')",
        DEBUG="1",
        DATABASE_URL=production_url,
    )
    (project / ".env").write_text(
        "DEBUG=0\n"
        f"DATABASE_URL={production_url}\n"
        "SECRET_KEY=a-production-secret\n"
        "ALLOWED_HOSTS=console.example.com\n"
        "AUTH0_DOMAIN=example.eu.auth0.com\nAUTH0_CLIENT_ID=id\nAUTH0_CLIENT_SECRET=secret\n"
        "FIELD_ENCRYPTION_KEYS=ZGVtby1vbmx5LWtleS1uZXZlci11c2UtaW4tcHJvZCE=\n"
    )

    result = make(project, "demo-database")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Admin login: admin@example.com / demo-admin-password" in result.stdout
    check = (
        "from accounts.models import User\n"
        "u = User.objects.get(email='admin@example.com')\n"
        "print(u.check_password('their-own-password'), u.is_superuser, User.objects.count())"
    )
    assert python(project, check, DEBUG="1", DATABASE_URL=production_url).split() == [
        "True",
        "False",
        "1",
    ]
    # The demo went to the embedded PostgreSQL that make run keeps in the checkout.
    assert (project / ".localdb" / "demo" / "PG_VERSION").is_file()
