"""`manage.py check_database` explains connection failures in plain words."""

import re
from urllib.parse import quote

import pytest
from django.core.management import CommandError, call_command

from tests.accounts.test_row_level_security import SUPABASE_STUB, supabase_roles  # noqa: F401
from tests.fakes.postgres_wire import RefusingPostgres
from tests.sockets import free_port


def check(url: str, capsys) -> tuple[str, str]:
    try:
        call_command("check_database", url=url)
    except CommandError as error:
        return capsys.readouterr().out, str(error)
    return capsys.readouterr().out, ""


def test_a_refused_connection_is_explained_and_fails(capsys):
    port = free_port()
    out, error = check(f"postgresql://postgres:secret@127.0.0.1:{port}/postgres", capsys)
    assert f"Nothing accepted the connection at 127.0.0.1:{port}" in error
    assert "Check the host and port" in error
    assert "secret" not in out + error


def test_a_bad_password_is_explained_with_the_url_encoding_rule(capsys):
    with RefusingPostgres(mode="password") as server:
        out, error = check(f"postgresql://postgres:p%40ss@127.0.0.1:{server.port}/postgres", capsys)
    # The URL's %40 reached the server as '@': encoding in the URL is decoded once.
    assert server.passwords == ["p@ss"]
    assert "refused the password for user 'postgres'" in error
    assert "'@' is written %40" in error
    assert "p@ss" not in out + error and "p%40ss" not in out + error


def test_a_double_encoded_password_is_pointed_out(capsys):
    with RefusingPostgres(mode="password") as server:
        _, error = check(f"postgresql://postgres:p%2540ss@127.0.0.1:{server.port}/postgres", capsys)
    assert server.passwords == ["p%40ss"]
    assert "encoded twice" in error


def test_tenant_or_user_not_found_names_project_ref_and_region(capsys):
    with RefusingPostgres(mode="tenant") as server:
        _, error = check(
            f"postgresql://postgres.wrongref:pw@127.0.0.1:{server.port}/postgres", capsys
        )
    assert "Tenant or user not found" in error
    assert "project reference" in error
    assert "region" in error


def test_the_kind_of_connection_is_named(capsys):
    port = free_port()
    out, _ = check(f"postgresql://u:p@127.0.0.1:{port}/postgres", capsys)
    assert "direct connection (session mode)" in out
    # 6543 on a local fake: nothing listens, but the command still says what 6543 means.
    out, _ = check("postgresql://u:p@127.0.0.1:6543/postgres", capsys)
    assert "pooler (transaction mode)" in out
    assert "CONN_MAX_AGE=0" in out


def test_an_unencoded_at_sign_in_the_password_is_pointed_out(capsys):
    port = free_port()
    _, error = check(f"postgresql://postgres:p@ss@127.0.0.1:{port}/postgres", capsys)
    assert "must be written %40" in error


@pytest.mark.django_db
def test_the_configured_database_is_reported_ok(capsys):
    call_command("check_database")
    out = capsys.readouterr().out
    assert "Database connection OK." in out
    assert "PostgreSQL" in out


def test_database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    password = f":{quote(s['PASSWORD'], safe='')}" if s["PASSWORD"] else ""
    # The embedded PostgreSQL's host is a socket folder, percent-encoded in a URL.
    host = quote(s["HOST"], safe="") + (f":{s['PORT']}" if s["PORT"] else "")
    return f"postgresql://{s['USER']}{password}@{host}/{s['NAME']}"


test_database_url.__test__ = False


@pytest.mark.django_db
def test_the_row_level_security_of_every_table_is_reported(capsys):
    out, error = check(test_database_url(), capsys)
    assert error == ""
    assert "Database connection OK." in out
    assert re.search(r"Row Level Security: on for (\d+) of \1 tables in public\.", out)
    for table in ("users", "usage_daily", "django_session", "procrastinate_jobs"):
        assert re.search(
            rf"^  {table}: Row Level Security on, no policy: only its owner \(\w+\) reads it\.$",
            out,
            re.M,
        ), table
    # The test database is plain PostgreSQL: it says why there is no policy.
    assert "no function auth.jwt() (it is not Supabase)" in out


@pytest.fixture
def committed_sql(transactional_db):
    """Run SQL that stays after the statement (transactional test), with its undoing."""
    from django.db import connection

    undo = []

    def run(sql: str, undo_sql: str = ""):
        with connection.cursor() as cursor:
            cursor.execute(sql)
        if undo_sql:
            undo.append(undo_sql)

    yield run
    with connection.cursor() as cursor:
        for sql in reversed(undo):
            cursor.execute(sql)


def test_a_table_without_row_level_security_fails_the_check(committed_sql, capsys):
    committed_sql(
        "CREATE TABLE public.rls_probe_plain (id int)", "DROP TABLE public.rls_probe_plain"
    )
    out, error = check(test_database_url(), capsys)
    assert "rls_probe_plain: Row Level Security OFF" in out
    assert "rls_probe_plain: Row Level Security is off." in error
    assert "python manage.py migrate" in error


@pytest.mark.usefixtures("supabase_roles")
def test_a_forced_table_and_a_policy_open_to_anon_fail_the_check(committed_sql, capsys):
    committed_sql(
        "ALTER TABLE django_session FORCE ROW LEVEL SECURITY",
        "ALTER TABLE django_session NO FORCE ROW LEVEL SECURITY",
    )
    committed_sql(
        "CREATE POLICY everyone_reads ON hopsworks_clusters FOR SELECT TO anon USING (true)",
        "DROP POLICY everyone_reads ON hopsworks_clusters",
    )
    out, error = check(test_database_url(), capsys)
    assert "hopsworks_clusters: everyone_reads opens rows to anon" in error
    assert "policy everyone_reads: SELECT for anon on all rows" in out
    assert "django_session: FORCE ROW LEVEL SECURITY is on" in error


@pytest.mark.usefixtures("supabase_roles")
def test_on_supabase_the_own_rows_policies_are_reported(committed_sql, capsys):
    committed_sql(
        SUPABASE_STUB,
        "DROP SCHEMA auth CASCADE;"  # the policies depend on auth.jwt(): they go too
        " REVOKE ALL ON ALL TABLES IN SCHEMA public FROM anon, authenticated;"
        " REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM anon, authenticated;",
    )
    call_command("migrate", verbosity=0)

    out, error = check(test_database_url(), capsys)
    assert error == ""
    assert "The anon key reads nothing" in out
    for table in ("users", "usage_daily", "user_credits", "billing_history"):
        own_rows = "Row Level Security on; authenticated users read only their own rows"
        assert f"  {table}: {own_rows}" in out
    assert "  django_session: Row Level Security on, no policy" in out
