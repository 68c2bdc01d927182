"""Pricing: one pure Decimal function, the effective-date rule, overrides, proration."""

import datetime as dt
from decimal import Decimal

import pytest

from billing.models import Price
from billing.pricing import (
    Quantities,
    RateBook,
    Rates,
    cost_of,
    day_cost,
    storage_gb_months,
    to_cents,
)
from tests.factories import UserFactory

D = Decimal
CARD = Rates(
    cpu_hour=D("0.10"), gpu_hour=D("0.50"), storage_gb_month=D("0.15"), api_calls_1k=D("0.01")
)


def test_a_day_costs_quantity_times_price_summed():
    q = Quantities(cpu_hours=D("10"), gpu_hours=D("2"), storage_gb_months=D("1"), api_calls=5000)
    assert day_cost(q, CARD) == D("1") + D("1") + D("0.15") + D("0.05")


def test_storage_is_the_gb_held_over_the_days_in_that_month():
    assert storage_gb_months(gb_held=D("30"), day=dt.date(2026, 11, 5)) == D("1")
    assert storage_gb_months(gb_held=D("31"), day=dt.date(2026, 12, 5)) == D("1")
    assert storage_gb_months(gb_held=D("28"), day=dt.date(2026, 2, 1)) == D("1")
    # 100 GB held all of a 30-day month is 100 GB-months, $15, not 30 times that.
    month = sum(storage_gb_months(gb_held=D("100"), day=dt.date(2026, 11, d)) for d in range(1, 31))
    assert to_cents(day_cost(Quantities(D(0), D(0), month, 0), CARD)) == D("15.00")


def test_summing_sub_cent_days_loses_nothing_that_shows_in_cents():
    # 0.004 CPU hours a day ($0.0004) for 30 days is $0.012: one cent, not zero.
    days = [day_cost(Quantities(D("0.004"), D(0), D(0), 0), CARD) for _ in range(30)]
    assert days[0] == D("0.0004")
    assert to_cents(sum(days)) == D("0.01")


def test_floats_are_refused():
    with pytest.raises(TypeError, match="float"):
        day_cost(Quantities(0.1, D(0), D(0), 0), CARD)


def test_to_cents_rounds_half_up():
    assert to_cents(D("0.005")) == D("0.01")
    assert to_cents(D("0.0049999999")) == D("0.00")


@pytest.mark.django_db
def test_a_price_change_applies_from_its_date_and_past_days_keep_theirs():
    Price.objects.create(
        resource="cpu_hour", unit_price=D("0.12"), effective_from=dt.date(2026, 11, 15)
    )
    book = RateBook.load()
    assert book.unit_price(user_id=None, resource="cpu_hour", day=dt.date(2026, 11, 14)) == D(
        "0.10"
    )
    assert book.unit_price(user_id=None, resource="cpu_hour", day=dt.date(2026, 11, 15)) == D(
        "0.12"
    )


@pytest.mark.django_db
def test_a_negotiated_price_overrides_the_card_for_that_user_only():
    vip, other = UserFactory(), UserFactory()
    Price.objects.create(
        resource="gpu_hour", unit_price=D("0.30"), effective_from=dt.date(2026, 1, 1), user=vip
    )
    book = RateBook.load()
    day = dt.date(2026, 11, 1)
    assert book.rates(user_id=vip.pk, day=day).gpu_hour == D("0.30")
    assert book.rates(user_id=vip.pk, day=day).cpu_hour == D("0.10")
    assert book.rates(user_id=other.pk, day=day).gpu_hour == D("0.50")
    # Before the negotiated price starts, the card applies to the user too.
    assert book.rates(user_id=vip.pk, day=dt.date(2025, 12, 31)).gpu_hour == D("0.50")


def test_cost_of_prices_exactly_as_day_cost_does():
    # The usage upsert's per-record path (cost_of) and the one formula (day_cost) agree to
    # the last digit, including figures long enough for the context's precision to matter.
    import random

    rng = random.Random(16)
    rates = Rates(
        cpu_hour=D("0.0123456789012"),
        gpu_hour=D("2.5"),
        storage_gb_month=D("0.15"),
        api_calls_1k=D("0.0100000001"),
    )
    for _ in range(2000):
        figures = [
            D(rng.randrange(0, 10**19)).scaleb(-10)
            if rng.random() < 0.5
            else D(rng.randrange(0, 10**6)).scaleb(-rng.randrange(0, 11))
            for _ in range(3)
        ]
        calls = rng.randrange(0, 2**31)
        expected = day_cost(Quantities(*figures, calls), rates)
        assert cost_of(*figures, calls, rates) == expected
        assert str(cost_of(*figures, calls, rates)) == str(expected)


@pytest.mark.django_db
def test_a_book_loaded_for_some_users_prices_each_of_them_by_their_own_prices():
    vip, other, outsider = UserFactory(), UserFactory(), UserFactory()
    for user, price in ((vip, "0.30"), (outsider, "0.01")):
        Price.objects.create(
            resource="gpu_hour", unit_price=D(price), effective_from=dt.date(2026, 1, 1), user=user
        )
    book = RateBook.load(user_ids=[vip.pk, other.pk])
    day = dt.date(2026, 11, 1)
    # Looked up in any order, many times (rates are remembered per day and price list).
    for _ in range(2):
        assert book.rates(user_id=other.pk, day=day).gpu_hour == D("0.50")
        assert book.rates(user_id=vip.pk, day=day).gpu_hour == D("0.30")
        assert book.rates(user_id=vip.pk, day=dt.date(2025, 12, 31)).gpu_hour == D("0.50")
    # Not asked for: its negotiated price was not loaded.
    assert book.rates(user_id=outsider.pk, day=day).gpu_hour == D("0.50")
