"""Whether users may keep their service, and the service stops that follow when not.

A user on a cluster is ineligible, for one or more reasons, while:
- prepaid: their credit balance is below the floor (PREPAID_BALANCE_FLOOR);
- postpaid: their month-to-date cost (usage billed through Stripe, this UTC month) is over
  their monthly spending cap (`billing.limits.spending_cap_of`);
- postpaid: they have no live subscription (only where PLACEMENT_REQUIRES_BILLING, the same
  rule that keeps them off a cluster in the first place);
- an invoice of theirs is unpaid after a failed payment (dunning: Stripe retries it
  meanwhile; `invoice.paid` ends it).

`standing_evaluate` answers for any set of users in a few queries, whatever their number,
and moves the stops forward: it opens a stop for each new (user, reason) with its grace
period (SERVICE_STOP_GRACE_HOURS, or DUNNING_GRACE_HOURS for a failed payment; 0 stops at
once), resolves the open stops whose reason is gone (automatic resume), and enforces those
whose grace has run out. A stop in force deactivates the user's Hopsworks account
(`billing.gate.access_blocker`, `clusters.services.accounts_refresh`, in the same
transaction; the account sync job does the call); the user keeps their assignment and data.

An operator may lift a stop with a reason (`service_stop_lift`): the stop is resolved, and
no new stop for that reason is opened until the hold the operator chose has passed; then a
user still ineligible gets a new stop, with a new grace period.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from accounts.models import User
from billing.limits import balance_floor, spending_cap_of
from billing.models import (
    BillingHistory,
    BillingProfile,
    ServiceStop,
    UsageDaily,
    UserCredits,
)
from clusters.models import UserHopsworksAssignment
from plumbing.actors import actor_label
from plumbing.formatting import money
from plumbing.jobs import defer

logger = logging.getLogger(__name__)

Reason = ServiceStop.Reason
ZERO = Decimal("0")
LIFT_HOURS_MAX = 24 * 31

# What the user does to be eligible again, shown on their page and in the mail.
HOW_TO_RESUME = {
    Reason.BALANCE_BELOW_FLOOR: "Buy credits: your service resumes as soon as your balance "
    "is back above the minimum.",
    Reason.OVER_CAP: "Raise your monthly spending cap (or wait for the next month): your "
    "service resumes as soon as this month's cost is within it.",
    Reason.NO_SUBSCRIPTION: "Add a payment method: your service resumes as soon as your "
    "subscription is live.",
    Reason.PAYMENT_FAILED: "Pay the open invoice (or update your payment method so Stripe's "
    "next attempt succeeds): your service resumes as soon as it is paid.",
}

# Why an open stop was resolved on its own, by reason.
ELIGIBLE_AGAIN = {
    Reason.BALANCE_BELOW_FLOOR: "Balance back at or above the floor (or no longer prepaid).",
    Reason.OVER_CAP: "Month-to-date cost within the cap (or no longer postpaid).",
    Reason.NO_SUBSCRIPTION: "Subscription live (or no longer postpaid).",
    Reason.PAYMENT_FAILED: "No unpaid failed invoice left.",
}


class StandingError(Exception):
    """A stop that cannot be lifted as asked; the message says why."""


def grace_of(reason: str) -> dt.timedelta:
    hours = (
        settings.DUNNING_GRACE_HOURS
        if reason == Reason.PAYMENT_FAILED
        else settings.SERVICE_STOP_GRACE_HOURS
    )
    return dt.timedelta(hours=max(0, int(hours)))


def month_start(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date().replace(day=1)


def _scope(user_ids) -> set[str]:
    """The users to judge: those on a cluster, and those with an open stop (a stop stays
    until its reason is gone, even if the user has left their cluster meanwhile)."""
    assigned = UserHopsworksAssignment.objects.all()
    stopped = ServiceStop.objects.filter(resolved_at__isnull=True)
    if user_ids is not None:
        assigned = assigned.filter(user_id__in=user_ids)
        stopped = stopped.filter(user_id__in=user_ids)
    return set(assigned.values_list("user_id", flat=True)) | set(
        stopped.values_list("user_id", flat=True)
    )


def ineligibility(*, user_ids=None, now: dt.datetime | None = None) -> dict[tuple, str]:
    """(user id, reason) -> the figures, for each reason a user in scope is ineligible.
    Six queries whatever the number of users."""
    now = now or timezone.now()
    scope = _scope(user_ids)
    if not scope:
        return {}
    profiles = {p.user_id: p for p in BillingProfile.objects.filter(user_id__in=scope)}
    found: dict[tuple, str] = {}

    floor = balance_floor()
    prepaid = [uid for uid, p in profiles.items() if p.is_prepaid]
    balances = {
        row["user_id"]: row["total_purchased"] - row["total_used"]
        for row in UserCredits.objects.filter(user_id__in=prepaid).values(
            "user_id", "total_purchased", "total_used"
        )
    }
    for uid in prepaid:
        balance = balances.get(uid, ZERO)
        if balance < floor:
            found[(uid, Reason.BALANCE_BELOW_FLOOR)] = (
                f"Balance {money(balance)} is below the floor {money(floor)}."
            )

    postpaid = [uid for uid in scope if uid not in profiles or not profiles[uid].is_prepaid]
    start = month_start(now)
    month_to_date = dict(
        UsageDaily.objects.filter(
            user_id__in=postpaid,
            date__gte=start,
            date__lte=now.astimezone(dt.UTC).date(),
            billed_via=UsageDaily.BilledVia.STRIPE,
        )
        .values("user_id")
        .order_by()
        .annotate(total=Sum("total_cost"))
        .values_list("user_id", "total")
    )
    for uid, total in month_to_date.items():
        cap = spending_cap_of(profiles.get(uid))
        if total > cap:
            found[(uid, Reason.OVER_CAP)] = (
                f"Cost since {start:%Y-%m-%d} {money(total)} is over the monthly cap {money(cap)}."
            )
    if settings.PLACEMENT_REQUIRES_BILLING:
        for uid in postpaid:
            profile = profiles.get(uid)
            if profile is None or not profile.has_active_subscription:
                status = (profile.subscription_status if profile else "") or "none"
                found[(uid, Reason.NO_SUBSCRIPTION)] = f"Subscription status: {status}."

    failed = (
        BillingHistory.objects.filter(
            user_id__in=scope,
            status=BillingHistory.Status.FAILED,
            stripe_invoice_id__isnull=False,
        )
        .values("user_id")
        .order_by()
        .annotate(count=Count("pk"), total=Sum("amount"))
    )
    for row in failed:
        found[(row["user_id"], Reason.PAYMENT_FAILED)] = (
            f"{row['count']} invoice(s) unpaid after a failed payment, "
            f"{money(row['total'])} in all."
        )
    return found


@dataclass
class Evaluation:
    """What one evaluation did."""

    opened: list[ServiceStop] = field(default_factory=list)
    enforced: list[ServiceStop] = field(default_factory=list)
    resolved: list[ServiceStop] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.opened)} stop(s) opened, {len(self.enforced)} enforced, "
            f"{len(self.resolved)} resolved"
        )


def standing_evaluate(
    *, user_ids=None, now: dt.datetime | None = None, actor="billing"
) -> Evaluation:
    """Judge the given users (every user on a cluster when None) and move their stops on:
    open, resolve, enforce. Users whose account must change are refreshed in this
    transaction (the account sync runs after commit). Safe to run at the same time as
    itself: a (user, reason) has one open stop (the database says so; a concurrent insert
    waits for the other transaction and then does nothing)."""
    now = now or timezone.now()
    user_ids = sorted(set(user_ids)) if user_ids is not None else None
    result = Evaluation()
    with transaction.atomic():
        conditions = ineligibility(user_ids=user_ids, now=now)
        open_stops = ServiceStop.objects.select_for_update().filter(resolved_at__isnull=True)
        if user_ids is not None:
            open_stops = open_stops.filter(user_id__in=user_ids)
        open_stops = list(open_stops.order_by("pk"))
        open_keys = {(s.user_id, s.reason) for s in open_stops}
        held = set(
            ServiceStop.objects.filter(
                resolution=ServiceStop.Resolution.LIFTED,
                lifted_until__gt=now,
                user_id__in={uid for uid, _ in conditions},
            ).values_list("user_id", "reason")
        )
        to_open = sorted(k for k in conditions if k not in open_keys and k not in held)
        result.opened = _insert(to_open, conditions, now)

        for stop in open_stops:
            if (stop.user_id, stop.reason) not in conditions:
                stop.resolved_at = now
                stop.resolution = ServiceStop.Resolution.ELIGIBLE
                stop.resolution_note = ELIGIBLE_AGAIN[stop.reason]
                stop.resolved_by = actor_label(actor)
                result.resolved.append(stop)
            elif stop.stopped_at is None and stop.enforce_at <= now:
                stop.stopped_at = now
                stop.detail = conditions[(stop.user_id, stop.reason)]
                result.enforced.append(stop)
        ServiceStop.objects.bulk_update(
            result.resolved, ["resolved_at", "resolution", "resolution_note", "resolved_by"]
        )
        ServiceStop.objects.bulk_update(result.enforced, ["stopped_at", "detail"])

        changed = {s.user_id for s in result.enforced} | {
            s.user_id for s in result.resolved if s.stopped_at is not None
        }
        changed |= {s.user_id for s in result.opened if s.stopped_at is not None}
        _refresh_accounts(changed)
        for stop in result.opened:
            if stop.reason == Reason.PAYMENT_FAILED:
                _notice_later(stop)
    for stop in result.opened:
        logger.info("service stop %s opened for %s: %s", stop.pk, stop.user_id, stop.detail)
    for stop in result.enforced + [s for s in result.opened if s.stopped_at]:
        logger.warning("user %s stopped: %s", stop.user_id, stop.get_reason_display())
    return result


def _insert(keys: list[tuple], conditions: dict, now: dt.datetime) -> list[ServiceStop]:
    """Open stops; a (user, reason) opened concurrently is skipped (ON CONFLICT on the
    partial unique index), and only the rows this transaction wrote are returned."""
    if not keys:
        return []
    enforce_at = [now + grace_of(reason) for _, reason in keys]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_service_stop
                (user_id, reason, detail, detected_at, enforce_at, stopped_at,
                 resolution, resolution_note, resolved_by)
            SELECT v.user_id, v.reason, v.detail, %s, v.enforce_at,
                   CASE WHEN v.enforce_at <= %s THEN %s::timestamptz END, '', '', ''
            FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[])
              AS v(user_id, reason, detail, enforce_at)
            ON CONFLICT (user_id, reason) WHERE resolved_at IS NULL DO NOTHING
            RETURNING id
            """,
            [
                now,
                now,
                now,
                [uid for uid, _ in keys],
                [reason for _, reason in keys],
                [conditions[k] for k in keys],
                enforce_at,
            ],
        )
        ids = [row[0] for row in cursor.fetchall()]
    return list(ServiceStop.objects.filter(pk__in=ids).order_by("pk"))


