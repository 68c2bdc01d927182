"""The billing gates clusters asks through: placement (a user gets a cluster once their
billing is set up) and access (whether their Hopsworks account may be active)."""

from __future__ import annotations

from django.conf import settings

from accounts.models import User
from billing.models import AccountClosure, BillingProfile, UserCredits


def placement_blocker(user: User) -> str | None:
    """Why the user may not be placed automatically yet, or None if they may."""
    if not settings.PLACEMENT_REQUIRES_BILLING:
        return None
    profile = BillingProfile.objects.filter(user=user).first()
    if profile is not None and profile.is_prepaid:
        credits = UserCredits.objects.filter(user=user).first()
        if credits is not None and credits.balance > 0:
            return None
        return "Buy credits to get a place on a cluster."
    if profile is not None and profile.has_active_subscription:
        return None
    return "Add a payment method to get a place on a cluster."


def access_blocker(user: User) -> str | None:
    """Why the user's Hopsworks account must be deactivated for billing reasons (the account
    is closed, or a service stop is in force), or None. Asked by clusters whenever it decides
    what an account should be (ACCOUNT_ACCESS_GATE)."""
    if AccountClosure.objects.filter(user=user).exists():
        return "The account is closed."  # for good, even if the user is reactivated
    from billing.standing import HOW_TO_RESUME, stops_in_force

    stop = stops_in_force(user).first()
    if stop is None:
        return None
    return f"Service stopped: {stop.get_reason_display().lower()}. {HOW_TO_RESUME[stop.reason]}"
