"""A slow Auth0 cannot hold a login: every call to it in the login request shares one
total deadline, and the person gets a page that says the login failed."""

import time

import pytest

from accounts.models import User
from tests.accounts.test_auth0_login import start_login
from tests.fakes.raw_servers import DripServer, RecordingListener, http_response

pytestmark = pytest.mark.django_db


def test_a_slow_drip_auth0_ends_the_login_within_its_deadline(
    client, fake_auth0, test_ca, settings
):
    settings.OUTBOUND_DEADLINE_SECONDS = 1.0
    state = start_login(client)
    token_answer = http_response(200, b'{"access_token": "x", "id_token": "y"}' + b" " * 400)
    with DripServer(token_answer, interval=0.05, for_seconds=6, tls=test_ca) as slow:
        # The tenant now answers its token endpoint one byte every 50 ms.
        settings.AUTH0_DOMAIN = settings.SOCIAL_AUTH_AUTH0_DOMAIN = slow.url.split("//")[1]
        started = time.monotonic()
        response = client.get("/auth/complete/auth0/", {"code": "the-code", "state": state})
        elapsed = time.monotonic() - started

    assert elapsed < 1.0 + 1.5  # not the 6 s the drip would last, nor per-read timeouts
    assert response.status_code in (400, 502, 503)
    assert "could not verify your login" in response.content.decode()
    assert not User.objects.exists()


def test_a_redirect_from_auth0_is_not_followed_with_the_client_secret(
    client, fake_auth0, test_ca, settings
):
    # The token exchange posts the client secret; a 307 would have it posted again to the
    # address the answer names.
    state = start_login(client)
    with RecordingListener(tls=test_ca) as elsewhere:
        redirect = (
            b"HTTP/1.1 307 Temporary Redirect\r\n"
            + f"Location: {elsewhere.url}/steal\r\n".encode()
            + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        with DripServer(redirect, interval=0, chunk=len(redirect), tls=test_ca) as tenant:
            settings.AUTH0_DOMAIN = settings.SOCIAL_AUTH_AUTH0_DOMAIN = tenant.url.split("//")[1]
            response = client.get("/auth/complete/auth0/", {"code": "the-code", "state": state})

        assert tenant.connections == 1
        assert elsewhere.connections == 0
    assert response.status_code == 400
    assert "could not verify your login" in response.content.decode()
    assert not User.objects.exists()
