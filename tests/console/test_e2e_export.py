"""In a real browser: an operator narrows daily usage to this month with the from-to
filter, exports it as CSV, and the file read back holds exactly this month's rows."""

from __future__ import annotations

import csv
import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import UsageDaily
from plumbing.admin_export import csv_cell
from tests.console.test_e2e_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPORT_CSP_VIOLATIONS,
    TIMEOUT_MS,
    _assert_admin_page_ok,
)
from tests.factories import AdminFactory, ClusterFactory, UserFactory


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_operator_exports_this_months_usage_as_csv_and_reads_it_back(live_server, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    operator = AdminFactory(email="finance@example.com")
    today = timezone.now().date()
    first = today.replace(day=1)
    east = ClusterFactory(name="east")
    ada, bob = UserFactory(email="ada@example.com"), UserFactory(email="bøb@example.com")
    for n, (user, day) in enumerate(
        [(ada, first - dt.timedelta(days=1)), (ada, first), (bob, first), (bob, today)]
    ):
        UsageDaily.objects.get_or_create(
            user=user,
            hopsworks_cluster=east,
            date=day,
            defaults={"cpu_hours": Decimal("1.5") * (n + 1), "total_cost": Decimal(f"0.{n}1")},
        )
    expected = {
        (
            row.date.isoformat(),
            row.user.email,
            row.user_id,
            "east",
            csv_cell(row.cpu_hours),
            csv_cell(row.total_cost),
        )
        for row in UsageDaily.objects.filter(date__gte=first).select_related("user")
    }
    assert len(expected) in (2, 3)  # today may be the first
    csp_violations: list[str] = []

    # No ORM calls inside this block (Playwright's sync API runs an event loop here).
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.expose_function("reportCspViolation", lambda text: csp_violations.append(text))
            page.add_init_script(REPORT_CSP_VIOLATIONS)

            page.goto(live_server.url + "/admin/login/")
            page.fill("input[name=username]", operator.email)
            page.fill("input[name=password]", "operator-password")
            with page.expect_navigation():
                page.click("#login-form [type=submit]")

            response = page.goto(live_server.url + "/admin/billing/usagedaily/")
            _assert_admin_page_ok(page, response, "daily usage")
            page.fill("input[name=date__range__gte]", first.isoformat())
            page.fill("input[name=date__range__lte]", today.isoformat())
            with page.expect_navigation():
                page.locator(".admindatefilter input[type=submit]").first.click()
            assert f"date__range__gte={first.isoformat()}" in page.url, page.url
            assert page.locator("#result_list tbody tr").count() == len(expected)

            with page.expect_download() as download:
                page.get_by_role("link", name="Export CSV").click()
            assert download.value.suggested_filename.endswith(".csv")
            path = tmp_path / download.value.suggested_filename
            download.value.save_as(path)
        finally:
            browser.close()

    with open(path, encoding="utf-8-sig", newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header[:4] == ["date", "user email", "user id", "cluster"]
    columns = [header.index(name) for name in ("CPU hours", "total cost (USD)")]
    read_back = {(*row[:4], *(row[i] for i in columns)) for row in rows}
    assert len(rows) == len(expected)
    assert read_back == expected
    assert csp_violations == []
