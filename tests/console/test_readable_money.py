"""Money, quantities and times as people read them: cents in lists, every place on detail
pages, quantities rounded with separators, times with their zone; typed amounts as dollars
and cents (issue 14, "Readable money and numbers")."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.credits import Kind, credits_add
from billing.models import BillingHistory, BillingProfile, CreditLedgerEntry, UsageDaily
from clusters import services
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db
D = Decimal


def _usage(user, cluster, **figures):
    values = {
        "cpu_hours": D("4.8515200000"),
        "gpu_hours": D("47.3000000000"),
        "storage_gb_months": D("0.1234567890"),
        "api_calls": 5940222,
        "total_cost": D("2.834002"),
    }
    values.update(figures)
    return UsageDaily.objects.create(
        user=user,
        hopsworks_cluster=cluster,
        date=timezone.now().date() - dt.timedelta(days=1),
        **values,
    )


def test_the_usage_list_shows_cents_and_rounded_quantities(operator_client):
    _usage(UserFactory(), ClusterFactory(name="east"))
    page = operator_client.get("/admin/billing/usagedaily/").content.decode()
    assert "$2.83" in page and "2.834002" not in page
    assert "4.85" in page and "4.8515" not in page
    assert "47.3" in page and "47.3000" not in page
    assert "5,940,222" in page
    assert "0.1235" in page and "0.123456789" not in page


def test_the_usage_list_is_not_sorted_by_its_figures(operator_client):
    """Issue 16: sorting millions of usage rows by cost reads and sorts them all, so the
    list sorts by date only (its index); the cost column has no sort link and a typed
    `?o=` on it is ignored. (Narrow the list, or export it, to rank by cost.)"""
    cluster = ClusterFactory()
    _usage(UserFactory(email="cheap@example.com"), cluster, total_cost=D("1"))
    _usage(UserFactory(email="dear@example.com"), cluster, total_cost=D("9"))
    unsorted = operator_client.get("/admin/billing/usagedaily/")
    cost = unsorted.context["cl"].list_display.index("cost")
    page = operator_client.get("/admin/billing/usagedaily/", {"o": f"-{cost}"})

    rows = [(r.date, r.user_id) for r in page.context["cl"].result_list]
    assert rows == [(r.date, r.user_id) for r in unsorted.context["cl"].result_list]
    assert "sortable column-cost" not in page.content.decode()
    assert "$9.00" in page.content.decode()  # the figure is still shown, as money


def test_an_invoice_is_titled_in_money_and_its_page_keeps_every_place(operator_client):
    invoice = BillingHistory.objects.create(
        user=UserFactory(), amount=D("84.3300000000"), currency="USD", stripe_invoice_id="in_1"
    )
    page = operator_client.get(f"/admin/billing/billinghistory/{invoice.pk}/change/")
    text = page.content.decode()
    assert "in_1: $84.33 pending" in text
    assert "84.3300000000" not in text and "84.33 USD" not in text
    listed = operator_client.get("/admin/billing/billinghistory/").content.decode()
    assert "$84.33" in listed


def test_the_ledger_shows_money_and_times_in_utc(operator_client):
    user = UserFactory()
    credits_add(user=user, kind=Kind.GRANT, amount=D("1234.5"), reference="g", actor="t")
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-1340.72"), reference="a", actor="t")
    entry = CreditLedgerEntry.objects.get(reference="g")
    listed = operator_client.get("/admin/billing/creditledgerentry/").content.decode()
    assert "$1,234.50" in listed and "-$106.22" in listed
    assert f"{entry.created_at:%Y-%m-%d %H:%M} UTC" in listed
    detail = operator_client.get(f"/admin/billing/creditledgerentry/{entry.pk}/change/")
    assert f"{entry.created_at:%Y-%m-%d %H:%M} UTC" in detail.content.decode()


def test_the_users_billing_part_shows_money_and_rounded_hours(operator_client):
    cluster = ClusterFactory()
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)
    BillingProfile.objects.create(user=user, mode="prepaid")
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-106.22"), reference="g", actor="t")
    _usage(user, cluster)
    page = operator_client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert "4.85" in page and "4.8515" not in page
    assert "$2.83" in page and "2.834002" not in page
    assert "-$106.22" in page and "$-106.22" not in page


def test_the_dashboard_tiles_show_money_and_rounded_hours(operator_client):
    _usage(UserFactory(), ClusterFactory(name="east"), total_cost=D("1234.5678"))
    page = operator_client.get("/admin/").content.decode()
    assert "$1,234.57" in page
    assert "4.85 CPU h" in page and "4.8515" not in page
    assert "47.3 GPU h" in page


def test_the_users_page_shows_money_and_rounded_quantities(client):
    cluster = ClusterFactory()
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)
    BillingProfile.objects.create(user=user, mode="prepaid")
    credits_add(user=user, kind=Kind.GRANT, amount=D("1234.5"), reference="g", actor="t")
    BillingHistory.objects.create(user=user, amount=D("84.3300000000"), currency="USD")
    _usage(user, cluster)
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    page = client.get("/").content.decode()
    assert "$2.83" in page and "2.834002" not in page
    assert "4.85" in page and "4.8515" not in page
    assert "$1,234.50" in page
    assert "$84.33" in page and "84.33 USD" not in page


# Typed amounts: one rule (plumbing.formatting.parse_money) everywhere -------------------


def test_a_user_cannot_type_a_top_up_in_exponent_form():
    from billing.checkout import BillingError, parse_topup_amount

    assert parse_topup_amount("25") == D("25")
    assert parse_topup_amount("25.00") == D("25.00")
    for typed in ("1e2", "NaN", "25.001", "2 5"):
        with pytest.raises(BillingError, match="dollars and cents"):
            parse_topup_amount(typed)


def test_an_operator_cannot_type_an_adjustment_in_exponent_form():
    from billing.adjustments import AdjustmentError, parse_adjustment_amount

    assert parse_adjustment_amount("1,000.50") == D("1000.50")
    for typed in ("1e3", "NaN", "25.001", "-5"):
        with pytest.raises(AdjustmentError, match=r"dollars and cents|more than zero"):
            parse_adjustment_amount(typed)


def test_the_operators_spending_limit_form_refuses_exponents():
    from billing.admin.spending import SpendingLimitsForm

    form = SpendingLimitsForm(data={"monthly_spending_cap": "1e3", "low_balance_threshold": "25"})
    assert not form.is_valid()
    assert "dollars and cents" in " ".join(form.errors["monthly_spending_cap"])
    good = SpendingLimitsForm(data={"monthly_spending_cap": "1,000", "low_balance_threshold": ""})
    assert good.is_valid(), good.errors
    assert good.cleaned_data["monthly_spending_cap"] == D("1000")


def test_a_user_cannot_type_their_spending_cap_in_exponent_form(client):
    user = UserFactory()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    response = client.post("/billing/limits/", {"monthly_spending_cap": "1e2"})
    assert response.status_code == 400
    assert "dollars and cents" in response.content.decode()
    assert not BillingProfile.objects.filter(user=user, monthly_spending_cap__isnull=False).exists()


def test_a_stop_for_a_negative_balance_states_it_as_money():
    from billing.standing import ineligibility

    cluster = ClusterFactory()
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)
    BillingProfile.objects.create(user=user, mode="prepaid")
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-1106.225"), reference="a", actor="t")
    details = " ".join(ineligibility(user_ids=[user.pk]).values())
    assert "Balance -$1,106.23 is below the floor" in details


def test_the_rate_card_lists_prices_with_every_place(operator_client):
    from billing.models import Price

    Price.objects.create(
        resource="api_calls_1k", unit_price=D("0.0000150000"), effective_from=dt.date(2026, 1, 2)
    )
    page = operator_client.get("/admin/billing/price/").content.decode()
    assert "$0.000015" in page and "0.0000150000" not in page


def test_the_api_docs_say_how_amounts_and_times_are_written(operator_client):
    schema = operator_client.get("/api/schema/", {"format": "json"}).content.decode()
    assert "exact decimal strings" in schema and "in UTC" in schema
