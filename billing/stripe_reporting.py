"""Reporting postpaid usage to Stripe as Billing Meter Events (and invoice items).

Per user, month and resource we keep what Stripe has accepted (`StripeUsageReport`, in
cents). A run computes what it should be now and sends the difference, negative for a
day corrected downwards. So a rerun sends nothing, a re-collected day sends only its
change, and a day that failed before is retried by the next run whatever day that is. A
pending event (decided, sent, answer lost) is resent with its identifier only within
IDENTIFIER_WINDOW, as Stripe de-duplicates identifiers for about a day; after that Stripe's
meter event summaries say whether it arrived.

A run reads only the user-months due (`StripeReportDue`, marked by `usage_upsert` in the
transaction that changes the usage) and those with something pending, in batches of
STRIPE_REPORT_BATCH_SIZE in (user, month) order. A batch makes the same few queries
whatever its size: the months due, the profiles, the finalized invoices and the prices;
then, in one transaction, its report rows claimed (`FOR UPDATE SKIP LOCKED`, so two runs at
once report each user-month once), its figures from one query over usage_daily, the
decided events written in one statement; in a second transaction, the pending events sent
on Stripe's v2 meter event stream, up to 100 a request, their acceptance written and the
due marks of the months with nothing left pending cleared, in one statement each. (A month
stays due while an event of it is pending: that is how a later run finds it.)

A month Stripe no longer bills through meter events is corrected with an invoice item on
the next invoice instead (`billing/stripe_adjusting.py`).

The month's cents are our month total rounded once, split over the four resources by
largest remainder, so Stripe's invoice for the month equals our total to the cent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import StripeCatalogEntry
from billing.pricing import RateBook
from billing.stripe_adjusting import months_adjust
from billing.stripe_report_rules import (  # noqa: F401  (the reporter's rules, used elsewhere)
    IDENTIFIER_WINDOW,
    MAX_EVENT_AGE,
    RESOURCES,
    Pair,
    ReportRow,
    _split,
    adjustment_description,
    due_months,
    due_settle,
    event_timestamp,
    finalized_periods,
    identifier,
    month_bounds,
    month_cents_by_resource,
    month_closed,
    months_cents,
    profiles_of,
    reportable,
    reports_accept,
    reports_claim,
    reports_decide,
    reports_ensure,
    reports_save,
    subscription_starts,
)


@dataclass
class ReportRun:
    sent_events: int = 0
    sent_cents: int = 0
    confirmed_events: int = 0  # pending events Stripe turned out to have (no resend)
    adjustments: int = 0  # invoice items sent for closed months
    adjusted_cents: int = 0
    skipped_locked: int = 0
    batches: int = 0
    stream_requests: int = 0
    errors: list[str] = field(default_factory=list)


def months_to_report(*, user_ids=None) -> list[dict]:
    """Every (user, month) a run has to look at now, in order (see `due_months`), for users
    with a live subscription and a Stripe customer."""
    due = due_months(user_ids=user_ids)
    users = {d["user_id"] for d in due}
    reported = {p.user_id for p in profiles_of(users) if reportable(p)}
    return [d for d in due if d["user_id"] in reported]


def usage_report_to_stripe(*, user_ids=None, now: dt.datetime | None = None) -> ReportRun:
    """Send every difference between our figures and what Stripe has, for every month:
    as meter events while Stripe still bills the month, as invoice items once it is closed."""
    now = now or timezone.now()
    catalog = {entry.resource: entry for entry in StripeCatalogEntry.objects.all()}
    run = ReportRun()
    if len(catalog) != len(RESOURCES):
        run.errors.append("The Stripe catalog is not set up: run setup_stripe_billing first.")
        return run
    stream = gateway.MeterEventStream()
    size = max(1, int(settings.STRIPE_REPORT_BATCH_SIZE))
    after = None
    try:
        while True:
            due = due_months(user_ids=user_ids, after=after, limit=size)
            if not due:
                break
            run.batches += 1
            if not _report_batch(run, due, catalog=catalog, stream=stream, now=now):
                break  # Stripe is struggling: the rest waits for the next run
            if len(due) < size:
                break
            after = (due[-1]["user_id"], due[-1]["month"])
    finally:
        run.stream_requests = stream.requests
    return run


def _report_batch(run: ReportRun, due: list[dict], *, catalog, stream, now) -> bool:
    """One batch of user-months; False when Stripe failed in a way worth stopping for."""
    users = {d["user_id"] for d in due}
    profiles = {
        p.user_id: p
        for p in profiles_of(users)
        if reportable(p)  # without a live subscription the usage is held, unbilled
    }
    versions: dict[Pair, int | None] = {
        (d["user_id"], d["month"]): d["version"] for d in due if d["user_id"] in profiles
    }
    users = set(profiles)
    finalized = finalized_periods(user_ids=users)
    starts = subscription_starts(profiles.values(), errors=run.errors)
    closed: dict[Pair, str] = {}
    for user_id, month in versions:
        if starts.get(user_id) is None:
            continue  # not knowing it, a month could be sent where Stripe never bills it
        closed[(user_id, month)] = month_closed(
            month, now=now, started=starts[user_id], finalized=finalized.get(user_id, [])
        )
    if not closed:
        return True
    rates = RateBook.load(user_ids=users)
    reports_ensure(sorted(closed))

    # 1. Decide, and commit, the events to send: each (identifier, cents, timestamp) is
    #    fixed before it leaves, so a retry after a lost answer resends exactly the same
    #    event (within IDENTIFIER_WINDOW; after it, Stripe's summaries decide first).
    with transaction.atomic():
        claimed = reports_claim(closed)
        run.skipped_locked += len(closed) - len(claimed)  # another run is reporting them
        targets = months_cents(claimed, rates=rates)
        decided, waiting_pairs = [], set()
        for pair, reports in claimed.items():
            if closed[pair]:
                continue
            waiting = False  # a difference decided only once the pending event settles
            for resource in RESOURCES:
                report = reports[resource]
                delta = targets[pair][resource] - report.reported_cents
                if report.pending_identifier:
                    waiting = waiting or delta != report.pending_cents
                    continue
                if delta == 0:
                    continue
                _decide(report, pair=pair, cents=delta, now=now)
                decided.append(report)
            if waiting:
                waiting_pairs.add(pair)
        reports_decide(decided, now=now)

    # 2. Send what is pending, holding the rows so no other run sends it too. In a closed
    #    month nothing is sent: Stripe says whether a pending event arrived.
    with transaction.atomic():
        held = reports_claim(claimed)
        run.skipped_locked += len(claimed) - len(held)
        going_on = _send_pending(
            run, held, closed=closed, profiles=profiles, catalog=catalog, stream=stream, now=now
        )
        # A month stays due while an event of it is pending (that is how the next run finds
        # it) or a difference waits for one to settle; a closed month, until its invoice
        # item is decided (`months_adjust`).
        due_settle(
            [
                pair
                for pair, reports in held.items()
                if not closed[pair]
                and pair not in waiting_pairs
                and not any(report.pending_identifier for report in reports.values())
            ],
            versions,
        )
    if not going_on:
        return False

    # 3. Closed months whose events are all settled: the rest goes on an invoice item.
    ready = [
        pair
        for pair, reports in held.items()
        if closed[pair] and not any(r.pending_identifier for r in reports.values())
    ]
    if ready:
        months_adjust(
            run,
            ready,
            reasons=closed,
            targets=targets,
            versions=versions,
            profiles=profiles,
            now=now,
        )
    return True


def _decide(report: ReportRow, *, pair: Pair, cents: int, now) -> None:
    """A new pending event, committed before it is sent."""
    user_id, month = pair
    report.pending_identifier = identifier(user_id, month, report.resource, report.events_sent + 1)
    report.pending_cents = cents
    report.pending_since = now
    report.pending_timestamp = event_timestamp(month, now)


def _send_pending(run, held, *, closed, profiles, catalog, stream, now) -> bool:
    changed: list[ReportRow] = []  # written whole
    accepted: list[ReportRow] = []  # only their pending event taken by Stripe
    outgoing: list[tuple[ReportRow, gateway.MeterEvent]] = []
    going_on = True
    for pair, reports in held.items():
        user_id, month = pair
        customer_id = profiles[user_id].stripe_customer_id
        for resource in RESOURCES:
            report = reports[resource]
            if not report.pending_identifier or not going_on:
                continue
            if (
                closed[pair]
                or report.pending_since is None
                or now - report.pending_since > IDENTIFIER_WINDOW
            ):
                try:
                    verdict = _pending_verdict(
                        report, month=month, customer_id=customer_id, entry=catalog[resource]
                    )
                except gateway.StripeGatewayError as error:
                    report.last_error = str(error)
                    changed.append(report)
                    run.errors.append(f"{user_id} {month:%Y-%m} {resource}: {error}")
                    going_on = not error.retriable
                    continue
                changed.append(report)
                if verdict == "arrived":
                    run.confirmed_events += 1
                    _accepted(run, report, now)
                    continue
                if verdict == "unknown":
                    run.errors.append(f"{user_id} {month:%Y-%m} {resource}: {report.last_error}")
                    continue
                report.events_sent += 1  # "lost": its number is used up
                if closed[pair]:  # its cents go on an invoice item instead
                    _clear_pending(report)
                    continue
                timestamp = report.pending_timestamp
                _decide(report, pair=pair, cents=report.pending_cents, now=now)
                if timestamp is not None and timestamp >= (now - MAX_EVENT_AGE).timestamp():
                    report.pending_timestamp = timestamp  # the same moment, still taken
            timestamp = report.pending_timestamp or event_timestamp(month, now)
            if timestamp is None:
                continue  # the month began seconds ago: the next run sends it
            event = gateway.MeterEvent(
                event_name=catalog[resource].event_name,
                customer_id=customer_id,
                value=report.pending_cents,
                identifier=report.pending_identifier,
                timestamp=timestamp,
            )
            outgoing.append((report, event))

    step = gateway.METER_STREAM_MAX_EVENTS
    for start in range(0, len(outgoing), step):
        if not going_on:
            break
        chunk = outgoing[start : start + step]
        try:
            stream.send([event for _, event in chunk])
        except gateway.StripeGatewayError as error:
            for report, _ in chunk:
                report.last_error = str(error)
                changed.append(report)
            first, last = chunk[0][1].identifier, chunk[-1][1].identifier
            run.errors.append(f"{len(chunk)} meter events ({first} .. {last}): {error}")
            going_on = not error.retriable
            continue
        for report, _ in chunk:
            run.sent_events += 1
            _accepted(run, report, now)
            accepted.append(report)
    reports_save(changed)
    whole = {report.id for report in changed}
    reports_accept([report for report in accepted if report.id not in whole], now=now)
    return going_on


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
    return "unknown"


def _accepted(run: ReportRun, report: ReportRow, now) -> None:
    run.sent_cents += report.pending_cents
    report.reported_cents += report.pending_cents
    report.events_sent += 1
    _clear_pending(report)
    report.last_reported_at = now


def _clear_pending(report: ReportRow) -> None:
    report.pending_identifier, report.pending_cents = "", None
    report.pending_since, report.pending_timestamp = None, None
    report.last_error = ""
