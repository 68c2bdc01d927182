"""Reporting postpaid usage to Stripe as Billing Meter Events (and invoice items).

Per user, month and resource we keep what Stripe has accepted (`StripeUsageReport`, in
cents). A run computes what it should be now and sends the difference, negative for a
day corrected downwards. So a rerun sends nothing, a re-collected day sends only its
change, and a day that failed before is retried by the next run whatever day that is. A
pending event (decided, sent, answer lost) is resent with its identifier only within
IDENTIFIER_WINDOW, as Stripe de-duplicates identifiers for about a day; after that Stripe's
meter event summaries say whether it arrived. Two runs at once claim user-months with
`SELECT ... FOR UPDATE SKIP LOCKED`: each is reported by one run.

A month Stripe no longer bills through meter events (its invoice finalized, ended before
the subscription began, older than Stripe takes events) is corrected with an invoice item
on the next invoice instead (`StripeUsageAdjustment`), decided and committed before it is
sent, like an event.

The month's cents are our month total rounded once, split over the four resources by
largest remainder, so Stripe's invoice for the month equals our total to the cent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BigIntegerField, Value
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import (
    BillingHistory,
    BillingProfile,
    Price,
    StripeCatalogEntry,
    StripeReportDue,
    StripeUsageAdjustment,
    StripeUsageReport,
    UsageDaily,
)
from billing.pricing import CENT, FIGURES, Quantities, RateBook, resource_costs, to_cents

logger = logging.getLogger(__name__)
RESOURCES = Price.Resource.values
# Stripe accepts meter events up to 35 days old; keep a margin.
MAX_EVENT_AGE = dt.timedelta(days=34)
# Stripe keeps a meter event identifier unique for about 24 hours: a pending event is
# resent with the same identifier only this long after it was first sent; after that
# Stripe's meter event summaries decide (see _pending_after_window).
IDENTIFIER_WINDOW = dt.timedelta(hours=20)


@dataclass
class ReportRun:
    sent_events: int = 0
    sent_cents: int = 0
    confirmed_events: int = 0  # pending events Stripe turned out to have (no resend)
    adjustments: int = 0  # invoice items sent for closed months
    adjusted_cents: int = 0
    skipped_locked: int = 0
    errors: list[str] = field(default_factory=list)


def month_cents_by_resource(user_id: str, month: dt.date) -> dict[str, int]:
    """What the user owes for the month through Stripe, in cents per resource, adding up
    exactly to the month total rounded once."""
    next_month = (month + dt.timedelta(days=32)).replace(day=1)
    rows = list(
        UsageDaily.objects.filter(
            user_id=user_id,
            date__gte=month,
            date__lt=next_month,
            billed_via=UsageDaily.BilledVia.STRIPE,
        ).values("date", "total_cost", *FIGURES)
    )
    total = to_cents(sum((r["total_cost"] for r in rows), Decimal(0)))
    rates = RateBook.load(user_ids=[user_id])
    exact = dict.fromkeys(RESOURCES, Decimal(0))
    for row in rows:
        quantities = Quantities(**{name: row[name] for name in FIGURES})
        day = resource_costs(quantities, rates.rates(user_id=user_id, day=row["date"]))
        for resource, cost in day.items():
            exact[resource] += cost
    return _split(total, exact)


def _split(total: Decimal, exact: dict[str, Decimal]) -> dict[str, int]:
    """Largest remainder: whole cents per resource that add up to `total`."""
    cents = {r: int((v / CENT).to_integral_value(ROUND_FLOOR)) for r, v in exact.items()}
    remaining = int(total / CENT) - sum(cents.values())
    order = sorted(exact, key=lambda r: (exact[r] / CENT - cents[r], r), reverse=True)
    for resource in (order * (abs(remaining) // len(order) + 1))[: abs(remaining)]:
        cents[resource] += 1 if remaining > 0 else -1
    return cents


def identifier(user_id: str, month: dt.date, resource: str, number: int) -> str:
    """Deterministic, at most 100 characters, no personal data."""
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
    return f"usage-{digest}-{month:%Y%m}-{resource}-{number}"


def event_timestamp(month: dt.date, now: dt.datetime) -> int | None:
    """A moment inside the month (so the usage lands on that month's invoice), not in
    the future and not older than Stripe accepts; None when the month is out of reach."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = dt.datetime.combine(
        (month + dt.timedelta(days=32)).replace(day=1), dt.time(), tzinfo=dt.UTC
    ) - dt.timedelta(seconds=1)
    moment = min(now - dt.timedelta(seconds=5), end)
    if moment < start or moment < now - MAX_EVENT_AGE:
        return None
    return int(moment.timestamp())


