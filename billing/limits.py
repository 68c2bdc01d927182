"""Spending limits: the postpaid monthly cap and the prepaid low-balance threshold and floor.

A profile's own value wins; empty means the default from settings. The floor (below which
a prepaid user is stopped after the grace period) is one setting for everyone.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings

from billing.models import BillingProfile


def _setting(name: str) -> Decimal:
    return Decimal(str(getattr(settings, name)))


def spending_cap_of(profile: BillingProfile | None) -> Decimal:
    """The user's monthly spending cap in USD (postpaid)."""
    if profile is not None and profile.monthly_spending_cap is not None:
        return profile.monthly_spending_cap
    return _setting("SPENDING_CAP_DEFAULT")


def low_balance_threshold_of(profile: BillingProfile | None) -> Decimal:
    """The balance below which a prepaid user is warned, in USD."""
    if profile is not None and profile.low_balance_threshold is not None:
        return profile.low_balance_threshold
    return _setting("LOW_BALANCE_THRESHOLD_DEFAULT")


def balance_floor() -> Decimal:
    """A prepaid balance below this stops the user (after SERVICE_STOP_GRACE_HOURS)."""
    return _setting("PREPAID_BALANCE_FLOOR")
