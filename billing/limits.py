"""Spending limits: the postpaid monthly cap and the prepaid low-balance threshold and floor.

A profile's own value wins; empty means the default from settings. The floor (below which
a prepaid user is stopped after the grace period) is one setting for everyone.
"""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from billing.models import BillingProfile, SpendingLimitChange
from plumbing.actors import actor_label
from plumbing.formatting import money

ZERO = Decimal("0")
_CONTEXT = Context(prec=60)


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


# Setting them ---------------------------------------------------------------------------

UNCHANGED: Any = object()  # leave this limit as it is
CENT = Decimal("0.01")
FIELDS = {
    "monthly_spending_cap": "monthly spending cap",
    "low_balance_threshold": "low-balance threshold",
}


def limit_maximum(*, by_user: bool) -> Decimal:
    return _setting("SPENDING_CAP_USER_MAX" if by_user else "SPENDING_CAP_OPERATOR_MAX")


def limit_problem(value, *, name: str, by_user: bool) -> str | None:
    """Why `value` cannot be a spending limit, or None. None itself (the default) is fine."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal):
        return f"The {name} must be a decimal amount in US dollars."
    high = limit_maximum(by_user=by_user)
    allowed = f"allowed: {money(ZERO)} to {money(high)}, or empty for the default"
    if not value.is_finite():
        return f"The {name} must be a number ({allowed})."
    if value < 0:
        return f"The {name} cannot be negative ({allowed})."
    if value > high:
        who = "you may set" if by_user else "may be set"
        return f"That is more than {who}: {allowed}."
    if value != value.quantize(CENT, context=_CONTEXT):
        return f"The {name} is in dollars and cents: at most two decimal places ({allowed})."
    return None


def spending_limits_set(
    *,
    user: User,
    monthly_spending_cap=UNCHANGED,
    low_balance_threshold=UNCHANGED,
    actor,
    by_user: bool,
) -> list[SpendingLimitChange]:
    """Set a user's cap and/or threshold (None: back to the default; UNCHANGED: leave it).
    The user sets theirs up to SPENDING_CAP_USER_MAX, operators up to
    SPENDING_CAP_OPERATOR_MAX. Bad values raise ValidationError (per field) and write
    nothing. Each actual change is recorded; the new limits are evaluated for alerts at once.
    """
    wanted = {
        field: value
        for field, value in (
            ("monthly_spending_cap", monthly_spending_cap),
            ("low_balance_threshold", low_balance_threshold),
        )
        if value is not UNCHANGED
    }
    errors = {
        field: problem
        for field, value in wanted.items()
        if (problem := limit_problem(value, name=FIELDS[field], by_user=by_user))
    }
    if errors:
        raise ValidationError(errors)
    from billing.alerts import spending_alerts_evaluate
    from billing.standing import standing_check_later

    with transaction.atomic():
        BillingProfile.objects.get_or_create(user=user)
        profile = BillingProfile.objects.select_for_update().get(user=user)
        changes = []
        for field, value in wanted.items():
            old = getattr(profile, field)
            if old == value:
                continue
            setattr(profile, field, value)
            changes.append(
                SpendingLimitChange(
                    user=user,
                    field=field,
                    old=old,
                    new=value,
                    actor=actor_label(actor),
                    by_user=by_user,
                )
            )
        if changes:
            profile.save(update_fields=[*(c.field for c in changes), "updated_at"])
            SpendingLimitChange.objects.bulk_create(changes)
            spending_alerts_evaluate(user_ids=[user.pk])
            # A raised cap resumes a user stopped over it at once (a job, after commit).
            standing_check_later(user_ids=[user.pk])
    return changes
