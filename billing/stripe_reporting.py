"""Reporting postpaid usage to Stripe as Billing Meter Events.

Per user, month and resource we keep what Stripe has accepted (`StripeUsageReport`, in
cents). A run computes what it should be now and sends the difference, negative for a
day corrected downwards. So a rerun sends nothing, a re-collected day sends only its
change, a day that failed before is retried by the next run whatever day that is, and
correctness never depends on Stripe's 24-hour de-duplication window. Two runs at once
claim user-months with `SELECT ... FOR UPDATE SKIP LOCKED`: each is reported by one run.

The month's cents are our month total rounded once, split over the four resources by
largest remainder, so Stripe's invoice for the month equals our total to the cent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

from django.db import connection, transaction
from django.db.models import Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import (
    BillingProfile,
    Price,
    StripeCatalogEntry,
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


def months_to_report(*, user_ids=None):
    """(user, month) pairs with Stripe-billed usage, for users with an active subscription."""
    subscribed = (
        BillingProfile.objects.with_active_subscription()
        .filter(user__stripe_customer_id__isnull=False)
        .values("user_id")
    )
    usage = UsageDaily.objects.filter(
        billed_via=UsageDaily.BilledVia.STRIPE, user_id__in=subscribed
    )
    if user_ids is not None:
        usage = usage.filter(user_id__in=list(user_ids))
    return (
        usage.annotate(month=TruncMonth("date"))
        .values("user_id", "month")
        .annotate(total=Sum("total_cost"))
        .order_by("user_id", "month")
    )


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
    """Send every difference between our figures and what Stripe has, for every month."""
    now = now or timezone.now()
    catalog = {entry.resource: entry for entry in StripeCatalogEntry.objects.all()}
    run = ReportRun()
    if len(catalog) != len(RESOURCES):
        run.errors.append("The Stripe catalog is not set up: run setup_stripe_billing first.")
        return run
    customers = dict(
        BillingProfile.objects.filter(user__stripe_customer_id__isnull=False).values_list(
            "user_id", "user__stripe_customer_id"
        )
    )
    pairs = [(p["user_id"], p["month"]) for p in months_to_report(user_ids=user_ids)]
    for user_id, month in pairs:
        month = month.date() if isinstance(month, dt.datetime) else month
        _report_month(run, user_id, month, customers[user_id], catalog, now)
    return run


def month_bounds(month: dt.date) -> tuple[int, int]:
    """[start, end) of a calendar month in Unix seconds (UTC)."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = dt.datetime.combine((month + dt.timedelta(days=32)).replace(day=1), dt.time(), dt.UTC)
    return int(start.timestamp()), int(end.timestamp())


def _decide(report: StripeUsageReport, *, user_id, month, cents: int, now) -> None:
    """A new pending event, committed before it is sent."""
    report.pending_identifier = identifier(user_id, month, report.resource, report.events_sent + 1)
    report.pending_cents = cents
    report.pending_since = now
    report.pending_timestamp = event_timestamp(month, now)


def _pending_after_window(report, *, user_id, month, customer_id, entry, now) -> str:
    """Past the identifier window Stripe may count a resend again: ask its meter event
    summaries for the month first. "arrived": Stripe has it (accepted, nothing resent);
    "lost": Stripe never counted it (a new identifier is decided, to be sent now);
    "unknown": neither figure matches (left pending, with the reason)."""
    start, end = month_bounds(month)
    total = gateway.meter_event_summary_total(
        meter_id=entry.meter_id, customer_id=customer_id, start_time=start, end_time=end
    )
    reported = report.reported_cents
    if total == reported + report.pending_cents:
        return "arrived"
    if total == reported:
        timestamp = report.pending_timestamp
        report.events_sent += 1  # the lost event's number is used up
        _decide(report, user_id=user_id, month=month, cents=report.pending_cents, now=now)
        if timestamp is not None and timestamp >= (now - MAX_EVENT_AGE).timestamp():
            report.pending_timestamp = timestamp  # still inside the month, still accepted
        report.last_error = ""
        report.save()
        return "lost"
    report.last_error = (
        f"Stripe's total for {month:%Y-%m} on meter {entry.meter_id} is {total} cents; we "
        f"have {reported} reported and {report.pending_cents:+} pending "
        f"({report.pending_identifier}, first sent {report.pending_since:%Y-%m-%d %H:%M} "
        "UTC): neither matches, so nothing is resent; reconcile this month with Stripe."
    )
    report.save(update_fields=["last_error"])
    return "unknown"


def _accepted(run: ReportRun, report: StripeUsageReport, now) -> None:
    run.sent_cents += report.pending_cents
    report.reported_cents += report.pending_cents
    report.events_sent += 1
    report.pending_identifier, report.pending_cents = "", None
    report.pending_since, report.pending_timestamp = None, None
    report.last_error = ""
    report.last_reported_at = now
    report.save()


def _report_month(run, user_id, month, customer_id, catalog, now) -> None:
    # 1. Decide, and commit, the events to send: each (identifier, cents, timestamp) is
    #    fixed before it leaves, so a retry after a lost answer resends exactly the same
    #    event (within IDENTIFIER_WINDOW; after it, see _pending_after_window).
    with transaction.atomic():
        claimed = _claim(user_id, month)
        if claimed is None:
            run.skipped_locked += 1  # another run is reporting this user-month
            return
        targets = month_cents_by_resource(user_id, month)
        for resource in RESOURCES:
            report = claimed[resource]
            delta = targets[resource] - report.reported_cents
            if report.pending_identifier or delta == 0:
                continue
            _decide(report, user_id=user_id, month=month, cents=delta, now=now)
            report.save()

    # 2. Send what is pending, holding the rows so no other run sends it too.
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
                if report.pending_since is None or now - report.pending_since > IDENTIFIER_WINDOW:
                    verdict = _pending_after_window(
                        report,
                        user_id=user_id,
                        month=month,
                        customer_id=customer_id,
                        entry=catalog[resource],
                        now=now,
                    )
                    if verdict == "arrived":
                        run.confirmed_events += 1
                        _accepted(run, report, now)
                        continue
                    if verdict == "unknown":
                        run.errors.append(f"{where}: {report.last_error}")
                        continue
                timestamp = report.pending_timestamp or event_timestamp(month, now)
                if timestamp is None or timestamp < (now - MAX_EVENT_AGE).timestamp():
                    report.last_error = (
                        f"{report.pending_cents:+} cents for {month:%Y-%m} can no longer be "
                        "reported: Stripe takes meter events up to 35 days old. Invoice the "
                        "difference by hand."
                    )
                    report.save(update_fields=["last_error"])
                    run.errors.append(f"{where}: {report.last_error}")
                    continue
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