def months_to_report(*, user_ids=None) -> list[dict]:
    """The (user, month) pairs a run has to look at, for users with an active subscription:
    those whose Stripe-billed usage changed since they were last decided (`StripeReportDue`,
    with the version read, see `_settled`), and those with an event or an invoice item still
    pending. One query, whatever the history: a month nothing happened to is not read."""
    subscribed = (
        BillingProfile.objects.with_active_subscription()
        .filter(user__stripe_customer_id__isnull=False)
        .values("user_id")
    )
    no_version = Value(None, output_field=BigIntegerField())
    due = StripeReportDue.objects.filter(user_id__in=subscribed).values_list(
        "user_id", "month", "version"
    )
    pending_events = (
        StripeUsageReport.objects.filter(user_id__in=subscribed)
        .exclude(pending_identifier="")
        .annotate(no_version=no_version)
        .values_list("user_id", "month", "no_version")
    )
    pending_items = (
        StripeUsageAdjustment.objects.filter(
            user_id__in=subscribed, status=StripeUsageAdjustment.Status.PENDING
        )
        .annotate(no_version=no_version)
        .values_list("user_id", "month", "no_version")
    )
    if user_ids is not None:
        user_ids = list(user_ids)
        due, pending_events, pending_items = (
            q.filter(user_id__in=user_ids) for q in (due, pending_events, pending_items)
        )
    pairs: dict[tuple[str, dt.date], int | None] = {}
    for user_id, month, version in due.union(pending_events, pending_items, all=True):
        pairs[(user_id, month)] = version if version is not None else pairs.get((user_id, month))
    return [
        {"user_id": user_id, "month": month, "version": pairs[(user_id, month)]}
        for user_id, month in sorted(pairs)
    ]


def _settled(user_id: str, month: dt.date, version: int | None) -> None:
    """The month's changes up to `version` are decided: no longer due, unless it changed
    again meanwhile (a higher version stays)."""
    if version is not None:
        StripeReportDue.objects.filter(user_id=user_id, month=month, version=version).delete()


def _claim(user_id: str, month: dt.date) -> dict[str, StripeUsageReport] | None:
    StripeUsageReport.objects.bulk_create(
        [StripeUsageReport(user_id=user_id, month=month, resource=r) for r in RESOURCES],
        ignore_conflicts=True,
    )
    rows = StripeUsageReport.objects.filter(user_id=user_id, month=month).order_by("resource")
    if connection.features.has_select_for_update_skip_locked:
        rows = rows.select_for_update(skip_locked=True)
    else:
        rows = rows.select_for_update()
    claimed = {row.resource: row for row in rows}
    return claimed if len(claimed) == len(RESOURCES) else None


def usage_report_to_stripe(*, user_ids=None, now: dt.datetime | None = None) -> ReportRun:
    """Send every difference between our figures and what Stripe has, for every month:
    as meter events while Stripe still bills the month, as invoice items once it is closed."""
    now = now or timezone.now()
    catalog = {entry.resource: entry for entry in StripeCatalogEntry.objects.all()}
    run = ReportRun()
    if len(catalog) != len(RESOURCES):
        run.errors.append("The Stripe catalog is not set up: run setup_stripe_billing first.")
        return run
    pairs = [(p["user_id"], p["month"], p["version"]) for p in months_to_report(user_ids=user_ids)]
    if not pairs:
        return run
    users = {user_id for user_id, _, _ in pairs}
    profiles = {
        p.user_id: p
        for p in BillingProfile.objects.filter(user_id__in=users).select_related("user")
    }
    finalized = finalized_periods(user_ids=users)
    starts: dict[str, dt.datetime | None] = {}
    for user_id, month, version in pairs:
        month = month.date() if isinstance(month, dt.datetime) else month
        profile = profiles[user_id]
        if user_id not in starts:
            try:
                starts[user_id] = subscription_start(profile)
            except gateway.StripeGatewayError as error:
                starts[user_id] = None
                run.errors.append(f"{user_id}: when did the subscription begin? {error}")
        if starts[user_id] is None:
            continue  # not knowing it, a month could be sent where Stripe never bills it
        closed = month_closed(
            month, now=now, started=starts[user_id], finalized=finalized.get(user_id, [])
        )
        _report_month(run, user_id, month, profile, catalog, now, closed=closed, version=version)
    return run


