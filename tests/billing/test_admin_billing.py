"""The billing console: usage with totals, runs, rate card, ledger, grants, the user page."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.credits import Kind, credits_add
from billing.models import BillingProfile, CreditLedgerEntry, Price, UserCredits
from billing.usage import UsageRecord, usage_upsert
from clusters import services
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db
D = Decimal
USAGE = "/admin/billing/usagedaily/"
USERS = "/admin/accounts/user/"


def add_usage(users, cluster, days):
    today = timezone.now().date()
    usage_upsert(
        records=[
            UsageRecord(
                user_id=u.pk,
                cluster_id=cluster.pk,
                date=today - dt.timedelta(days=d),
                cpu_hours=D("1.5"),
                api_calls=1000,
            )
            for u in users
            for d in range(1, days + 1)
        ],
        actor="test",
    )


def queries(client, url, **params):
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url, params).status_code == 200
    return len(captured)


def test_the_usage_list_totals_the_filtered_rows(operator_client):
    east, west = ClusterFactory(name="east"), ClusterFactory(name="west")
    ada, alan = UserFactory(email="ada@example.com"), UserFactory(email="alan@example.com")
    add_usage([ada], east, 3)
    add_usage([alan], west, 2)

    page = operator_client.get(USAGE, {"hopsworks_cluster__id__exact": east.pk})
    totals = page.context["usage_totals"]
    assert totals["cpu_hours"] == D("4.5")
    assert totals["api_calls"] == 3000
    assert totals["total_cost_cents"] == D("0.48")

    searched = operator_client.get(USAGE, {"q": "alan@example.com"}).context["usage_totals"]
    assert searched["cpu_hours"] == D("3")


def test_the_usage_list_makes_as_many_queries_for_many_rows_as_for_few(operator_client):
    cluster = ClusterFactory()
    add_usage(UserFactory.create_batch(2), cluster, 2)
    few = queries(operator_client, USAGE)
    add_usage(UserFactory.create_batch(10), cluster, 10)
    assert queries(operator_client, USAGE) == few


def test_the_user_page_shows_cost_balance_and_30_days_in_constant_queries(operator_client):
    cluster = ClusterFactory(max_users=50)
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)
    BillingProfile.objects.create(user=user, mode="prepaid")
    credits_add(user=user, kind=Kind.PURCHASE, amount=D("1"), reference="p", actor="t")
    add_usage([user], cluster, 2)
    url = f"{USERS}{user.pk}/change/"
    operator_client.get(url)  # warm caches (content types, session) before counting
    few = queries(operator_client, url)
    add_usage([user], cluster, 40)

    page = operator_client.get(url).content.decode()

    assert queries(operator_client, url) == few
    assert "Prepaid (credits)" in page
    assert "below zero" in page  # 42 days x $0.16 against $1 of credit
    assert page.count("<tr><td>") == 30


def test_the_ledger_is_read_only(operator_client):
    user = UserFactory()
    entry = credits_add(user=user, kind=Kind.PURCHASE, amount=D("5"), reference="p", actor="t")
    base = "/admin/billing/creditledgerentry/"
    assert operator_client.get(base).status_code == 200
    assert operator_client.get(f"{base}add/").status_code == 403
    assert operator_client.post(f"{base}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    page = operator_client.get(f"{base}{entry.pk}/change/").content.decode()
    assert 'name="amount"' not in page
    assert CreditLedgerEntry.objects.count() == 1


def test_operators_grant_credits_with_a_reason_and_a_resubmit_grants_once(operator_client):
    user = UserFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    data = {
        "action": "grant_credits",
        "_selected_action": [user.pk],
        "confirmed": "yes",
        "amount": "12.50",
        "reason": "outage apology",
        "token": "tok-1",
    }
    operator_client.post(USERS, data)
    operator_client.post(USERS, data)  # the same form submitted twice

    credits = UserCredits.objects.get(user=user)
    assert credits.balance == D("12.5")
    entry = CreditLedgerEntry.objects.get()
    assert (entry.kind, entry.reason) == ("grant", "outage apology")
    assert entry.actor.startswith("operator")


def test_a_grant_without_a_reason_is_refused_on_the_form(operator_client):
    user = UserFactory()
    page = operator_client.post(
        USERS,
        {
            "action": "grant_credits",
            "_selected_action": [user.pk],
            "confirmed": "yes",
            "amount": "5",
            "reason": "",
            "token": "t",
        },
    )
    assert page.status_code == 200
    assert "reason" in page.context["form"].errors
    assert not CreditLedgerEntry.objects.exists()


def test_switching_billing_mode_asks_first(operator_client):
    user = UserFactory()
    operator_client.post(USERS, {"action": "make_prepaid", "_selected_action": [user.pk]})
    assert not BillingProfile.objects.filter(user=user).exists()
    operator_client.post(
        USERS, {"action": "make_prepaid", "_selected_action": [user.pk], "confirmed": "yes"}
    )
    assert BillingProfile.objects.get(user=user).mode == "prepaid"


def test_a_price_in_effect_cannot_be_edited_and_new_prices_cannot_start_in_the_past(
    operator_client,
):
    card = Price.objects.filter(user=None, resource="cpu_hour").first()
    base = "/admin/billing/price/"
    page = operator_client.get(f"{base}{card.pk}/change/").content.decode()
    assert 'name="unit_price"' not in page

    yesterday = (timezone.now().date() - dt.timedelta(days=1)).isoformat()
    refused = operator_client.post(
        f"{base}add/", {"resource": "cpu_hour", "unit_price": "0.2", "effective_from": yesterday}
    )
    assert "cannot start in the past" in refused.content.decode()
    tomorrow = (timezone.now().date() + dt.timedelta(days=1)).isoformat()
    accepted = operator_client.post(
        f"{base}add/", {"resource": "cpu_hour", "unit_price": "0.2", "effective_from": tomorrow}
    )
    assert accepted.status_code == 302


def test_every_billing_list_opens(operator_client):
    for url in [
        "/admin/billing/usagecollectionrun/",
        "/admin/billing/price/",
        "/admin/billing/usercredits/",
        "/admin/billing/creditledgerentry/",
        "/admin/billing/billingadjustment/",
        "/admin/billing/usagedaily/",
        "/admin/clusters/capacitywait/",
        "/admin/clusters/hopsworksaccount/",
        "/admin/",
    ]:
        assert operator_client.get(url).status_code == 200, url


def test_credits_can_be_granted_from_the_credits_list_too(operator_client):
    user = UserFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    credits_add(user=user, kind=Kind.PURCHASE, amount=D("1"), reference="p", actor="t")
    row = UserCredits.objects.get(user=user)
    operator_client.post(
        "/admin/billing/usercredits/",
        {
            "action": "grant_credits",
            "_selected_action": [row.pk],
            "confirmed": "yes",
            "amount": "2",
            "reason": "goodwill",
            "token": "t-2",
        },
    )
    assert UserCredits.objects.get(user=user).balance == D("3")


def test_the_admin_switch_is_recorded_with_its_operator_and_listed_on_the_users_page(
    operator_client, operator
):
    user = UserFactory()
    operator_client.post(
        USERS, {"action": "make_prepaid", "_selected_action": [user.pk], "confirmed": "yes"}
    )

    page = operator_client.get(f"{USERS}{user.pk}/change/").content.decode()

    assert "Billing mode switches" in page
    assert "Postpaid (metered) → Prepaid (credits)" in page
    assert operator.email in page


def test_the_runs_show_coverage_and_the_detail_the_attribution_snapshot(operator_client):
    from billing.models import UsageCollectionRun

    cluster = ClusterFactory(name="east")
    ada = UserFactory(email="ada@example.com")
    partial = UsageCollectionRun.objects.create(
        cluster=cluster,
        date=dt.date(2026, 11, 20),
        status="succeeded",
        coverage_minutes=1080,
        attribution={"ada-ml": {"project": "ada_ml", "user_id": ada.pk}},
    )
    UsageCollectionRun.objects.create(cluster=cluster, date=dt.date(2026, 11, 19))

    listing = operator_client.get("/admin/billing/usagecollectionrun/").content.decode()
    assert "1080/1440 min" in listing

    detail = operator_client.get(
        f"/admin/billing/usagecollectionrun/{partial.pk}/change/"
    ).content.decode()
    assert "1080/1440 min" in detail
    assert "ada-ml" in detail and "ada_ml" in detail and "ada@example.com" in detail