def _refresh_accounts(user_ids: set[str]) -> None:
    from clusters.services import accounts_refresh

    for user in User.objects.filter(pk__in=user_ids).order_by("pk"):
        accounts_refresh(user=user)


def _notice_later(stop: ServiceStop) -> None:
    from billing.tasks import send_payment_failed_notice  # tasks import this module

    defer(send_payment_failed_notice, queueing_lock=f"stop-notice:{stop.pk}", stop_id=stop.pk)


def standing_check_later(*, user_ids) -> None:
    """Queue an evaluation of these users in the current transaction (usage written, a
    credit movement, a mode switch): the request that caused it does not wait for it."""
    from billing.tasks import evaluate_standing  # tasks import this module

    user_ids = sorted({str(uid) for uid in user_ids})
    if not user_ids:
        return
    # One string of ids, not a JSON list: a usage batch names thousands of users, and
    # psycopg escapes every quote of a list's JSON (inside Procrastinate's array of jobs)
    # character by character, about 40 ms a batch (bench/README.md). An id holding the
    # separator (or empty) goes as a list.
    if all(uid and " " not in uid for uid in user_ids):
        defer(evaluate_standing, users=" ".join(user_ids))
    else:
        defer(evaluate_standing, user_ids=user_ids)


def service_stop_lift(
    *, stop: ServiceStop, reason: str, hours: int, actor, now: dt.datetime | None = None
) -> ServiceStop:
    """An operator ends a stop: the user is resumed at once, and no new stop for the same
    reason is opened for `hours`; after that, a user still ineligible gets a new stop with
    a new grace period. The reason is kept on the stop."""
    now = now or timezone.now()
    reason = (reason or "").strip()
    if not reason:
        raise StandingError("Say why the stop is lifted (it is kept on the stop).")
    if not isinstance(hours, int) or not 1 <= hours <= LIFT_HOURS_MAX:
        raise StandingError(f"Hold off a new stop for 1 to {LIFT_HOURS_MAX} hours.")
    with transaction.atomic():
        stop = ServiceStop.objects.select_for_update().get(pk=stop.pk)
        if stop.resolved_at is not None:
            raise StandingError(
                f"This stop was already resolved ({stop.get_resolution_display()}) at "
                f"{stop.resolved_at:%Y-%m-%d %H:%M} UTC."
            )
        stop.resolved_at = now
        stop.resolution = ServiceStop.Resolution.LIFTED
        stop.resolution_note = reason
        stop.resolved_by = actor_label(actor)
        stop.lifted_until = now + dt.timedelta(hours=hours)
        stop.save(
            update_fields=[
                "resolved_at",
                "resolution",
                "resolution_note",
                "resolved_by",
                "lifted_until",
            ]
        )
        if stop.stopped_at is not None:
            _refresh_accounts({stop.user_id})
    logger.info("service stop %s of %s lifted by %s", stop.pk, stop.user_id, stop.resolved_by)
    return stop


def stops_in_force(user: User):
    return ServiceStop.objects.filter(
        user=user, resolved_at__isnull=True, stopped_at__isnull=False
    ).order_by("stopped_at", "pk")


def open_stops_of(user: User) -> list[dict]:
    """The user's open stops for their page: why, since or from when, how to resume."""
    return [
        {
            "reason": stop.get_reason_display(),
            "detail": stop.detail,
            "in_force": stop.in_force,
            "stopped_at": stop.stopped_at,
            "enforce_at": stop.enforce_at,
            "how_to_resume": HOW_TO_RESUME[stop.reason],
        }
        for stop in ServiceStop.objects.filter(user=user, resolved_at__isnull=True).order_by(
            "enforce_at", "pk"
        )
    ]
