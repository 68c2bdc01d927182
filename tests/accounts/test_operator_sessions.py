"""Operators' sessions end after a working day without a request; users' keep Django's age."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.utils import timezone

pytestmark = pytest.mark.django_db


def session_row(client) -> Session:
    return Session.objects.get(session_key=client.cookies[settings.SESSION_COOKIE_NAME].value)


def test_an_operator_session_lasts_a_working_day_from_the_last_request(operator_client):
    response = operator_client.get("/admin/")

    assert response.status_code == 200
    idle = settings.OPERATOR_SESSION_IDLE_SECONDS
    assert idle == 8 * 3600
    assert response.cookies[settings.SESSION_COOKIE_NAME]["max-age"] == idle
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


def test_each_request_of_an_operator_pushes_the_expiry_back(operator_client):
    operator_client.get("/admin/")
    Session.objects.filter(pk=session_row(operator_client).pk).update(
        expire_date=timezone.now() + timedelta(minutes=5)
    )

    operator_client.get("/admin/")

    assert session_row(operator_client).expire_date > timezone.now() + timedelta(hours=7)


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
