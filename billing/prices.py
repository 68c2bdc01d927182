"""Writing the rate card and negotiated prices. A price in effect is never edited or
deleted (past days were charged with it): a change is a new row from a later date."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from billing.models import Price
from plumbing.actors import actor_label

logger = logging.getLogger(__name__)

IN_EFFECT = (
    "This price is in effect: days have been charged with it. Add a new price from a "
    "later date instead."
)


def _refuse_if_in_effect(price: Price) -> None:
    stored = Price.objects.select_for_update().filter(pk=price.pk).first()
    if stored is not None and stored.is_in_effect:
        raise ValidationError(IN_EFFECT)


def price_save(*, price: Price, actor) -> Price:
    """Create a price, or change one not yet in effect, with the model's own validation.
    Raises ValidationError (what to fix) and writes nothing when a rule is broken."""
    creating = price._state.adding
    with transaction.atomic():
        if not creating:
            _refuse_if_in_effect(price)
        price.full_clean()
        price.save()
    logger.info(
        "price %s %s by %s", price, "created" if creating else "changed", actor_label(actor)
    )
    return price


def price_delete(*, price: Price, actor) -> None:
    with transaction.atomic():
        _refuse_if_in_effect(price)
        price.delete()
    logger.info("price %s deleted by %s", price, actor_label(actor))
