"""Layout in a real browser (Debian's Chromium through Playwright, as test_e2e_browser.py):
at 1280 px every admin list shows all its columns without sideways scrolling, with long
emails, long names and many digits; at 375 px a user's own page does not scroll sideways."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal as D

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from accounts.models import USER_NAME_MAX_LENGTH, User
from tests.console.test_e2e_browser import CHANGELIST_PATH, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

# The table and the box it scrolls in: (table width, box width, the widest cell's text).
MEASURE = """
() => {
  const table = document.querySelector('#result_list');
  if (!table) return null;
  const box = table.closest('.results') || table.parentElement;
  let widest = '';
  let width = 0;
  for (const cell of table.querySelectorAll('th, td')) {
    if (cell.offsetWidth > width) { width = cell.offsetWidth; widest = cell.innerText; }
  }
  return [table.scrollWidth, box.clientWidth, widest.slice(0, 80),
          document.documentElement.scrollWidth];
}
"""


def _realistic_data():
    """What operators meet: a long email, a name at the limit, big figures."""
    from billing.credits import credits_grant
    from billing.models import BillingHistory, CreditLedgerEntry, UsageDaily
    from clusters.models import HopsworksCluster

    cluster = HopsworksCluster.objects.order_by("name").first()
    long = User.objects.create(
        id="google-oauth2|115161017478488946656115161017478488946656",
        email="firstname.middlename.lastname-department@subsidiary.example-enterprise.com",
        name="Maximiliana " * (USER_NAME_MAX_LENGTH // 12),
    )
    admin = User.objects.get(email=DEMO_ADMIN_EMAIL)
    for n in range(3):
        credits_grant(
            user=long,
            amount=D("999999.99"),
            actor=admin,
            reason="A goodwill credit agreed with the customer's finance department after "
            "the outage of the storage layer in the second week of the month " * 2,
            reference=f"{'0123456789abcdef' * 4}:{n}",
        )
    today = timezone.now().date()
    UsageDaily.objects.create(
        user=long,
        hopsworks_cluster=cluster,
        date=today - dt.timedelta(days=1),
        cpu_hours=D("123456789.1234567890"),
        gpu_hours=D("98765432.9876543210"),
        storage_gb_months=D("1234567.1234567890"),
        api_calls=987654321,
        total_cost=D("987654321.1234567890"),
    )
    BillingHistory.objects.create(
        user=long,
        amount=D("987654.3210"),
        amount_credited=D("12345.67"),
        amount_refunded=D("2345.67"),
        description="Hopsworks usage for November 2026: CPU, GPU, storage and API calls "
        "on the enterprise cluster in the EU region",
        stripe_invoice_id="in_1QxYzAbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        status="paid",
        stripe_status="paid",
    )
    assert CreditLedgerEntry.objects.filter(user=long).count() == 3
    return long


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_every_admin_list_fits_1280_pixels_and_the_users_page_fits_375(
    default_rate_card, live_server, settings
):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium)")
    from django.test import Client
    from playwright.sync_api import sync_playwright

    settings.DEBUG = True
    settings.DEMO_DATABASE = True
    call_command("seed_demo", stdout=io.StringIO())
    long = _realistic_data()
    sessions = {}
    for who in (User.objects.get(email="ada@example.com"), long):
        client = Client()
        client.force_login(who)
        sessions[who.email] = client.cookies[settings.SESSION_COOKIE_NAME].value
    settings.DEBUG = False

    too_wide: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(live_server.url + "/admin/login/")
            page.fill("input[name=username]", DEMO_ADMIN_EMAIL)
            page.fill("input[name=password]", DEMO_ADMIN_PASSWORD)
            with page.expect_navigation():
                page.click("#login-form [type=submit]")
            changelists = sorted(
                {
                    path
                    for path in page.locator("#content-main a").evaluate_all(
                        "links => links.map(a => a.pathname)"
                    )
                    if CHANGELIST_PATH.match(path)
                }
            )
            assert len(changelists) >= 20, changelists
            for path in changelists:
                response = page.goto(live_server.url + path)
                assert response.status == 200, path
                measured = page.evaluate(MEASURE)
                if measured is None:
                    continue  # an empty list has no table
                table, box, widest, document = measured
                if table > box or document > 1280:
                    too_wide.append(
                        f"{path}: table {table}px in {box}px, page {document}px "
                        f"(widest cell: {widest!r})"
                    )

            page.set_viewport_size({"width": 375, "height": 800})
            home_widths = {}
            for email, session in sessions.items():
                page.context.clear_cookies()
                page.context.add_cookies(
                    [
                        {
                            "name": settings.SESSION_COOKIE_NAME,
                            "value": session,
                            "url": live_server.url,
                        }
                    ]
                )
                assert page.goto(live_server.url + "/").status == 200
                assert email in page.inner_text("header")
                home_widths[email] = page.evaluate("document.documentElement.scrollWidth")
        finally:
            browser.close()

    assert too_wide == [], "\n".join(too_wide)
    assert all(width <= 375 for width in home_widths.values()), home_widths
