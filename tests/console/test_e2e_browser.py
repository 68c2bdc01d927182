"""The operator console in a real browser: log in, the dashboard, every admin list, a user,
the API docs and a user's own page, with no Content-Security-Policy violation anywhere.

Runs Debian's Chromium (apt package `chromium`) through Playwright; Playwright never
downloads a browser of its own. Without /usr/bin/chromium the test skips itself; CI
installs Chromium with apt-get before the suite runs (see .ci/run).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.core.management import call_command

from accounts.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from accounts.models import User

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
CHANGELIST_PATH = re.compile(r"^/admin/[^/]+/[^/]+/$")
ERROR_PAGE_TEXTS = ("Traceback", "Server Error", "Page not found")
TIMEOUT_MS = 15_000
# Reports every CSP violation of a page (and its frames) to the test, whatever the console
# says about it.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(
    `${event.violatedDirective} blocked ${event.blockedURI || "inline"} ` +
    `at ${event.sourceFile}:${event.lineNumber}`
  );
});
"""


def _assert_admin_page_ok(page, response, what: str) -> None:
    assert response is not None, f"{what}: no response"
    assert response.status < 400, f"{what}: HTTP {response.status}"
    body = page.inner_text("body")
    for text in ERROR_PAGE_TEXTS:
        assert text not in body, f"{what}: the page says {text!r}"
    assert page.locator("#content").count() == 1, f"{what}: no admin #content"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_operator_can_use_every_admin_page_in_a_real_browser(
    default_rate_card, live_server, settings, tmp_path
):
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's Chromium with "
            "`apt-get install -y chromium` (CI's .ci/run does)"
        )
    from playwright.sync_api import sync_playwright

    settings.DEBUG = True  # seed_demo refuses to run with DEBUG off
    settings.DEMO_DATABASE = True  # and on any database but a local demo one (this is)
    call_command("seed_demo", stdout=io.StringIO())
    # The user's own page, as Ada sees it: her session, made here (no ORM inside the
    # browser block below).
    from django.test import Client

    ada = Client()
    ada.force_login(User.objects.get(email="ada@example.com"))
    ada_session = ada.cookies[settings.SESSION_COOKIE_NAME].value
    # Serve the browser the way pytest-django runs every other test: DEBUG off, so an
    # error is the plain 500 page, not the debug one.
    settings.DEBUG = False

    console_errors: list[str] = []
    csp_violations: list[str] = []

    # No ORM calls inside this block: Playwright's sync API runs an event loop in this
    # thread, and Django refuses sync database access from there (SynchronousOnlyOperation).
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.expose_function(
                "reportCspViolation", lambda text: csp_violations.append(f"{page.url}: {text}")
            )
            page.add_init_script(REPORT_CSP_VIOLATIONS)

            def on_console(message):
                # A missing favicon is the browser's guess, not a page of ours failing.
                if message.type == "error" and "favicon" not in message.location.get("url", ""):
                    console_errors.append(f"{page.url}: console: {message.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda error: console_errors.append(f"{page.url}: {error}"))

            # Log in through the admin's own form.
            response = page.goto(live_server.url + "/admin/login/")
            assert "script-src" in response.headers["content-security-policy"]
            page.fill("input[name=username]", DEMO_ADMIN_EMAIL)
            page.fill("input[name=password]", DEMO_ADMIN_PASSWORD)
            with page.expect_navigation():
                page.click("#login-form [type=submit]")
            assert page.url == live_server.url + "/admin/", page.url

            # The dashboard: tiles, each a link to the admin list that explains it.
            dashboard = page.locator("section#dashboard")
            assert dashboard.is_visible()
            tiles = dashboard.locator("a.tile")
            assert tiles.count() >= 8, f"{tiles.count()} dashboard tiles"
            tile_links = tiles.evaluate_all("tiles => tiles.map(t => t.pathname + t.search)")
            for href in tile_links:
                assert href.startswith("/admin/"), f"a tile links to {href}"
            dashboard_png = tmp_path / "dashboard.png"
            page.screenshot(path=dashboard_png, full_page=True)

            # Every admin list the index links to (collected before leaving the index).
            changelists = sorted(
                {
                    path
                    for path in page.locator("#content-main a").evaluate_all(
                        "links => links.map(a => a.pathname + a.search)"
                    )
                    if CHANGELIST_PATH.match(path)
                }
            )
            assert len(changelists) >= 5, changelists

            with page.expect_navigation() as navigation:
                tiles.first.click()
            _assert_admin_page_ok(page, navigation.value, "the first dashboard tile")

            # Every tile's list, filtered as the tile says. The admin answers a filter it
            # does not know by redirecting to ?e=1, which would be a tile that lies.
            for href in dict.fromkeys(tile_links):
                response = page.goto(live_server.url + href)
                _assert_admin_page_ok(page, response, f"tile {href}")
                assert "e=1" not in page.url.split("?", 1)[-1].split("&"), f"{href}: bad filter"

            for path in changelists:
                response = page.goto(live_server.url + path)
                _assert_admin_page_ok(page, response, path)
                assert page.locator("#changelist").count() == 1, f"{path}: no #changelist"

            # A user's page: their cluster and what they cost.
            page.goto(live_server.url + "/admin/accounts/user/")
            with page.expect_navigation() as navigation:
                # The user cell links the email with the name under it.
                page.get_by_role("link", name=re.compile(r"^ada@example\.com")).click()
            _assert_admin_page_ok(page, navigation.value, "ada's page")
            content = page.inner_text("#content")
            for text in ("ada@example.com", "Cluster", "Billing", "Month to date"):
                assert text in content, f"ada's page does not say {text!r}"
            user_png = tmp_path / "user.png"
            page.screenshot(path=user_png, full_page=True)

            # The API docs: Swagger UI starts (its inline script runs by the policy's
            # nonce) and shows the operations of the schema it fetched.
            response = page.goto(live_server.url + "/api/docs/")
            assert response.status == 200
            assert "nonce-" in response.headers["content-security-policy"]
            page.locator(".swagger-ui .opblock").first.wait_for()
            assert "Hopsworks Platform Console API" in page.inner_text(".swagger-ui .info")
            docs_png = tmp_path / "docs.png"
            page.screenshot(path=docs_png, full_page=True)

            # A user's own page, with its usage chart (inline SVG).
            page.context.add_cookies(
                [
                    {
                        "name": settings.SESSION_COOKIE_NAME,
                        "value": ada_session,
                        "url": live_server.url,
                    }
                ]
            )
            response = page.goto(live_server.url + "/")
            assert response.status == 200
            assert "content-security-policy" in response.headers
            assert "ada@example.com" in page.inner_text("header")
            assert page.locator("svg rect").count() > 0, "no usage chart on Ada's page"
            home_png = tmp_path / "home.png"
            page.screenshot(path=home_png, full_page=True)
        finally:
            browser.close()

    assert csp_violations == []
    assert console_errors == []
    for png in (dashboard_png, user_png, docs_png, home_png):
        assert png.stat().st_size > 0, png
