"""The month ahead: the projected cost of the month, and the invoice preview.

The projection rule, in one place (`projected_month_cost`): the month-to-date cost divided
by the days of the month before today (a day's usage is collected once it is over), times
the days in the month, rounded to cents (half up). On the first of the month there is no
complete day to extrapolate from: the projection is the month to date itself.

The invoice preview is, for a postpaid user with a subscription, Stripe's own preview of
the next invoice (what was reported through meter events so far); for a prepaid user the
month's projected debit from their credits. It is asked of Stripe inside the page's
request, within the gateway's deadline; when Stripe cannot answer the page says so.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.models import BillingProfile, UsageDaily
from billing.pricing import to_cents

logger = logging.getLogger(__name__)
ZERO = Decimal("0")


def month_of(day: dt.date) -> tuple[dt.date, dt.date]:
    """The first day of `day`'s month and the first day of the next."""
    first = day.replace(day=1)
    return first, (first + dt.timedelta(days=32)).replace(day=1)


def projected_month_cost(month_to_date: Decimal, *, today: dt.date) -> Decimal:
    """The month's cost if the rest of it goes as the complete days so far did, in cents."""
    days_so_far = today.day - 1
    if days_so_far == 0:
        return to_cents(month_to_date)
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    return to_cents(month_to_date * days_in_month / days_so_far)


def month_costs(user_ids, *, month: dt.date, billed_via: str | None = None) -> dict[str, Decimal]:
    """Each user's usage cost in `month`'s calendar month (UTC), exact (not rounded), only
    the days settled through `billed_via` if given. One query for any number of users, over
    the monthly rollup."""
    first, _following = month_of(month)
    channel = "AND u.billed_via = %s" if billed_via else ""
    params = [list(user_ids), first] + ([billed_via] if billed_via else [])
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT u.user_id, SUM(u.total_cost) FROM usage_monthly u
            WHERE u.user_id = ANY(%s) AND u.month = %s {channel}
            GROUP BY u.user_id
            """,  # noqa: S608 - the optional condition is ours, values are parameters
            params,
        )
        return {user_id: Decimal(total) for user_id, total in cursor}


@dataclass(frozen=True)
class MonthForecast:
    month_to_date: Decimal  # in cents
    projected: Decimal  # in cents
    days_so_far: int
    days_in_month: int


def month_forecast(user: User, *, today: dt.date | None = None, billed_via=None) -> MonthForecast:
    today = today or timezone.now().date()
    so_far = month_costs([user.pk], month=today, billed_via=billed_via).get(user.pk, ZERO)
    return MonthForecast(
        month_to_date=to_cents(so_far),
        projected=projected_month_cost(so_far, today=today),
        days_so_far=today.day - 1,
        days_in_month=calendar.monthrange(today.year, today.month)[1],
    )


@dataclass(frozen=True)
class InvoicePreview:
    """What the user's next bill looks like. `kind`: "stripe" (Stripe's upcoming invoice),
    "prepaid" (the month's projected debit from credits), "unavailable" (Stripe could not
    answer now) or "none" (no subscription: nothing to preview)."""

    kind: str
    total: Decimal = ZERO
    currency: str = "USD"
    lines: tuple[tuple[str, Decimal], ...] = ()
    period_end: dt.datetime | None = None
    note: str = ""


_UNREAD = object()


def invoice_preview(user: User, *, today: dt.date | None = None, profile=_UNREAD) -> InvoicePreview:
    """`profile`: the user's BillingProfile (or None) when the caller has it already."""
    if profile is _UNREAD:
        profile = BillingProfile.objects.filter(user=user).first()
    if profile is not None and profile.is_prepaid:
        forecast = month_forecast(user, today=today, billed_via=UsageDaily.BilledVia.CREDITS)
        return InvoicePreview(
            kind="prepaid",
            total=forecast.projected,
            note="The usage of this month, projected to its end, taken from your credits.",
        )
    if (
        profile is None
        or not profile.stripe_subscription_id
        or not profile.has_active_subscription
        or not user.stripe_customer_id
    ):
        return InvoicePreview(kind="none", note="No subscription: there is no invoice to preview.")
    if not gateway.is_configured():
        return InvoicePreview(
            kind="unavailable", note="No invoice preview here: Stripe is not configured."
        )
    try:
        upcoming = gateway.preview_upcoming_invoice(
            customer_id=user.stripe_customer_id, subscription_id=profile.stripe_subscription_id
        )
    except gateway.StripeGatewayError as error:
        logger.warning("invoice preview of %s unavailable: %s", user.pk, error)
        return InvoicePreview(
            kind="unavailable",
            note="The invoice preview is unavailable right now (Stripe did not answer); "
            "try again in a few minutes.",
        )
    return InvoicePreview(
        kind="stripe",
        total=upcoming.amount_due,
        currency=upcoming.currency,
        lines=upcoming.lines,
        period_end=upcoming.period_end,
        note="Stripe's preview of your next invoice: the usage reported so far this period.",
    )
