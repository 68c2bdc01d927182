"""API keys: created in the admin or by command, shown once, stored hashed; the docs."""

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.models import ApiKey

pytestmark = pytest.mark.django_db


def test_create_api_key_prints_the_key_once_and_keeps_only_a_hash(client, capsys):
    call_command("create_api_key", "--name", "nightly import", "--scopes", "usage:write,users:read")
    key = capsys.readouterr().out.strip().splitlines()[-1]

    api_key = ApiKey.objects.get()
    assert api_key.scopes == ["usage:write", "users:read"]
    assert key.startswith(api_key.prefix + ".")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_api_key")
        assert key.split(".")[1] not in str(cursor.fetchall())
    response = client.get("/api/v1/users", HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--scopes", "everything"], "Unknown scopes: everything"),
        (["--name", " ", "--scopes", "users:read"], "name"),
        (["--name", "x", "--scopes", "users:read", "--expires-in-days", "0"], "positive"),
    ],
)
def test_create_api_key_refuses_bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", *args)
    assert not ApiKey.objects.exists()


def test_the_admin_shows_a_new_key_once(operator_client):
    response = operator_client.post(
        "/admin/accounts/apikey/add/",
        {
            "name": "billing export",
            "scopes": ["usage:read"],
            "expiry_date_0": "",
            "expiry_date_1": "",
        },
        follow=True,
    )
    messages = [str(m) for m in response.context["messages"]]
    api_key = ApiKey.objects.get()
    shown = [m for m in messages if api_key.prefix in m]
    assert shown and "you will not be able to see it again" in shown[0]
    assert api_key.created_by == response.wsgi_request.user.email
    page = operator_client.get(f"/admin/accounts/apikey/{api_key.pk}/change/").content.decode()
    assert shown[0].split("is: ")[1].split(".")[1][:10] not in page


def test_the_api_docs_and_schema_are_served_without_the_internet(client):
    schema = client.get("/api/schema/")
    docs = client.get("/api/docs/").content.decode()
    assert schema.status_code == 200 and b"/api/v1/usage" in schema.content
    assert "swagger-ui" in docs and "cdn" not in docs.lower()
