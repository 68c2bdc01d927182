"""Operators' everyday journeys in a real browser (Debian's Chromium through Playwright, as
tests/console/test_e2e_browser.py; skipped without /usr/bin/chromium): find a user and read
their month, move a user whose new cluster is down, grant credits and see the ledger, and
what a view-only operator is (not) offered.

Data is made before the browser starts: Playwright's sync API runs an event loop in this
thread, where Django refuses database access. Queued jobs run in a thread of their own.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from billing import selectors as billing_selectors
from billing.credits import credits_grant
from billing.models import UsageDaily
from billing.profiles import billing_mode_set
from clusters import services as cluster_services
from plumbing.formatting import money
from tests.console.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from tests.factories import AdminFactory, ClusterFactory, UserFactory
from tests.jobs import run_queued_jobs

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's Chromium with "
            "`apt-get install -y chromium` (CI's .ci/run does)"
        )


def session_of(user, settings) -> str:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@contextmanager
def browser_as(session, live_server, settings):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.context.add_cookies(
                [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
            )
            yield page
        finally:
            browser.close()


def in_a_thread(work):
    """Database work while the browser is open (not in Playwright's event-loop thread)."""
    result, errors = [], []

    def run():
        try:
            result.append(work())
        except Exception as error:  # re-raised in the test's thread
            errors.append(error)
        finally:
            from django.db import connection

            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def messages_of(page) -> list[tuple[str, str]]:
    items = page.locator("ul.messagelist li")
    return [
        (items.nth(i).get_attribute("class") or "", items.nth(i).inner_text())
        for i in range(items.count())
    ]


def test_an_operator_finds_a_user_by_email_and_reads_their_month(live_server, settings):
    operator = AdminFactory()
    UserFactory(email="someone-else@example.com")
    user = UserFactory(email="grace@example.com")
    cluster = ClusterFactory(name="north")
    today = timezone.now().date()
    UsageDaily.objects.create(
        user=user,
        hopsworks_cluster=cluster,
        date=today,
        cpu_hours=Decimal("12.5"),
        total_cost=Decimal("1234.5"),
    )
    month_to_date = money(billing_selectors.month_to_date_cost(user))
    session = session_of(operator, settings)

    with browser_as(session, live_server, settings) as page:
        page.goto(live_server.url + "/admin/accounts/user/")
        page.fill("#searchbar", "grace@example.com")
        with page.expect_navigation():
            page.press("#searchbar", "Enter")
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        with page.expect_navigation():
            page.get_by_role("link", name=re.compile(r"^grace@example\.com")).click()
        glance = page.inner_text(".user-story")

    assert month_to_date == "$1,234.50"
    assert f"month to date {month_to_date}" in glance
    assert "Postpaid" in glance


def test_moving_a_user_whose_new_cluster_is_down_warns_and_claims_nothing(
    live_server, settings, fake_hopsworks, cluster_on
):
    east_fake, west_fake = fake_hopsworks
    operator = AdminFactory()
    user = UserFactory(email="mover@example.com")
    east = cluster_on(east_fake, name="east")
    west = cluster_on(west_fake, name="west")
    cluster_services.assignment_create(user=user, cluster=east, actor=operator)
    run_queued_jobs()  # the account on east is created
    assert east_fake.user_by_email("mover@example.com") is not None
    session = session_of(operator, settings)
    user_url = f"{live_server.url}/admin/accounts/user/{user.pk.replace('|', '%7C')}/change/"

    with browser_as(session, live_server, settings) as page:
        page.goto(user_url)
        with page.expect_navigation():
            page.click("button[value=move_to_cluster]")
        confirmation = page.inner_text("#content")
        assert "mover@example.com: Active; postpaid, month to date $0.00; on east" in (confirmation)
        page.select_option("select[name=cluster]", value=str(west.pk))
        west_fake.fail_next(50)  # west is down: every call fails
        with page.expect_navigation():
            page.click("input[type=submit]")
        assert page.url == user_url
        said = messages_of(page)
        in_the_background = in_a_thread(run_queued_jobs)
        page.reload()
        glance = page.inner_text(".user-story")
        warnings = page.locator(".user-story .errornote").all_inner_texts()

    levels = {level for level, _ in said}
    assert "success" not in levels, said
    text = " ".join(line for _, line in said)
    assert "Hopsworks account pending" in text
    assert "moved the Hopsworks account" not in text.lower()
    assert in_the_background, "the sync job did not run"
    assert "On west" in glance
    assert "Hopsworks account on west: wanted active, is no account (pending" in glance
    assert warnings and "Hopsworks account on west not in place yet" in warnings[0]
    assert west_fake.user_by_email("mover@example.com") is None


def test_an_operator_grants_credits_from_the_users_page_and_sees_the_ledger(live_server, settings):
    operator = AdminFactory()
    user = UserFactory(email="prepaid@example.com")
    billing_mode_set(user=user, mode="prepaid", actor=operator)
    credits_grant(user=user, amount=Decimal("5"), reason="welcome", actor=operator, reference="w")
    session = session_of(operator, settings)
    user_url = f"{live_server.url}/admin/accounts/user/{user.pk.replace('|', '%7C')}/change/"

    with browser_as(session, live_server, settings) as page:
        page.goto(user_url)
        with page.expect_navigation():
            page.click("button[value=grant_credits]")
        confirmation = page.inner_text("#content")
        page.fill("input[name=amount]", "25")
        page.fill("input[name=reason]", "outage on the 3rd")
        with page.expect_navigation():
            page.click("input[type=submit]")
        back_on = page.url
        glance = page.inner_text(".user-story")
        history = page.inner_text(".story-timeline")
        page.goto(live_server.url + "/admin/billing/creditledgerentry/?q=prepaid%40example.com")
        ledger = page.inner_text("#result_list")

    assert "prepaid@example.com: Active; prepaid, balance $5.00; on no cluster" in confirmation
    assert back_on == user_url
    assert "balance $30.00" in glance
    assert "outage on the 3rd" in history
    assert "outage on the 3rd" in ledger and "welcome" in ledger


def test_a_view_only_operator_sees_no_action_buttons_and_no_tile_they_cannot_open(
    live_server, settings, persona
):
    viewer = persona("view_only_staff")
    user = UserFactory(email="looked-at@example.com")
    session = session_of(viewer, settings)
    user_url = f"{live_server.url}/admin/accounts/user/{user.pk.replace('|', '%7C')}/change/"

    with browser_as(session, live_server, settings) as page:
        page.goto(live_server.url + "/admin/")
        tiles = page.locator("section#dashboard a.tile").evaluate_all(
            "tiles => tiles.map(t => t.pathname + t.search)"
        )
        statuses = {href: page.goto(live_server.url + href).status for href in tiles}
        page.goto(user_url)
        buttons = page.locator("form.object-action button").count()
        story = page.locator(".user-story").count()
        page.goto(live_server.url + "/admin/accounts/user/")
        action_menu = page.locator("select[name=action]").count()

    assert statuses, "no tiles at all"
    assert all(status == 200 for status in statuses.values()), statuses
    assert buttons == 0
    assert story == 1  # they may read the story
    assert action_menu == 0
