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
_ZERO = Decimal(0)


def _decimal(value, name: str) -> Decimal:
    if isinstance(value, float):  # a float has already lost the exact value
        raise TypeError(f"{name} must be a Decimal, not a float")
    return value if isinstance(value, Decimal) else Decimal(value)


_CONTEXT = Context(prec=60)  # room for 10 places after any figure we accept


def quantize(value: Decimal) -> Decimal:
    # Positional arguments: the C method's keyword parsing cost three times the rounding
    # itself, and a usage batch rounds four figures a record (issue 16).
    return value.quantize(PLACES, ROUND_HALF_EVEN, _CONTEXT)


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


# The rate card's resources, in the order of Rates' fields and `resource_costs_of`.
RESOURCE_NAMES = ("cpu_hour", "gpu_hour", "storage_gb_month", "api_calls_1k")


def resource_costs(quantities: Quantities, rates: Rates) -> dict[str, Decimal]:
    """What each resource of one day's usage costs, exactly (not rounded), keyed by the
    rate card's resource names. Their sum, rounded once, is `day_cost`."""
    return dict(
        zip(
            RESOURCE_NAMES,
            _resource_costs(
                _decimal(quantities.cpu_hours, "cpu_hours"),
                _decimal(quantities.gpu_hours, "gpu_hours"),
                _decimal(quantities.storage_gb_months, "storage_gb_months"),
                int(quantities.api_calls),
                Rates(
                    *(
                        _decimal(getattr(rates, name), name)
                        for name in ("cpu_hour", "gpu_hour", "storage_gb_month", "api_calls_1k")
                    )
                ),
            ),
            strict=True,
        )
    )


def resource_costs_of(
    cpu_hours: Decimal, gpu_hours: Decimal, storage_gb_months: Decimal, api_calls: int, rates
) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """`resource_costs` of figures already checked (Decimals, an int: sums read from the
    database) and a RateBook's rates, in the order of RESOURCE_NAMES, without a
    `Quantities`, a checked copy of the rates and a dict each: the Stripe reporting prices
    hundreds of user-months a batch."""
    return _resource_costs(cpu_hours, gpu_hours, storage_gb_months, api_calls, rates)


def _resource_costs(cpu_hours, gpu_hours, storage_gb_months, api_calls: int, rates: Rates):
    # The formulas, in one place (docs/billing.md).
    return (
        cpu_hours * rates.cpu_hour,
        gpu_hours * rates.gpu_hour,
        storage_gb_months * rates.storage_gb_month,
        Decimal(api_calls) * rates.api_calls_1k / CALLS_PER_PRICE_UNIT,
    )


def day_cost(quantities: Quantities, rates: Rates) -> Decimal:
    """The cost of one day's usage: the sum of quantity times unit price."""
    return quantize(sum(resource_costs(quantities, rates).values(), Decimal(0)))


def cost_of(
    cpu_hours: Decimal, gpu_hours: Decimal, storage_gb_months: Decimal, api_calls: int, rates
) -> Decimal:
    """`day_cost` of figures already checked (Decimals, an int), without building a
    `Quantities` per record: the usage upsert prices thousands of records a batch."""
    return quantize(
        sum(_resource_costs(cpu_hours, gpu_hours, storage_gb_months, api_calls, rates), _ZERO)
    )


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
        # Users with a negotiated price; everyone else pays the card, whose rates on a day
        # are looked up once (`rates`).
        self._negotiated = {user_id for user_id, _ in self._users}
        self._rates: dict[tuple[str | None, dt.date], Rates] = {}
        for series in [*self._card.values(), *self._users.values()]:
            series.sort(reverse=True)
        # When prices take effect: `changes_within` asks it per user.
        self._card_dates = {since for series in self._card.values() for since, _ in series}
        self._user_dates: dict[str, set[dt.date]] = defaultdict(set)
        for (user_id, _), series in self._users.items():
            self._user_dates[user_id].update(since for since, _ in series)

    @classmethod
    def load(cls, *, user_ids=None) -> RateBook:
        from django.db.models import Q
        from django.db.models.expressions import RawSQL

        from billing.models import Price
        from plumbing.db import sql_array

        prices = Price.objects.all()
        if user_ids is not None:
            # One array literal, not an IN list of thousands of parameters (the upsert's).
            ids = RawSQL("SELECT unnest(%s::text[])", [sql_array(sorted(user_ids), text=True)])
            prices = prices.filter(Q(user__isnull=True) | Q(user_id__in=ids))
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

    def changes_within(self, *, user_id: str | None, since: dt.date, until: dt.date) -> bool:
        """Whether any price that may apply to the user takes effect after `since` and
        before `until` (so a day in [since, until) may be priced differently from
        `since`). Cautious: a card change the user's negotiated price hides counts too."""
        dates = self._card_dates | self._user_dates.get(user_id, set())
        return any(since < effective < until for effective in dates)

    def rates(self, *, user_id: str | None, day: dt.date) -> Rates:
        key = (user_id if user_id in self._negotiated else None, day)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = self._rates_on(user_id=key[0], day=day)
        return rates

    def _rates_on(self, *, user_id: str | None, day: dt.date) -> Rates:
        return Rates(
            # Rates' fields are named after the rate card's resources.
            **{
                field.name: self.unit_price(user_id=user_id, resource=field.name, day=day)
                for field in fields(Rates)
            }
        )
