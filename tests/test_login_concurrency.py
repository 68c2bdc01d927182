"""Concurrent logins of one user on PostgreSQL: every login counted, one user created."""

import threading
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test import Client

from accounts.models import User

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SUB = "auth0|concurrent"
LOGINS = 12


def test_login_count_is_exact_after_concurrent_first_and_repeat_logins(fake_auth0):
    # Every thread gets the same valid token; the fake serves it to all of them.
    fake_auth0.next_id_token = fake_auth0.id_token(sub=SUB, email="race@example.com")
    barrier = threading.Barrier(LOGINS)
    outcomes: list[int] = []

    def one_login():
        try:
            client = Client()
            begin = client.post("/auth/login/auth0/")
            state = parse_qs(urlsplit(begin["Location"]).query)["state"][0]
            barrier.wait(timeout=30)
            done = client.get("/auth/complete/auth0/", {"code": "c", "state": state})
            outcomes.append(done.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=one_login) for _ in range(LOGINS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert outcomes == [302] * LOGINS
    user = User.objects.get(pk=SUB)
    assert user.login_count == LOGINS
    assert User.objects.filter(email="race@example.com").count() == 1
