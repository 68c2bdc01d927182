import json

import pytest

from tests.sockets import free_port
from tests.subprocess_django import run_django


def test_healthz_answers_without_touching_the_database(client):
    # No `db` fixture: pytest-django makes any query here an error.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ok_when_the_database_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_readyz_is_503_and_says_only_database_unavailable_the_detail_goes_to_the_log():
    result = run_django(
        "from django.test import Client\n"
        "r = Client().get('/readyz')\n"
        "print(r.status_code, r.content.decode())\n",
        DEBUG="1",
        DATABASE_URL=f"postgres://dbadmin@127.0.0.1:{free_port()}/nothing",
    )
    assert result.returncode == 0, result.stderr
    status, body = result.stdout.strip().split(" ", 1)
    assert status == "503"
    payload = json.loads(body)
    assert payload == {"status": "unavailable", "database": "database unavailable"}
    # Anonymous callers learn nothing about the database (host, user, driver text).
    assert "127.0.0.1" not in body
    assert "dbadmin" not in body
    assert "Connection refused" in result.stderr


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "json_error"),
    [
        ("/api/v1/usage?cluster=%00x", True),
        ("/admin/accounts/user/?q=%00", False),
        ("/api/v1/users/auth0%00x", True),
    ],
)
def test_a_nul_byte_in_the_address_is_a_400_not_a_database_error(operator_client, url, json_error):
    response = operator_client.get(url)
    assert response.status_code == 400
    if json_error:
        assert response.json()["error"]["status"] == 400


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/", {"HTTP_COOKIE": 'sessionid="\\000\\000\\000\\000\\000\\000\\000\\000"'}),
        ("/admin/", {"HTTP_COOKIE": 'sessionid="abcdefgh\\000"'}),
        ("/api/v1/users", {"HTTP_AUTHORIZATION": "Api-Key abc\x00.def"}),
        ("/", {"HTTP_X_FORWARDED_FOR": "1.2.3.4\x00"}),
    ],
)
def test_a_nul_byte_in_a_cookie_or_header_is_a_400_not_a_database_error(client, url, headers):
    client.raise_request_exception = False

    response = client.get(url, **headers)

    assert response.status_code == 400