def month_bounds(month: dt.date) -> tuple[int, int]:
    """[start, end) of a calendar month in Unix seconds (UTC)."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = dt.datetime.combine((month + dt.timedelta(days=32)).replace(day=1), dt.time(), dt.UTC)
    return int(start.timestamp()), int(end.timestamp())


def finalized_periods(*, user_ids) -> dict[str, list[tuple[dt.datetime, dt.datetime]]]:
    """Per user, the periods of their finalized invoices (one query)."""
    periods: dict[str, list] = {}
    rows = BillingHistory.objects.filter(
        user_id__in=list(user_ids),
        finalized_at__isnull=False,
        period_start__isnull=False,
        period_end__isnull=False,
    ).values_list("user_id", "period_start", "period_end")
    for user_id, start, end in rows:
        periods.setdefault(user_id, []).append((start, end))
    return periods


def subscription_start(profile: BillingProfile) -> dt.datetime:
    """When the user's subscription began (Stripe's start_date), asked once per
    subscription and kept on the profile."""
    if (
        profile.subscription_started_at is not None
        and profile.started_subscription_id == profile.stripe_subscription_id
    ):
        return profile.subscription_started_at
    subscription = gateway.retrieve_subscription(subscription_id=profile.stripe_subscription_id)
    started = gateway.datetime_from_timestamp(
        subscription.get("start_date") or subscription["created"]
    )
    # Only these two columns: the webhook owns the rest of the profile.
    BillingProfile.objects.filter(pk=profile.pk).update(
        subscription_started_at=started, started_subscription_id=subscription["id"]
    )
    profile.subscription_started_at, profile.started_subscription_id = started, subscription["id"]
    return started


def month_closed(month: dt.date, *, now, started: dt.datetime, finalized) -> str:
    """Why Stripe will not bill a meter event for this month any more ("" if it will):
    its invoice is finalized, it ended before the subscription began, or it is older than
    Stripe takes meter events."""
    start, end = (gateway.datetime_from_timestamp(t) for t in month_bounds(month))
    if any(p_start <= start and end <= p_end for p_start, p_end in finalized):
        return "its invoice is finalized"
    if end <= started:
        return "it ended before the subscription began"
    if end <= now - MAX_EVENT_AGE:
        return "Stripe takes meter events up to 35 days old"
    return ""


def _decide(report: StripeUsageReport, *, user_id, month, cents: int, now) -> None:
    """A new pending event, committed before it is sent."""
    report.pending_identifier = identifier(user_id, month, report.resource, report.events_sent + 1)
    report.pending_cents = cents
    report.pending_since = now
    report.pending_timestamp = event_timestamp(month, now)


def _pending_verdict(report, *, month, customer_id, entry) -> str:
    """Whether Stripe has a pending event, from its meter event summaries for the month:
    "arrived" (its total is what we reported plus the pending event), "lost" (it is what
    we reported) or "unknown" (neither: `last_error` says so, for reconciliation)."""
    start, end = month_bounds(month)
    total = gateway.meter_event_summary_total(
        meter_id=entry.meter_id, customer_id=customer_id, start_time=start, end_time=end
    )
    metered = report.reported_cents - report.adjusted_cents  # invoice items are not metered
    sent = f"{report.pending_since:%Y-%m-%d %H:%M} UTC" if report.pending_since else "before"
    if total == metered + report.pending_cents:
        return "arrived"
    if total == metered:
        return "lost"
    report.last_error = (
        f"Stripe's total for {month:%Y-%m} on meter {entry.meter_id} is {total} cents; we "
        f"have {metered} reported through meter events and {report.pending_cents:+} pending "
        f"({report.pending_identifier}, decided {sent}): neither matches, so nothing is "
        "resent; reconcile this month with Stripe."
    )
    report.save(update_fields=["last_error"])
    return "unknown"


def _accepted(run: ReportRun, report: StripeUsageReport, now) -> None:
    run.sent_cents += report.pending_cents
    report.reported_cents += report.pending_cents
    report.events_sent += 1
    _clear_pending(report)
    report.last_reported_at = now
    report.save()


def _clear_pending(report: StripeUsageReport) -> None:
    report.pending_identifier, report.pending_cents = "", None
    report.pending_since, report.pending_timestamp = None, None
    report.last_error = ""


def _report_month(run, user_id, month, profile, catalog, now, *, closed: str, version) -> None:
    customer_id = profile.user.stripe_customer_id
    # 1. Decide, and commit, the events to send: each (identifier, cents, timestamp) is
    #    fixed before it leaves, so a retry after a lost answer resends exactly the same
    #    event (within IDENTIFIER_WINDOW; after it, Stripe's summaries decide first).
    if not closed:
        with transaction.atomic():
            claimed = _claim(user_id, month)
            if claimed is None:
                run.skipped_locked += 1  # another run is reporting this user-month
                return
            targets = month_cents_by_resource(user_id, month)
            waiting = False  # a difference decided only once the pending event settles
            for resource in RESOURCES:
                report = claimed[resource]
                delta = targets[resource] - report.reported_cents
                if report.pending_identifier:
                    waiting = waiting or delta != report.pending_cents
                    continue
                if delta == 0:
                    continue
                _decide(report, user_id=user_id, month=month, cents=delta, now=now)
                report.save()
            if not waiting:
                _settled(user_id, month, version)

    # 2. Send what is pending, holding the rows so no other run sends it too. In a closed
    #    month nothing is sent: Stripe says whether a pending event arrived.
    with transaction.atomic():
        claimed = _claim(user_id, month)
        if claimed is None:
            run.skipped_locked += 1
            return
        for resource in RESOURCES:
            report = claimed[resource]
            if not report.pending_identifier:
                continue
            where = f"{user_id} {month:%Y-%m} {resource}"
            try:
                if (
                    closed
                    or report.pending_since is None
                    or now - report.pending_since > (IDENTIFIER_WINDOW)
                ):
                    verdict = _pending_verdict(
                        report, month=month, customer_id=customer_id, entry=catalog[resource]
                    )
                    if verdict == "arrived":
                        run.confirmed_events += 1
                        _accepted(run, report, now)
                        continue
                    if verdict == "unknown":
                        run.errors.append(f"{where}: {report.last_error}")
                        continue
                    report.events_sent += 1  # "lost": its number is used up
                    if closed:  # its cents go on an invoice item instead (step 3)
                        _clear_pending(report)
                        report.save()
                        continue
                    timestamp = report.pending_timestamp
                    _decide(
                        report, user_id=user_id, month=month, cents=report.pending_cents, now=now
                    )
                    if timestamp is not None and timestamp >= (now - MAX_EVENT_AGE).timestamp():
                        report.pending_timestamp = timestamp  # the same moment, still taken
                    report.save()
                timestamp = report.pending_timestamp or event_timestamp(month, now)
                if timestamp is None:
                    continue  # the month began seconds ago: the next run sends it
                gateway.send_meter_event(
                    event_name=catalog[resource].event_name,
                    customer_id=customer_id,
                    value=report.pending_cents,
                    identifier=report.pending_identifier,
                    timestamp=timestamp,
                )
            except gateway.StripeGatewayError as error:
                report.last_error = str(error)
                report.save(update_fields=["last_error"])
                run.errors.append(f"{where}: {error}")
                if error.retriable:
                    return  # Stripe is struggling: the rest waits for the next run
                continue
            run.sent_events += 1
            _accepted(run, report, now)
        if any(report.pending_identifier for report in claimed.values()):
            return  # a closed month is corrected once its pending events are settled

    if closed:
        _adjust_month(run, user_id, month, profile, now, reason=closed, version=version)


# Closed months: corrections as invoice items on the next invoice.


def _adjust_month(run, user_id, month, profile, now, *, reason: str, version) -> None:
    # 3. Decide, and commit, the correction before it is sent.
    with transaction.atomic():
        claimed = _claim(user_id, month)
        if claimed is None:
            run.skipped_locked += 1
            return
        pending = StripeUsageAdjustment.objects.filter(
            user_id=user_id, month=month, status=StripeUsageAdjustment.Status.PENDING
        ).exists()
        if not pending:
            _decide_adjustment(user_id, month, claimed, reason=reason, now=now)
            _settled(user_id, month, version)

    # 4. Send it: an invoice item on the subscription's next invoice.
    with transaction.atomic():
        claimed = _claim(user_id, month)
        if claimed is None:
            run.skipped_locked += 1
            return
        adjustment = (
            StripeUsageAdjustment.objects.select_for_update()
            .filter(user_id=user_id, month=month, status=StripeUsageAdjustment.Status.PENDING)
            .order_by("id")
            .first()
        )
        if adjustment is None:
            return
        customer_id = profile.user.stripe_customer_id
        currency = settings.STRIPE_CURRENCY
        adjustment.attempts += 1
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
                    metadata={
                        "usage_adjustment": adjustment.identifier,
                        "month": f"{month:%Y-%m}",
                    },
                )
        except gateway.StripeGatewayError as error:
            adjustment.error = str(error)
            adjustment.save(update_fields=["attempts", "error"])
            run.errors.append(f"{user_id} {month:%Y-%m} invoice item: {error}")
            return
        adjustment.status = StripeUsageAdjustment.Status.SENT
        adjustment.stripe_invoice_item_id = item["id"]
        adjustment.sent_at = now
        adjustment.error = ""
        adjustment.save()
        for resource, cents in adjustment.resources.items():
            report = claimed[resource]
            report.reported_cents += cents
            report.adjusted_cents += cents
            report.last_reported_at = now
            report.last_error = ""
            report.save()
        run.adjustments += 1
        run.adjusted_cents += adjustment.cents


def _decide_adjustment(user_id, month, claimed, *, reason: str, now) -> None:
    targets = month_cents_by_resource(user_id, month)
    deltas = {r: targets[r] - claimed[r].reported_cents for r in RESOURCES}
    if not any(deltas.values()):
        return
    cents = sum(deltas.values())
    if cents == 0:
        # Cents moved between resources, the total is the same: nothing to invoice, the
        # split is only brought in line.
        for resource, delta in deltas.items():
            claimed[resource].reported_cents += delta
            claimed[resource].adjusted_cents += delta
            claimed[resource].save()
        return
    since = max((r.last_reported_at for r in claimed.values() if r.last_reported_at), default=None)
    days = changed_days(user_id, month, since=since)
    number = StripeUsageAdjustment.objects.filter(user_id=user_id, month=month).count() + 1
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
    StripeUsageAdjustment.objects.create(
        user_id=user_id,
        month=month,
        cents=cents,
        resources={r: d for r, d in deltas.items() if d},
        description=adjustment_description(month, days, cents),
        identifier=f"adjust-{digest}-{month:%Y%m}-{number}",
        created_at=now,
    )
    logger.info("usage of %s for %s goes on an invoice item: %s", user_id, month, reason)


def changed_days(user_id, month, *, since) -> list[dt.date]:
    """The month's Stripe-billed days changed since it was last reported (every day with
    usage, if it never was)."""
    next_month = (month + dt.timedelta(days=32)).replace(day=1)
    rows = UsageDaily.objects.filter(
        user_id=user_id,
        date__gte=month,
        date__lt=next_month,
        billed_via=UsageDaily.BilledVia.STRIPE,
    )
    rows = rows.filter(updated_at__gt=since) if since else rows.filter(total_cost__gt=0)
    return sorted(set(rows.values_list("date", flat=True)))


MAX_DAYS_NAMED = 10


def adjustment_description(month: dt.date, days: list[dt.date], cents: int) -> str:
    """E.g. "Usage correction for 2026-10 (days 2026-10-03, 2026-10-07): +$12.34"."""
    amount = f"{'+' if cents > 0 else '-'}${Decimal(abs(cents)).scaleb(-2):,.2f}"
    named = ", ".join(f"{d}" for d in days[:MAX_DAYS_NAMED])
    if len(days) > MAX_DAYS_NAMED:
        named += f" and {len(days) - MAX_DAYS_NAMED} more"
    which = f" (days {named})" if days else ""
    return f"Usage correction for {month:%Y-%m}{which}: {amount}"
