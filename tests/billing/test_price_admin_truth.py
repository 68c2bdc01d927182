"""The rate card says which price is in effect, and a price starting today can be corrected
today as long as no usage has been priced with it (then it is refused, never repriced)."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing.models import Price, UsageDaily
from billing.prices import price_delete, price_save
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/billing/price/"


def _day(offset: int) -> dt.date:
    return timezone.now().date() + dt.timedelta(days=offset)


def in_effect_column(client) -> dict[int, bool]:
    response = client.get(LIST, {"resource__exact": "cpu_hour"})
    changelist = response.context["cl"]
    return {p.pk: changelist.model_admin.in_effect(p) for p in changelist.result_list}


def new_price(offset: int, amount: str, *, resource="cpu_hour", user=None) -> Price:
    return price_save(
        price=Price(
            resource=resource, unit_price=Decimal(amount), effective_from=_day(offset), user=user
        ),
        actor="test",
    )


def test_in_effect_is_ticked_only_on_the_price_in_effect_now(operator_client):
    old = Price.objects.filter(user=None, resource="cpu_hour").order_by("effective_from").last()
    today = new_price(0, "0.30")
    tomorrow = new_price(1, "0.40")
    user = UserFactory()
    theirs = new_price(0, "0.10", user=user)

    column = in_effect_column(operator_client)

    assert column[old.pk] is False  # replaced by today's
    assert column[today.pk] is True
    assert column[tomorrow.pk] is False  # not yet
    assert column[theirs.pk] is True  # a user's own price is in effect beside the card's


def test_the_in_effect_column_costs_no_query_per_row(
    operator_client, django_assert_max_num_queries
):
    for offset in range(1, 6):
        new_price(offset, f"0.{offset}")
    with django_assert_max_num_queries(12):
        operator_client.get(LIST)


def test_a_typo_in_todays_price_can_be_fixed_today(operator_client):
    price = new_price(0, "30")

    response = operator_client.post(
        f"{LIST}{price.pk}/change/",
        {
            "resource": "cpu_hour",
            "unit_price": "0.30",
            "effective_from": _day(0).isoformat(),
            "user": "",
            "note": "typo fixed",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert Price.objects.get(pk=price.pk).unit_price == Decimal("0.30")


def test_todays_price_with_usage_priced_at_it_is_refused_and_the_usage_keeps_its_cost(
    operator_client,
):
    price = new_price(0, "30")
    usage = UsageDaily.objects.create(
        user=UserFactory(),
        hopsworks_cluster=ClusterFactory(),
        date=_day(0),
        cpu_hours=Decimal("1"),
        total_cost=Decimal("30"),
    )

    price.unit_price = Decimal("0.30")
    with pytest.raises(ValidationError, match="priced with it"):
        price_save(price=price, actor="test")
    with pytest.raises(ValidationError, match="priced with it"):
        price_delete(price=price, actor="test")
    page = operator_client.get(f"{LIST}{price.pk}/change/")
    assert b'name="unit_price"' not in page.content  # read-only

    assert Price.objects.get(pk=price.pk).unit_price == Decimal("30")
    assert UsageDaily.objects.get(pk=usage.pk).total_cost == Decimal("30")


def test_a_users_price_today_is_locked_only_by_their_own_usage():
    user, other = UserFactory(), UserFactory()
    theirs = new_price(0, "0.10", user=user)
    UsageDaily.objects.create(
        user=other, hopsworks_cluster=ClusterFactory(), date=_day(0), total_cost=Decimal("1")
    )

    theirs.unit_price = Decimal("0.11")
    price_save(price=theirs, actor="test")  # other people's usage is not priced with it
    assert Price.objects.get(pk=theirs.pk).unit_price == Decimal("0.11")
