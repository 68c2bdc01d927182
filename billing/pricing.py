"""What usage costs. One pure function prices a day; the formulas are in docs/billing.md.

Rounding rule, in one place: quantities and day costs keep 10 decimal places
(ROUND_HALF_EVEN), so summing days loses nothing that shows in cents; an amount is rounded
to cents (ROUND_HALF_UP) only where it is charged (`to_cents`).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, fields
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

from django.conf import settings

PLACES = Decimal("0.0000000001")
CENT = Decimal("0.01")
CALLS_PER_PRICE_UNIT = Decimal(1000)


def _decimal(value, name: str) -> Decimal:
    if isinstance(value, float):  # a float has already lost the exact value
        raise TypeError(f"{name} must be a Decimal, not a float")
    return value if isinstance(value, Decimal) else Decimal(value)


_CONTEXT = Context(prec=60)  # room for 10 places after any figure we accept


def quantize(value: Decimal) -> Decimal:
    return value.quantize(PLACES, rounding=ROUND_HALF_EVEN, context=_CONTEXT)


def to_cents(amount: Decimal) -> Decimal:
    """Round an amount to be charged to cents."""
    return _decimal(amount, "amount").quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Rates:
    """US dollars per CPU hour, GPU hour, storage GB-month and 1,000 API calls."""

    cpu_hour: Decimal
    gpu_hour: Decimal
    storage_gb_month: Decimal
    api_calls_1k: Decimal


@dataclass(frozen=True)
class Quantities:
    cpu_hours: Decimal
    gpu_hours: Decimal
    storage_gb_months: Decimal
    api_calls: int


# The usage figures, as named in Quantities and in usage_daily's columns.
FIGURES = tuple(field.name for field in fields(Quantities))


def resource_costs(quantities: Quantities, rates: Rates) -> dict[str, Decimal]:
    """What each resource of one day's usage costs, exactly (not rounded), keyed by the
    rate card's resource names. Their sum, rounded once, is `day_cost`."""
    return {
        "cpu_hour": _decimal(quantities.cpu_hours, "cpu_hours")
        * _decimal(rates.cpu_hour, "cpu_hour"),
        "gpu_hour": _decimal(quantities.gpu_hours, "gpu_hours")
        * _decimal(rates.gpu_hour, "gpu_hour"),
        "storage_gb_month": _decimal(quantities.storage_gb_months, "storage_gb_months")
        * _decimal(rates.storage_gb_month, "storage_gb_month"),
        "api_calls_1k": Decimal(int(quantities.api_calls))
        * _decimal(rates.api_calls_1k, "api_calls_1k")
        / CALLS_PER_PRICE_UNIT,
    }


def day_cost(quantities: Quantities, rates: Rates) -> Decimal:
    """The cost of one day's usage: the sum of quantity times unit price."""
    return quantize(sum(resource_costs(quantities, rates).values(), Decimal(0)))


def days_in_month(day: dt.date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def storage_unit() -> str:
    """The unit storage is billed in, "GiB" (2^30 bytes, the default) or "GB" (10^9 bytes)."""
    return settings.STORAGE_UNIT


def resource_unit(resource: str) -> str:
    """What one unit of a rate-card resource is, as the rate card states it."""
    units = {
        "cpu_hour": "core-hour",
        "gpu_hour": "GPU-hour",
        "storage_gb_month": f"{storage_unit()}-month ("
        + ("1 GiB = 2^30 bytes" if storage_unit() == "GiB" else "1 GB = 10^9 bytes")
        + ")",
        "api_calls_1k": "1,000 calls",
    }
    return units[resource]


def storage_gb_months(*, gb_held: Decimal, day: dt.date) -> Decimal:
    """A day's share of a GB-month: the GB held that day over the days in its month."""
    return quantize(_decimal(gb_held, "gb_held") / days_in_month(day))


class MissingPrice(Exception):
    pass


class RateBook:
    """Prices for many users and days from one query: the newest card price on or before
    the day, unless the user has a negotiated price on or before it."""

    def __init__(self, prices):
        self._card: dict[str, list[tuple[dt.date, Decimal]]] = defaultdict(list)
        self._users: dict[tuple[str, str], list[tuple[dt.date, Decimal]]] = defaultdict(list)
        for price in prices:
            target = (
                self._users[(price.user_id, price.resource)]
                if price.user_id
                else self._card[price.resource]
            )
            target.append((price.effective_from, price.unit_price))
        for series in [*self._card.values(), *self._users.values()]:
            series.sort(reverse=True)

    @classmethod
    def load(cls, *, user_ids=None) -> RateBook:
        from django.db.models import Q

        from billing.models import Price

        prices = Price.objects.all()
        if user_ids is not None:
            prices = prices.filter(Q(user__isnull=True) | Q(user_id__in=list(user_ids)))
        return cls(prices.only("resource", "unit_price", "effective_from", "user_id"))

    def change_days(self) -> list[dt.date]:
        """Every day one of its prices takes effect: between two of them each user's rates
        stay the same."""
        series = [*self._card.values(), *self._users.values()]
        return sorted({since for prices in series for since, _ in prices})

    @staticmethod
    def _on(series, day):
        return next((price for since, price in series if since <= day), None)

    def unit_price(self, *, user_id: str | None, resource: str, day: dt.date) -> Decimal:
        price = None
        if user_id is not None:
            price = self._on(self._users.get((user_id, resource), ()), day)
        if price is None:
            price = self._on(self._card.get(resource, ()), day)
        if price is None:
            raise MissingPrice(f"The rate card has no {resource} price on {day}.")
        return price

    def rates(self, *, user_id: str | None, day: dt.date) -> Rates:
        return Rates(
            # Rates' fields are named after the rate card's resources.
            **{
                field.name: self.unit_price(user_id=user_id, resource=field.name, day=day)
                for field in fields(Rates)
            }
        )
