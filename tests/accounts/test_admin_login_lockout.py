"""The break-glass password login at /admin/login/ locks out after repeated failures, per
account and per address (django-axes); the Auth0 login is not touched by it."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db

PASSWORD = "operator-password"  # AdminFactory's
SUB = "google-oauth2|115161017478488946656"


def admin_login(client, username: str, password: str, *, address: str = "127.0.0.1"):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password},
        REMOTE_ADDR=address,
    )


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def assert_locked_out(response) -> None:
    assert response.status_code == 429
    body = response.content.decode()
    assert "Too many failed logins" in body
    assert "Log in with Auth0" in body or "try again" in body


def test_the_right_password_is_refused_after_repeated_wrong_ones_for_one_account(client, operator):
    # Each guess from another address: the account itself is what gets locked.
    for n in range(settings.AXES_FAILURE_LIMIT):
        response = admin_login(client, operator.email, "wrong", address=f"203.0.113.{n + 1}")
        assert not logged_in(client)

    response = admin_login(client, operator.email, PASSWORD, address="198.51.100.7")

    assert_locked_out(response)
    assert not logged_in(client)


def test_the_account_is_the_same_whatever_case_or_spaces_it_is_typed_with(client, operator):
    for n in range(settings.AXES_FAILURE_LIMIT):
        typed = f"  {operator.email.upper()} " if n % 2 else operator.email
        admin_login(client, typed, "wrong", address=f"203.0.113.{n + 1}")

    assert_locked_out(admin_login(client, operator.email, PASSWORD, address="198.51.100.7"))


def test_one_address_guessing_many_accounts_is_locked_out(client, operator):
    for n in range(settings.AXES_FAILURE_LIMIT):
        admin_login(client, f"someone{n}@example.com", "wrong", address="203.0.113.9")

    assert_locked_out(admin_login(client, operator.email, PASSWORD, address="203.0.113.9"))
    assert not logged_in(client)
    # The account itself is not locked: from another address the operator gets in.
    response = admin_login(client, operator.email, PASSWORD, address="198.51.100.7")
    assert response.status_code == 302
    assert logged_in(client)


def test_fewer_failures_than_the_limit_do_not_lock_anyone_out(client, operator):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        admin_login(client, operator.email, "wrong")

    response = admin_login(client, operator.email, PASSWORD)

    assert response.status_code == 302
    assert logged_in(client)


def test_the_lockout_ends_after_the_cool_off(client, operator):
    from axes.models import AccessAttempt

    for _ in range(settings.AXES_FAILURE_LIMIT):
        admin_login(client, operator.email, "wrong")
    assert_locked_out(admin_login(client, operator.email, PASSWORD))

    AccessAttempt.objects.update(
        attempt_time=AccessAttempt.objects.values("attempt_time")[0]["attempt_time"]
        - settings.AXES_COOLOFF_TIME
        - timedelta(seconds=1)
    )

    assert admin_login(client, operator.email, PASSWORD).status_code == 302
    assert logged_in(client)


def test_an_address_locked_out_of_the_password_login_can_still_log_in_with_auth0(
    client, operator, fake_auth0
):
    for n in range(settings.AXES_FAILURE_LIMIT):
        admin_login(client, f"someone{n}@example.com", "wrong")
    assert_locked_out(admin_login(client, operator.email, PASSWORD))

    begin = client.post("/auth/login/auth0/")
    state = parse_qs(urlsplit(begin["Location"]).query)["state"][0]
    fake_auth0.next_id_token = fake_auth0.id_token(sub=SUB, email="grace@example.com")
    response = client.get("/auth/complete/auth0/", {"code": "the-code", "state": state})

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == SUB


def test_behind_a_trusted_proxy_the_address_is_the_one_the_proxy_saw(client, operator, settings):
    settings.TRUSTED_PROXY = 1
    proxy = "127.0.0.2"
    # The attacker writes its own X-Forwarded-For entries; the proxy appends what it saw.
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post(
            "/admin/login/",
            {"username": f"someone{n}@example.com", "password": "wrong"},
            REMOTE_ADDR=proxy,
            HTTP_X_FORWARDED_FOR=f"198.51.100.{n}, 203.0.113.9",
        )

    locked = client.post(
        "/admin/login/",
        {"username": operator.email, "password": PASSWORD},
        REMOTE_ADDR=proxy,
        HTTP_X_FORWARDED_FOR="203.0.113.9",
    )
    assert_locked_out(locked)
    # Another client behind the same proxy is not locked out.
    response = client.post(
        "/admin/login/",
        {"username": operator.email, "password": PASSWORD},
        REMOTE_ADDR=proxy,
        HTTP_X_FORWARDED_FOR="203.0.113.10",
    )
    assert response.status_code == 302


def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(client, operator):
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post(
            "/admin/login/",
            {"username": f"someone{n}@example.com", "password": "wrong"},
            REMOTE_ADDR="203.0.113.9",
            HTTP_X_FORWARDED_FOR=f"198.51.100.{n}",
        )

    assert_locked_out(admin_login(client, operator.email, PASSWORD, address="203.0.113.9"))
