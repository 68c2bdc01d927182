"""How a user pays: their billing profile (prepaid or postpaid) and switching it."""

from __future__ import annotations

import logging

from django.db import transaction

from accounts.models import User
from billing.models import BillingProfile
from plumbing.actors import actor_label

logger = logging.getLogger(__name__)


def billing_profile_ensure(*, user: User) -> BillingProfile:
    """The user's billing profile, created (postpaid) the first time it is needed."""
    profile, _ = BillingProfile.objects.get_or_create(user=user)
    return profile


def billing_mode_set(*, user: User, mode: str, actor) -> bool:
    """Switch a user between postpaid and prepaid. Returns False if already so.

    Usage already recorded keeps the way it was settled; days collected from now on follow
    the new mode.
    """
    if mode not in BillingProfile.Mode.values:
        raise ValueError(f"Unknown billing mode {mode!r}; use prepaid or postpaid.")
    with transaction.atomic():
        profile = billing_profile_ensure(user=user)
        profile = BillingProfile.objects.select_for_update().get(pk=profile.pk)
        if profile.mode == mode:
            return False
        profile.mode = mode
        profile.save(update_fields=["mode", "updated_at"])
    logger.info("billing mode of %s set to %s by %s", user.pk, mode, actor_label(actor))
    return True
