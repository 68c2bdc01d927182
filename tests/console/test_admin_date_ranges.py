"""A from-to date filter (django-admin-rangefilter) on every dated admin list; a date
that is not one says so instead of quietly showing everything."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib import admin
from django.urls import reverse
from rangefilter.filters import DateRangeFilter

from billing.models import UsageDaily
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

DATED = {
    "accounts.user": "created_at",
    "billing.usagedaily": "date",
    "billing.usagecollectionrun": "date",
    "billing.creditledgerentry": "created_at",
    "billing.billinghistory": "created_at",
    "billing.stripeevent": "created",
    "billing.servicestop": "detected_at",
    "billing.spendingalert": "created_at",
    "billing.spendinglimitchange": "created_at",
    "billing.billingadjustment": "created_at",
    "billing.accountclosure": "closed_at",
    "billing.subscriptionend": "ended_at",
    "billing.auth0logevent": "received_at",
    "billing.reconciliationrun": "started_at",
    "billing.creditpurchase": "created_at",
    "billing.stripeusageadjustment": "created_at",
}


def _range_filters(model_admin) -> set[str]:
    return {
        entry[0]
        for entry in model_admin.list_filter
        if isinstance(entry, tuple) and issubclass(entry[1], DateRangeFilter)
    }


@pytest.mark.parametrize(("label", "field"), DATED.items())
def test_every_dated_admin_list_has_a_from_to_filter(label, field):
    model_admin = next(ma for m, ma in admin.site._registry.items() if m._meta.label_lower == label)
    assert field in _range_filters(model_admin)


@pytest.mark.parametrize("label", DATED)
def test_every_dated_list_opens_with_a_date_range_chosen(admin_client, label):
    field = DATED[label]
    url = reverse(f"admin:{label.replace('.', '_')}_changelist")

    response = admin_client.get(
        f"{url}?{field}__range__gte=2026-12-01&{field}__range__lte=2026-12-31"
    )

    assert response.status_code == 200


def _usage(day):
    return UsageDaily.objects.create(
        user=UserFactory(), hopsworks_cluster=ClusterFactory(), date=day,
        total_cost=Decimal("1"),
    )  # fmt: skip


def test_the_date_range_keeps_only_the_rows_between_its_ends(admin_client):
    _usage(dt.date(2026, 11, 30))
    inside = _usage(dt.date(2026, 12, 1))
    _usage(dt.date(2026, 12, 3))
    url = reverse("admin:billing_usagedaily_changelist")

    response = admin_client.get(f"{url}?date__range__gte=2026-12-01&date__range__lte=2026-12-02")

    assert list(response.context["cl"].queryset) == [inside]


def test_a_date_that_is_not_one_is_named_and_no_rows_are_passed_off_as_matching(admin_client):
    _usage(dt.date(2026, 12, 1))
    url = reverse("admin:billing_usagedaily_changelist")

    response = admin_client.get(f"{url}?date__range__gte=2026-13-45", follow=True)

    assert response.status_code == 200
    page = response.content.decode()
    assert "not a valid date" in page
    assert "2026-13-45" in page
    assert list(response.context["cl"].queryset) == []
