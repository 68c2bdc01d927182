"""Security headers: a Content-Security-Policy on every page, HSTS in production, and the
forwarded scheme believed only from a proxy the settings say is ours."""

from __future__ import annotations

import json
import re

import pytest

from tests.platform_site.test_settings import PRODUCTION
from tests.subprocess_django import run_django

NONCE_ATTRIBUTE = re.compile(r'<script\b[^>]*\bnonce="([^"]+)"')
INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>")


def policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/admin/login/", "/api/docs/", "/"])
def test_pages_carry_a_policy_that_allows_no_injected_script(client, user, path):
    if path == "/":
        client.force_login(user)

    response = client.get(path)

    assert response.status_code == 200
    directives = policy(response)
    assert directives["default-src"] == ["'self'"]
    script_src = directives["script-src"]
    assert "'self'" in script_src
    assert "'unsafe-inline'" not in script_src
    assert "'unsafe-eval'" not in script_src
    assert directives["object-src"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]


@pytest.mark.django_db
def test_the_api_docs_inline_script_carries_the_nonce_of_its_policy(client):
    response = client.get("/api/docs/")

    body = response.content.decode()
    inline = INLINE_SCRIPT.findall(body)
    assert inline, "the Swagger page has an inline script that starts Swagger UI"
    nonces = set(NONCE_ATTRIBUTE.findall(body))
    assert len(nonces) == 1
    assert all("nonce=" in tag for tag in inline)
    assert f"'nonce-{nonces.pop()}'" in policy(response)["script-src"]


@pytest.mark.django_db
def test_each_response_has_its_own_nonce(client):
    first = NONCE_ATTRIBUTE.findall(client.get("/api/docs/").content.decode())
    second = NONCE_ATTRIBUTE.findall(client.get("/api/docs/").content.decode())
    assert first and second and first != second


SETTINGS = (
    "import json; from django.conf import settings as s; print(json.dumps([s.SECURE_HSTS_SECONDS,"
    " s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD, s.SECURE_PROXY_SSL_HEADER,"
    " s.SECURE_SSL_REDIRECT]))"
)


def settings_under(**env) -> list:
    result = run_django(SETTINGS, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_production_sends_hsts_for_a_year_by_default():
    hsts_seconds, subdomains, preload, _, _ = settings_under(**PRODUCTION)
    assert hsts_seconds == 365 * 24 * 3600
    assert subdomains is True
    assert preload is True


def test_hsts_can_be_tuned_from_the_environment():
    hsts_seconds, subdomains, preload, _, _ = settings_under(
        **PRODUCTION,
        SECURE_HSTS_SECONDS="3600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="0",
        SECURE_HSTS_PRELOAD="0",
    )
    assert (hsts_seconds, subdomains, preload) == (3600, False, False)


def test_debug_runs_send_no_hsts():
    assert settings_under(DEBUG="1", DATABASE_URL="postgres://postgres@127.0.0.1:5432/demo")[0] == 0


def test_the_forwarded_scheme_is_believed_only_from_a_trusted_proxy():
    *_, proxy_header, ssl_redirect = settings_under(**PRODUCTION)
    assert proxy_header is None
    assert ssl_redirect is False

    *_, proxy_header, ssl_redirect = settings_under(**PRODUCTION, TRUSTED_PROXY="1")
    assert proxy_header == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert ssl_redirect is True


REQUEST = (
    "from django.test import Client\n"
    "r = Client().get(\n"
    "    {path!r}, HTTP_HOST='console.example.com', HTTP_X_FORWARDED_PROTO={proto!r}\n"
    ")\n"
    "print(r.status_code, r.get('Location', '-'), r.get('Strict-Transport-Security', '-'))\n"
)


def request_under(path: str, proto: str, **env) -> list[str]:
    result = run_django(REQUEST.format(path=path, proto=proto), **PRODUCTION, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(" ", 2)


def test_behind_a_trusted_proxy_https_gets_hsts_and_http_is_redirected():
    assert request_under("/healthz", "https", TRUSTED_PROXY="1") == [
        "200",
        "-",
        "max-age=31536000; includeSubDomains; preload",
    ]
    assert request_under("/login/", "http", TRUSTED_PROXY="1")[:2] == [
        "301",
        "https://console.example.com/login/",
    ]
    # The load balancer's health checks may come over plain http.
    assert request_under("/healthz", "http", TRUSTED_PROXY="1")[0] == "200"


def test_without_a_trusted_proxy_a_forged_forwarded_scheme_changes_nothing():
    assert request_under("/healthz", "https") == ["200", "-", "-"]
