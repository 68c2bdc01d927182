"""Billing writes that are not usage or credit movements (those live in usage.py and
credits.py)."""

from __future__ import annotations

import logging

from django.db import transaction

from accounts.models import User
from billing.models import BillingAccount
from plumbing.actors import actor_label

logger = logging.getLogger(__name__)


def billing_account_for(user: User) -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(user=user)
    return account


def billing_mode_set(*, user: User, mode: str, actor) -> bool:
    """Switch a user between postpaid and prepaid. Returns False if already so.

    Usage already recorded keeps the way it was settled; days collected from now on follow
    the new mode.
    """
    if mode not in BillingAccount.Mode.values:
        raise ValueError(f"Unknown billing mode {mode!r}; use prepaid or postpaid.")
    with transaction.atomic():
        account = billing_account_for(user)
        account = BillingAccount.objects.select_for_update().get(pk=account.pk)
        if account.mode == mode:
            return False
        account.mode = mode
        account.save(update_fields=["mode", "updated_at"])
    logger.info("billing mode of %s set to %s by %s", user.pk, mode, actor_label(actor))
    return True
