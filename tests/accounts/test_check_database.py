"""`manage.py check_database` explains connection failures in plain words."""

import pytest
from django.core.management import CommandError, call_command

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
