"""The billing facts a user's admin page shows in several sections (billing, spending,
Stripe, the cost chart, and the console's summary and timeline), each read once per
request (`plumbing.memo.once`, on the user instance the page was built for).

The change page's user comes from the users admin's queryset, annotated with the list's
billing figures (`selectors.users_with_billing_figures`): those are used when present.
"""

from __future__ import annotations

from decimal import Decimal

from billing import selectors
from billing.forecast import MonthForecast, month_forecast
from billing.models import AccountClosure, BillingAdjustment, BillingModeChange, BillingProfile
from plumbing.memo import once

ZERO = Decimal("0")
# The newest this many of each history: what the sections and the timeline show.
HISTORY_LENGTH = 50
COST_CHART_DAYS = 90


def profile(user) -> BillingProfile | None:
    return once(user, "billing.profile", lambda: BillingProfile.objects.filter(user=user).first())


def mode(user) -> str:
    annotated = getattr(user, "billing_mode_now", None)
    if annotated is not None:
        return annotated
    found = profile(user)
    return found.mode if found else BillingProfile.Mode.POSTPAID


def month_to_date(user) -> Decimal:
    if hasattr(user, "month_to_date_total"):
        return user.month_to_date_total
    return once(user, "billing.month_to_date", lambda: selectors.month_to_date_cost(user))


def credit_balance(user) -> Decimal:
    if hasattr(user, "credit_balance_now"):
        return ZERO if user.credit_balance_now is None else user.credit_balance_now
    return once(user, "billing.credit_balance", lambda: selectors.credit_balance(user))


def forecast(user) -> MonthForecast:
    return once(user, "billing.forecast", lambda: month_forecast(user))


def closure(user) -> AccountClosure | None:
    return once(user, "billing.closure", lambda: AccountClosure.objects.filter(user=user).first())


def mode_changes(user) -> list[BillingModeChange]:
    """The newest switches, newest first."""
    return once(
        user,
        "billing.mode_changes",
        lambda: list(
            BillingModeChange.objects.filter(user=user).order_by("-effective_at", "-id")[
                :HISTORY_LENGTH
            ]
        ),
    )


def adjustments(user) -> list[BillingAdjustment]:
    """The newest operators' credits and debits, newest first."""
    return once(
        user,
        "billing.adjustments",
        lambda: list(
            BillingAdjustment.objects.filter(user=user).order_by("-created_at", "-id")[
                :HISTORY_LENGTH
            ]
        ),
    )


def newest_days(user) -> list[dict]:
    """The user's newest COST_CHART_DAYS days with usage, their cost per day (summed over
    clusters), newest first: the cost chart's days (those of the last COST_CHART_DAYS, all
    of which are among them) and the billing section's newest 30, in one query."""
    return once(
        user,
        "billing.newest_days",
        lambda: list(selectors.daily_breakdown(user, days=COST_CHART_DAYS)),
    )
