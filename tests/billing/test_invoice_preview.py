"""The invoice preview on the user's page and the users admin: Stripe's upcoming invoice
for a postpaid user with a subscription (what was reported through meter events), the
month's projected debit for a prepaid user, and a page that still renders when Stripe is
down."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing.checkout import customer_ensure
from billing.models import BillingProfile, StripeCatalogEntry
from billing.stripe_reporting import usage_report_to_stripe
from billing.usage import UsageRecord, usage_upsert
from tests.billing.stripe_helpers import login, prepaid_user
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
D = Decimal
PREVIEW = "/v1/invoices/create_preview"


def month_start_timestamp():
    first = timezone.now().date().replace(day=1)
    return int(dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC).timestamp())


@pytest.fixture
def subscribed(fake_stripe):
    """A postpaid user whose metered subscription (one item per rate-card price) has run
    since the first of the month, with $12.34 of CPU reported to Stripe."""
    call_command("setup_stripe_billing")
    user = UserFactory(email="ada@example.com")
    customer = customer_ensure(user=user)
    prices = StripeCatalogEntry.objects.values_list("price_id", flat=True)
    sub = fake_stripe.add_subscription(customer=customer, price_ids=prices)
    for item in sub["items"]["data"]:  # the current period began with the month
        item["current_period_start"] = month_start_timestamp()
    BillingProfile.objects.update_or_create(
        user=user, defaults={"stripe_subscription_id": sub["id"], "subscription_status": "active"}
    )
    usage_upsert(
        records=[UsageRecord(user_id=user.pk, date=timezone.now().date(), cpu_hours=D("123.4"))],
        actor="t",
    )
    assert not usage_report_to_stripe().errors
    user.refresh_from_db()
    return user, customer, sub


def test_the_user_sees_stripes_upcoming_invoice_in_dollars_and_cents(
    client, fake_stripe, subscribed
):
    user, customer, sub = subscribed
    login(client, user)
    page = client.get("/").content.decode()

    [request] = fake_stripe.requests_to("POST", PREVIEW)
    assert request.form == {"customer": customer, "subscription": sub["id"]}
    assert "Upcoming invoice: <strong>$12.34</strong> USD" in page
    assert not fake_stripe.invoices  # a preview creates no invoice


def test_the_operator_sees_the_same_preview_on_the_users_admin_page(
    operator_client, fake_stripe, subscribed
):
    user, _customer, _sub = subscribed
    page = operator_client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert "Upcoming invoice (Stripe's preview): <strong>$12.34</strong> USD" in page
    assert len(fake_stripe.requests_to("POST", PREVIEW)) == 1


def test_when_stripe_is_down_the_page_renders_and_says_the_preview_is_unavailable(
    client, operator, fake_stripe, subscribed
):
    from django.test import Client

    user, _customer, _sub = subscribed
    fake_stripe.fail_next(5, status=503, path=PREVIEW)
    login(client, user)
    response = client.get("/")
    assert response.status_code == 200
    assert "The invoice preview is unavailable right now" in response.content.decode()
    staff = Client()
    login(staff, operator)
    admin_page = staff.get(f"/admin/accounts/user/{user.pk}/change/")
    assert admin_page.status_code == 200
    assert "The invoice preview is unavailable right now" in admin_page.content.decode()


def test_no_preview_is_asked_for_a_user_without_a_subscription(client, fake_stripe):
    user = UserFactory()
    customer_ensure(user=user)
    login(client, user)
    page = client.get("/").content.decode()
    assert fake_stripe.requests_to("POST", PREVIEW) == []
    assert "No subscription: there is no invoice to preview." in page


def test_a_prepaid_user_sees_the_months_projected_debit(client, fake_stripe):
    from billing.forecast import projected_month_cost

    user = prepaid_user()
    first = timezone.now().date().replace(day=1)
    usage_upsert(records=[UsageRecord(user_id=user.pk, date=first, cpu_hours=D("100"))], actor="t")
    login(client, user)
    page = client.get("/").content.decode()
    expected = projected_month_cost(D("10"), today=timezone.now().date())
    assert f"Projected debit from your credits this month: <strong>${expected:,}</strong>" in page
    assert fake_stripe.requests_to("POST", PREVIEW) == []
