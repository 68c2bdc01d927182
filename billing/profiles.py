"""How a user pays: their billing profile (prepaid or postpaid) and switching it."""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing.models import BillingModeChange, BillingProfile, UsageDaily
from billing.standing import standing_check_later
from plumbing.actors import actor_label

logger = logging.getLogger(__name__)


def billing_profile_ensure(*, user: User) -> BillingProfile:
    """The user's billing profile, created (postpaid) the first time it is needed."""
    profile, _ = BillingProfile.objects.get_or_create(user=user)
    return profile


def start_of_day(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def billing_mode_set(
    *,
    user: User,
    mode: str,
    actor,
    effective_at: dt.datetime | None = None,
    reason: str = "",
) -> bool:
    """Switch a user between postpaid and prepaid from `effective_at` (default: now).
    Returns False if already so.

    The switch is recorded (`BillingModeChange`) with the profile change. A day is settled
    on the mode in force when it began (00:00 UTC), so a switch during a day takes effect
    with the next day, and a day collected late is still settled on its own mode. Days
    already collected never change channel: a switch may not take effect before the start
    of today, before the user's last switch, or at the start of a day that has usage.

    What the old mode leaves is settled in the same transaction: prepaid -> postpaid carries
    a negative prepaid balance to the first postpaid invoice (`prepaid_debt_carry`);
    postpaid -> prepaid queues the user's usage report, so what was collected up to the
    switch reaches Stripe first.
    """
    if mode not in BillingProfile.Mode.values:
        raise ValueError(f"Unknown billing mode {mode!r}; use prepaid or postpaid.")
    now = timezone.now()
    effective_at = effective_at or now
    if timezone.is_naive(effective_at):
        raise ValueError("effective_at must carry a time zone (UTC).")
    today_start = start_of_day(now.astimezone(dt.UTC).date())
    if effective_at < today_start:
        raise ValueError(
            f"A switch cannot take effect at {effective_at:%Y-%m-%d %H:%M} UTC, before the "
            f"start of today ({today_start:%Y-%m-%d} 00:00 UTC): days already begun keep "
            "the mode they began with."
        )
    with transaction.atomic():
        profile = billing_profile_ensure(user=user)
        profile = BillingProfile.objects.select_for_update().get(pk=profile.pk)
        if profile.mode == mode:
            return False
        last = (
            BillingModeChange.objects.filter(user=user)
            .order_by("-effective_at", "-id")
            .values_list("effective_at", flat=True)
            .first()
        )
        if last is not None and effective_at < last:
            raise ValueError(
                f"A switch cannot take effect at {effective_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"earlier than the last switch of this user ({last:%Y-%m-%d %H:%M:%S} UTC)."
            )
        # The first day the switch governs: the one beginning at or after effective_at.
        first_day = effective_at.astimezone(dt.UTC).date()
        if start_of_day(first_day) < effective_at:
            first_day += dt.timedelta(days=1)
        if UsageDaily.objects.filter(user=user, date__gte=first_day).exists():
            raise ValueError(
                f"{first_day} already has usage settled as {profile.mode}: a switch "
                f"effective at {effective_at:%Y-%m-%d %H:%M} UTC would change its channel. "
                "Let it take effect later (the default, now, starts with tomorrow)."
            )
        BillingModeChange.objects.create(
            user=user,
            from_mode=profile.mode,
            to_mode=mode,
            effective_at=effective_at,
            actor=actor_label(actor),
            reason=reason,
        )
        previous = profile.mode
        profile.mode = mode
        profile.save(update_fields=["mode", "updated_at"])
        standing_check_later(user_ids=[user.pk])  # the other mode's rules apply now
        _settle_the_old_mode(user=user, previous=previous, mode=mode, actor=actor)
    logger.info(
        "billing mode of %s set to %s from %s by %s",
        user.pk,
        mode,
        effective_at.isoformat(),
        actor_label(actor),
    )
    return True


def _settle_the_old_mode(*, user: User, previous: str, mode: str, actor) -> None:
    # Imported here: both modules import this one.
    from billing.adjustments import prepaid_debt_carry
    from billing.tasks import user_usage_report_defer

    if previous == BillingProfile.Mode.PREPAID and mode == BillingProfile.Mode.POSTPAID:
        prepaid_debt_carry(user=user, actor=actor)
    elif previous == BillingProfile.Mode.POSTPAID and mode == BillingProfile.Mode.PREPAID:
        user_usage_report_defer(user_id=user.pk)
