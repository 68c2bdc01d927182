# ruff: noqa: S608 - table and column names come from the models; values are parameters
"""Closed months: corrections as invoice items on the next invoice.

A month Stripe no longer bills through meter events (its invoice finalized, ended before
the subscription began, older than Stripe takes events) is corrected with an invoice item
(`StripeUsageAdjustment`), decided and committed before it is sent, like an event; sent
with its identifier as the idempotency key and in its metadata, so a lost answer is found
at Stripe or resent, never sent twice. A batch of user-months takes a fixed number of
queries; each item is one Stripe call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Count

from billing import stripe_gateway as gateway
from billing.models import StripeUsageAdjustment
from billing.stripe_report_rules import (
    RESOURCES,
    Pair,
    ReportProfile,
    adjustment_description,
    changed_days,
    due_settle,
    reports_claim,
    reports_save,
)

logger = logging.getLogger(__name__)
PENDING = StripeUsageAdjustment.Status.PENDING


def _pending_adjustments(pairs: list[Pair], *, lock: bool) -> list[StripeUsageAdjustment]:
    table = StripeUsageAdjustment._meta.db_table
    return list(
        StripeUsageAdjustment.objects.raw(
            f"""
            SELECT * FROM {table}
            WHERE status = %s
              AND (user_id, month) IN (SELECT * FROM unnest(%s::text[], %s::date[]))
            ORDER BY id {"FOR UPDATE" if lock else ""}
            """,
            [PENDING, [u for u, _ in pairs], [m for _, m in pairs]],
        )
    )


def months_adjust(
    run,
    pairs: list[Pair],
    *,
    reasons: dict[Pair, str],
    targets: dict[Pair, dict[str, int]],
    versions: dict[Pair, int | None],
    profiles: dict[str, ReportProfile],
    now: dt.datetime,
) -> None:
    """Decide, and commit, each closed month's correction; then send the pending ones."""
    pairs = sorted(pairs)
    with transaction.atomic():
        claimed = reports_claim(pairs)
        run.skipped_locked += len(pairs) - len(claimed)
        waiting = {(a.user_id, a.month) for a in _pending_adjustments(list(claimed), lock=False)}
        free = [pair for pair in claimed if pair not in waiting]
        _decide(claimed, free, reasons=reasons, targets=targets, now=now)
        due_settle(free, versions)

    with transaction.atomic():
        claimed = reports_claim(pairs)
        if claimed:
            _send(run, claimed, profiles=profiles, now=now)


def _decide(claimed, free: list[Pair], *, reasons, targets, now) -> None:
    moved, wanted = [], {}
    for pair in free:
        reports = claimed[pair]
        deltas = {r: targets[pair][r] - reports[r].reported_cents for r in RESOURCES}
        if not any(deltas.values()):
            continue
        if sum(deltas.values()) == 0:
            # Cents moved between resources, the total is the same: nothing to invoice, the
            # split is only brought in line.
            for resource, delta in deltas.items():
                reports[resource].reported_cents += delta
                reports[resource].adjusted_cents += delta
                moved.append(reports[resource])
            continue
        wanted[pair] = deltas
    reports_save(moved)
    if not wanted:
        return
    since = {
        pair: max(
            (r.last_reported_at for r in claimed[pair].values() if r.last_reported_at), default=None
        )
        for pair in wanted
    }
    days = changed_days(since)
    made = _numbers(list(wanted))
    new = []
    for pair, deltas in wanted.items():
        user_id, month = pair
        cents = sum(deltas.values())
        digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
        new.append(
            StripeUsageAdjustment(
                user_id=user_id,
                month=month,
                cents=cents,
                resources={r: d for r, d in deltas.items() if d},
                description=adjustment_description(month, days.get(pair, []), cents),
                identifier=f"adjust-{digest}-{month:%Y%m}-{made.get(pair, 0) + 1}",
                created_at=now,
            )
        )
        logger.info("usage of %s for %s goes on an invoice item: %s", user_id, month, reasons[pair])
    StripeUsageAdjustment.objects.bulk_create(new)


def _numbers(pairs: list[Pair]) -> dict[Pair, int]:
    """How many adjustments each user-month has had (one query)."""
    wanted = set(pairs)
    counts = (
        StripeUsageAdjustment.objects.filter(
            user_id__in={u for u, _ in wanted}, month__in={m for _, m in wanted}
        )
        .values_list("user_id", "month")
        .annotate(n=Count("id"))
    )
    return {(u, m): n for u, m, n in counts if (u, m) in wanted}


def _send(run, claimed, *, profiles, now) -> None:
    """One pending item per user-month: a retry first looks for an item an earlier,
    lost answer made; the rows are held meanwhile."""
    first: dict[Pair, StripeUsageAdjustment] = {}
    for adjustment in _pending_adjustments(list(claimed), lock=True):
        first.setdefault((adjustment.user_id, adjustment.month), adjustment)
    currency = settings.STRIPE_CURRENCY
    touched, reports = [], []
    for pair, adjustment in first.items():
        user_id, month = pair
        profile = profiles[user_id]
        customer_id = profile.stripe_customer_id
        adjustment.attempts += 1
        touched.append(adjustment)
        try:
            item = None
            if adjustment.attempts > 1:  # an earlier answer may have been lost after all
                item = next(
                    (
                        i
                        for i in gateway.list_invoice_items(customer_id=customer_id)
                        if (i.get("metadata") or {}).get("usage_adjustment")
                        == adjustment.identifier
                    ),
                    None,
                )
            if item is None:
                item = gateway.create_invoice_item(
                    customer_id=customer_id,
                    amount=gateway.from_minor_units(adjustment.cents, currency),
                    currency=currency,
                    description=adjustment.description,
                    subscription_id=profile.stripe_subscription_id or None,
                    idempotency_key=adjustment.identifier,
                    metadata={"usage_adjustment": adjustment.identifier, "month": f"{month:%Y-%m}"},
                )
        except gateway.StripeGatewayError as error:
            adjustment.error = str(error)
            run.errors.append(f"{user_id} {month:%Y-%m} invoice item: {error}")
            continue
        adjustment.status = StripeUsageAdjustment.Status.SENT
        adjustment.stripe_invoice_item_id = item["id"]
        adjustment.sent_at = now
        adjustment.error = ""
        for resource, cents in adjustment.resources.items():
            report = claimed[pair][resource]
            report.reported_cents += cents
            report.adjusted_cents += cents
            report.last_reported_at = now
            report.last_error = ""
            reports.append(report)
        run.adjustments += 1
        run.adjusted_cents += adjustment.cents
    if touched:
        StripeUsageAdjustment.objects.bulk_update(
            touched, ["attempts", "error", "status", "stripe_invoice_item_id", "sent_at"]
        )
    reports_save(reports)
