"""Writing the rate card and negotiated prices. A price in effect is never edited or
deleted (past days were charged with it): a change is a new row from a later date."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import BooleanField, Case, Exists, OuterRef, Value, When
from django.utils import timezone

from billing.models import Price, UsageDaily
from plumbing.actors import actor_label

logger = logging.getLogger(__name__)

IN_EFFECT = (
    "This price is in effect: days have been charged with it. Add a new price from a "
    "later date instead."
)
PRICED_TODAY = (
    "This price started today and usage of today has already been priced with it: it is "
    "kept as charged. Add a new price from tomorrow instead."
)


def price_locked_reason(price: Price) -> str | None:
    """Why this price may no longer be changed or deleted, or None.

    The rule: a price that started before today is locked (past days were charged with
    it). One that starts today stays open for corrections today until usage of today has
    been priced with it (a usage row of today for anyone it applies to: anyone for a card
    price, the user for their own). Then it is refused, never repriced: what was charged
    stays as charged. Future prices are open."""
    today = timezone.now().date()
    if price.effective_from > today:
        return None
    if price.effective_from < today:
        return IN_EFFECT
    usage = UsageDaily.objects.filter(date=today)
    if price.user_id is not None:
        usage = usage.filter(user_id=price.user_id)
    return PRICED_TODAY if usage.exists() else None


def _refuse_if_in_effect(price: Price) -> None:
    stored = Price.objects.select_for_update().filter(pk=price.pk).first()
    if stored is not None:
        reason = price_locked_reason(stored)
        if reason:
            raise ValidationError(reason)


def prices_with_current(queryset):
    """Prices annotated with `current`: the price in effect now for its resource (and its
    user, for a negotiated one): started, and not replaced by one started later."""
    today = timezone.now().date()
    later = Price.objects.filter(
        resource=OuterRef("resource"),
        effective_from__gt=OuterRef("effective_from"),
        effective_from__lte=today,
    )
    replaced = Case(
        When(user__isnull=True, then=Exists(later.filter(user__isnull=True))),
        default=Exists(later.filter(user=OuterRef("user"))),
        output_field=BooleanField(),
    )
    return queryset.annotate(
        current=Case(
            When(effective_from__gt=today, then=Value(False)),
            default=~replaced,
            output_field=BooleanField(),
        )
    )


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
