"""The seed's `users` table is a contract: its columns, types, defaults and queries."""

import pytest
from django.db import IntegrityError, transaction

from tests.factories import UserFactory
from tests.seed_schema import SEED_COLUMNS, columns_of, run

pytestmark = pytest.mark.django_db


def test_users_has_every_seed_column_with_its_type_and_default():
    actual = columns_of("users")
    for column, expected in SEED_COLUMNS["users"].items():
        assert actual.get(column) == expected, column


def test_a_seed_style_insert_naming_only_id_and_email_gets_the_defaults():
    run("INSERT INTO users (id, email) VALUES ('auth0|raw', 'raw@example.com')")

    [row] = run(
        "SELECT created_at, login_count, status, is_admin, last_login_at FROM users "
        "WHERE id = 'auth0|raw'"
    )
    assert row["created_at"] is not None
    assert row["login_count"] == 0
    assert row["status"] == "active"
    assert row["is_admin"] is False
    assert row["last_login_at"] is None


def test_a_raw_row_is_a_working_user_without_a_local_password():
    from accounts.models import User

    run("INSERT INTO users (id, email) VALUES ('auth0|raw', 'raw@example.com')")
    user = User.objects.get(pk="auth0|raw")
    assert user.is_active
    assert not user.has_usable_password()


def test_find_user_by_email_runs_verbatim():
    UserFactory(email="user@example.com", name="Found")
    UserFactory(email="other@example.com")

    rows = run("SELECT * FROM users WHERE email = 'user@example.com';")

    assert [r["name"] for r in rows] == ["Found"]


def test_admin_users_runs_verbatim():
    UserFactory(email="op@example.com", is_admin=True)
    UserFactory(email="customer@example.com")

    rows = run("SELECT * FROM users WHERE is_admin = true;")

    assert [r["email"] for r in rows] == ["op@example.com"]


def test_status_outside_the_three_values_is_refused_by_the_database():
    with pytest.raises(IntegrityError), transaction.atomic():
        run("INSERT INTO users (id, email, status) VALUES ('auth0|x', 'x@example.com', 'banned')")


def test_email_is_unique_in_the_database():
    run("INSERT INTO users (id, email) VALUES ('auth0|a', 'same@example.com')")
    with pytest.raises(IntegrityError), transaction.atomic():
        run("INSERT INTO users (id, email) VALUES ('auth0|b', 'same@example.com')")
