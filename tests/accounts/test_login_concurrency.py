"""Concurrent logins of one user on PostgreSQL: every login counted, one user created."""

from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from accounts.models import User
from tests.concurrency import run_at_once

pytestmark = pytest.mark.django_db(transaction=True)

SUB = "auth0|concurrent"
LOGINS = 12


def test_login_count_is_exact_after_concurrent_first_and_repeat_logins(fake_auth0):
    # Every thread gets the same valid token; the fake serves it to all of them.
    fake_auth0.next_id_token = fake_auth0.id_token(sub=SUB, email="race@example.com")
    outcomes: list[int] = []

    def begin_login(_):
        client = Client()
        begin = client.post("/auth/login/auth0/")
        return client, parse_qs(urlsplit(begin["Location"]).query)["state"][0]

    def complete_login(started):
        client, state = started
        done = client.get("/auth/complete/auth0/", {"code": "c", "state": state})
        outcomes.append(done.status_code)

    run_at_once(complete_login, range(LOGINS), prepare=begin_login)

    assert outcomes == [302] * LOGINS
    user = User.objects.get(pk=SUB)
    assert user.login_count == LOGINS
    assert User.objects.filter(email="race@example.com").count() == 1
