"""Operators' sessions end after a working day without a request; users' keep Django's age."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.middleware import REFRESHED_AT

pytestmark = pytest.mark.django_db


def session_row(client) -> Session:
    return Session.objects.get(session_key=client.cookies[settings.SESSION_COOKIE_NAME].value)


def test_an_operator_session_lasts_a_working_day_from_the_last_request(operator_client):
    response = operator_client.get("/admin/")

    assert response.status_code == 200
    idle = settings.OPERATOR_SESSION_IDLE_SECONDS
    assert idle == 8 * 3600
    expires = session_row(operator_client).expire_date
    assert abs(expires - (timezone.now() + timedelta(seconds=idle))) < timedelta(minutes=1)


def test_an_operator_idle_for_longer_than_that_must_log_in_again(operator_client):
    operator_client.get("/admin/")
    # A working day passes without a request: the session's expiry is behind us.
    Session.objects.filter(pk=session_row(operator_client).pk).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )

    response = operator_client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def a_minute_passes(client):
    """As if the operator's last expiry was set a minute (the refresh interval) ago."""
    session = client.session
    session[REFRESHED_AT] -= settings.OPERATOR_SESSION_REFRESH_SECONDS
    session.save()
    Session.objects.filter(pk=session_row(client).pk).update(
        expire_date=timezone.now() + timedelta(minutes=5)
    )


def test_a_request_a_minute_later_pushes_the_expiry_back(operator_client):
    operator_client.get("/admin/")
    a_minute_passes(operator_client)

    response = operator_client.get("/admin/")

    assert session_row(operator_client).expire_date > timezone.now() + timedelta(hours=7)
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["max-age"] == settings.OPERATOR_SESSION_IDLE_SECONDS


def test_requests_within_the_minute_do_not_write_the_session(operator_client):
    """The expiry moves at most once a minute: a page is not a write and a commit."""
    operator_client.get("/admin/")
    expires = session_row(operator_client).expire_date

    with CaptureQueriesContext(connection) as captured:
        response = operator_client.get("/admin/jsi18n/")

    assert response.status_code == 200
    writes = [q["sql"] for q in captured.captured_queries if "django_session" in q["sql"]]
    assert [sql.split()[0] for sql in writes] == ["SELECT"]
    assert settings.SESSION_COOKIE_NAME not in response.cookies
    assert session_row(operator_client).expire_date == expires


def test_the_session_ends_at_most_a_minute_early(operator_client):
    """Never later than the idle time after the last request, at most a minute before it."""
    operator_client.get("/admin/")
    last_request = timezone.now()
    operator_client.get("/admin/")  # within the minute: the expiry stays
    idle = timedelta(seconds=settings.OPERATOR_SESSION_IDLE_SECONDS)
    refresh = timedelta(seconds=settings.OPERATOR_SESSION_REFRESH_SECONDS)

    expires = session_row(operator_client).expire_date

    assert last_request + idle - refresh <= expires <= timezone.now() + idle


def test_the_password_login_itself_starts_a_working_day_session(client, operator):
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": operator.email, "password": "operator-password"},
    )

    assert response.status_code == 302
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["max-age"] == settings.OPERATOR_SESSION_IDLE_SECONDS


def test_a_users_session_keeps_the_default_age(client, user):
    client.force_login(user)

    response = client.get("/")

    assert response.status_code == 200
    expires = session_row(client).expire_date
    assert expires > timezone.now() + timedelta(seconds=settings.SESSION_COOKIE_AGE - 60)
    assert settings.SESSION_COOKIE_AGE > settings.OPERATOR_SESSION_IDLE_SECONDS


def test_the_first_page_after_a_login_does_not_write_the_session_again(client, operator):
    client.force_login(operator, backend="django.contrib.auth.backends.ModelBackend")
    assert session_row(client).expire_date > timezone.now() + timedelta(hours=7)

    with CaptureQueriesContext(connection) as captured:
        assert client.get("/admin/jsi18n/").status_code == 200

    assert not [q for q in captured.captured_queries if "UPDATE" in q["sql"]]
