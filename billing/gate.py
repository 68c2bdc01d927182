"""The billing gate on placement: a user gets a cluster once their billing is set up."""

from __future__ import annotations

from django.conf import settings

from accounts.models import User
from billing.models import BillingAccount, UserCredits


def placement_blocker(user: User) -> str | None:
    """Why the user may not be placed automatically yet, or None if they may."""
    if not settings.PLACEMENT_REQUIRES_BILLING:
        return None
    account = BillingAccount.objects.filter(user=user).first()
    if account is not None and account.mode == BillingAccount.Mode.PREPAID:
        credits = UserCredits.objects.filter(user=user).first()
        if credits is not None and credits.balance > 0:
            return None
        return "Buy credits to get a place on a cluster."
    if account is not None and account.subscription_status in BillingAccount.ACTIVE_SUBSCRIPTION:
        return None
    return "Add a payment method to get a place on a cluster."
