"""Reconciliation: our figures against Stripe's, per user and month, side by side.

For each user-month and rate-card resource, in cents:

  ours      usage_daily's Stripe-billed rows, split as `stripe_reporting` splits them;
  reported  what Stripe accepted from us (`billing_stripe_usage_report`), and what is
            pending (decided, not yet confirmed);
  stripe    what Stripe's meter counted for the customer in the month (meter event
            summaries, one call per meter);
  invoiced  the lines of the month's invoice, per metered price (once there is one), and
            of the final invoice we made when the subscription ended outside our flow
            (`billing.subscription_end`: one item per resource, no metered price);

and for prepaid users the month's credit-billed usage against what its rows debited and
the ledger's usage entries, plus each balance (`user_credits`) against its ledger.

Each link of the chain ours -> reported -> stripe -> invoiced is compared; every difference
is listed with its cause where known and a repair where one is safe. A difference is
*explained* only when nothing needs doing: the system settles it by itself (the next
report run sends or confirms it) or holds it on purpose (no live subscription). Anything
needing an operator, or of unknown cause, is unexplained, and the command and the daily
job fail on it.

Reads are set-based per month (one query per table and month, whatever the number of
users); Stripe is asked per user-month (one summary call per meter, one call for the
invoice's lines). The one write to Stripe is `reconciliation_resend`, a safe repair: while
the month is open, the difference between what we recorded as accepted and what Stripe's
meter has is sent as a meter event with an identifier of its own.

Hook for what is reported: `reported_by_user` is the one place that says what we sent
for a user-month (accepted, pending, and, once such a record exists, invoice items for
closed months). A new way of settling a month is added there and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from decimal import Decimal

from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.credits import credits_check_balances
from billing.models import (
    BillingHistory,
    BillingProfile,
    CreditLedgerEntry,
    Price,
    ReconciliationRun,
    StripeCatalogEntry,
    StripeUsageAdjustment,
    StripeUsageReport,
    SubscriptionEnd,
    UsageDaily,
    UsageMonthly,
    is_active_subscription,
)
from billing.pricing import FIGURES, Quantities, RateBook, resource_costs, to_cents
from billing.stripe_reporting import (  # the reporter's own figures and rules
    _split,
    event_timestamp,
    finalized_periods,
    month_closed,
)
from billing.subscription_end import final_item_resource

logger = logging.getLogger(__name__)
RESOURCES = Price.Resource.values
ZERO = Decimal(0)
# Stripe aggregates meter events asynchronously: an event younger than this may be
# missing from a summary without being lost.
SUMMARY_LAG = dt.timedelta(hours=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# What a run finds


@dataclass
class Figures:
    """One resource of one user-month, in cents (None: not known, e.g. no invoice yet)."""

    resource: str
    ours: int = 0
    reported: int = 0
    pending: int | None = None
    adjusted: int = 0  # invoice items for this month on a later invoice (sent)
    adjusting: int = 0  # invoice items decided, not yet confirmed by Stripe
    stripe: int | None = None
    invoiced: int | None = None
    reported_recently: bool = False  # younger than Stripe's summary lag
    last_error: str = ""  # the last report's failure, if it failed


@dataclass
class Difference:
    what: str  # which link: "ours/reported", "reported/stripe", "stripe/invoiced", "credits"
    resource: str
    cents: int  # the left side minus the right side (in cents; credits: in cents too)
    cause: str
    explained: bool
    repair: str = ""  # "resend" (the safe repair), or a proposal to print


@dataclass
class Credits:
    """A prepaid user's month: usage billed through credits, what its rows debited, what
    the ledger's usage entries for those rows took (each in cents, rounded once)."""

    usage: int = 0
    debited: int = 0
    ledger: int = 0


@dataclass
class UserMonth:
    user_id: str
    email: str
    month: dt.date
    mode: str = BillingProfile.Mode.POSTPAID
    customer_id: str = ""
    subscription_status: str = ""
    invoice_id: str = ""
    invoice_status: str = ""
    # Our final invoice of a subscription ended outside our flow, for the period starting in
    # this month (`SubscriptionEnd.final_invoice_id`): it charges what the meters counted.
    final_invoice_id: str = ""
    subscription_started_at: dt.datetime | None = None
    closed: str = ""  # why Stripe no longer bills this month's meter ("" if it does)
    figures: dict[str, Figures] = field(default_factory=dict)
    credits: Credits | None = None
    differences: list[Difference] = field(default_factory=list)

    @property
    def month_closed(self) -> bool:
        """Stripe never bills this month's meter again (stripe_reporting.month_closed), or
        Stripe lists its invoice past draft, or we made the final invoice of its period."""
        invoiced = bool(self.invoice_id) and self.invoice_status not in ("", "draft")
        return bool(self.closed) or invoiced or bool(self.final_invoice_id)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["month"] = f"{self.month:%Y-%m}"
        started = self.subscription_started_at
        data["subscription_started_at"] = started.isoformat() if started else None
        data["figures"] = [asdict(f) for f in self.figures.values()]
        return data


@dataclass
class Reconciliation:
    months: list[dt.date]
    lines: list[UserMonth] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def differences(self) -> list[tuple[UserMonth, Difference]]:
        return [(line, d) for line in self.lines for d in line.differences]

    @property
    def unexplained(self) -> list[tuple[UserMonth, Difference]]:
        return [(line, d) for line, d in self.differences if not d.explained]

    @property
    def ok(self) -> bool:
        return not self.unexplained and not self.errors


# Months


def month_of(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    return (month + dt.timedelta(days=32)).replace(day=1)


def default_months(today: dt.date) -> list[dt.date]:
    """The previous month (its invoice is being made) and the current one."""
    current = month_of(today)
    return [month_of(current - dt.timedelta(days=1)), current]


def parse_month(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text.strip(), "%Y-%m").date()
    except ValueError:
        raise ValueError(f"{text!r} is not a month: write it as YYYY-MM, e.g. 2026-11.") from None


def _bounds(month: dt.date) -> tuple[int, int]:
    start = dt.datetime.combine(month, dt.time(), tzinfo=dt.UTC)
    end = dt.datetime.combine(next_month(month), dt.time(), tzinfo=dt.UTC)
    return int(start.timestamp()), int(end.timestamp())


# Selectors: our side, set-based per month


def ours_by_user(month: dt.date, *, user_ids=None) -> dict[str, dict[str, int]]:
    """user -> resource -> cents billed through Stripe for the month: the same figures as
    `stripe_reporting.month_cents_by_resource`, for every user.

    From the monthly rollup (one query): a resource's cost is linear in its quantity, so
    with the same prices all month it is the month's quantity times the price. Users whose
    prices change within the month (a card or negotiated price taking effect after its
    first day) are priced day by day from their daily rows (one more query)."""
    following = next_month(month)
    months = UsageMonthly.objects.filter(month=month, billed_via=UsageDaily.BilledVia.STRIPE)
    if user_ids is not None:
        months = months.filter(user_id__in=list(user_ids))
    months = list(
        months.values("user_id")
        .order_by("user_id")
        .annotate(**{name: Sum(name) for name in ("total_cost", *FIGURES)})
    )
    rates = RateBook.load(user_ids={r["user_id"] for r in months})
    totals: dict[str, Decimal] = defaultdict(Decimal)
    exact: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(RESOURCES, ZERO))

    def add(user_id, row, day):
        totals[user_id] += row["total_cost"]
        quantities = Quantities(**{name: row[name] for name in FIGURES})
        for resource, cost in resource_costs(
            quantities, rates.rates(user_id=user_id, day=day)
        ).items():
            exact[user_id][resource] += cost

    by_day = []
    for row in months:
        if rates.changes_within(user_id=row["user_id"], since=month, until=following):
            by_day.append(row["user_id"])
        else:
            add(row["user_id"], row, month)
    if by_day:
        days = UsageDaily.objects.filter(
            user_id__in=by_day,
            date__gte=month,
            date__lt=following,
            billed_via=UsageDaily.BilledVia.STRIPE,
        )
        for row in days.values("user_id", "date", "total_cost", *FIGURES):
            add(row["user_id"], row, row["date"])
    return {user_id: _split(to_cents(totals[user_id]), exact[user_id]) for user_id in exact}


@dataclass(frozen=True)
class Reported:
    reported: int = 0
    pending: int | None = None
    adjusted: int = 0
    adjusting: int = 0  # invoice items decided, not yet confirmed by Stripe
    last_error: str = ""
    last_reported_at: dt.datetime | None = None


def reported_by_user(month: dt.date, *, user_ids=None) -> dict[str, dict[str, Reported]]:
    """user -> resource -> what we reported to Stripe for the month: `reported` as meter
    events, `adjusted` as invoice items on a later invoice (a closed month's corrections,
    `StripeUsageAdjustment`), and what is decided but not confirmed yet of each."""
    reports = StripeUsageReport.objects.filter(month=month)
    adjustments = StripeUsageAdjustment.objects.filter(
        month=month, status=StripeUsageAdjustment.Status.PENDING
    )
    if user_ids is not None:
        reports = reports.filter(user_id__in=list(user_ids))
        adjustments = adjustments.filter(user_id__in=list(user_ids))
    found: dict[str, dict[str, Reported]] = defaultdict(dict)
    for report in reports:
        # reported_cents counts meter events and sent invoice items together.
        found[report.user_id][report.resource] = Reported(
            reported=report.reported_cents - report.adjusted_cents,
            pending=report.pending_cents if report.pending_identifier else None,
            adjusted=report.adjusted_cents,
            last_error=report.last_error,
            last_reported_at=report.last_reported_at,
        )
    for adjustment in adjustments:
        for resource, cents in adjustment.resources.items():
            sent = found[adjustment.user_id].setdefault(resource, Reported())
            sent.adjusting += int(cents)
    return found


def credits_by_user(month: dt.date, *, user_ids=None) -> dict[str, Credits]:
    """user -> the month's credit-billed usage, its rows' debits and its ledger entries."""
    rows = UsageMonthly.objects.filter(month=month, billed_via=UsageDaily.BilledVia.CREDITS)
    ledger = CreditLedgerEntry.objects.filter(
        kind=CreditLedgerEntry.Kind.USAGE, usage__date__gte=month, usage__date__lt=next_month(month)
    )
    if user_ids is not None:
        rows = rows.filter(user_id__in=list(user_ids))
        ledger = ledger.filter(user_id__in=list(user_ids))
    found: dict[str, Credits] = {}
    for row in rows.values("user_id").annotate(
        usage=Sum("total_cost"), debited=Sum("credits_debited")
    ):
        found[row["user_id"]] = Credits(
            usage=int(to_cents(row["usage"]) * 100), debited=int(to_cents(row["debited"]) * 100)
        )
    for row in ledger.values("user_id").annotate(taken=Sum("amount")):
        entry = found.setdefault(row["user_id"], Credits())
        entry.ledger = int(to_cents(-row["taken"]) * 100)
    return found


def _invoices_by_user(month: dt.date, user_ids) -> dict[str, BillingHistory]:
    """The invoice of each user's month: its period starts in the month (subscriptions
    renew on the first); a void one does not count, nor a final invoice of ours (a one-off
    invoice's period is the moment it was made, not the usage it charges: see
    `_final_invoices_by_user`)."""
    # Only the invoices we made: a "covered" end names Stripe's own invoice of the period,
    # which is the month's invoice like any other.
    finals = SubscriptionEnd.objects.filter(
        user_id__in=list(user_ids), status=SubscriptionEnd.Status.INVOICED
    ).exclude(final_invoice_id="")
    invoices = (
        BillingHistory.objects.filter(
            user_id__in=list(user_ids),
            period_start__gte=_aware(month),
            period_start__lt=_aware(next_month(month)),
        )
        .exclude(status=BillingHistory.Status.VOID)
        .exclude(stripe_invoice_id__in=finals.values("final_invoice_id"))
        .order_by("user_id", "-period_start", "-created_at")
    )
    found: dict[str, BillingHistory] = {}
    for invoice in invoices:
        found.setdefault(invoice.user_id, invoice)
    return found


def _final_invoices_by_user(month: dt.date, user_ids) -> dict[str, str]:
    """Our final invoice of each user's subscription that ended outside our flow in a period
    starting in the month (the period it charges, whenever the invoice was made)."""
    ends = SubscriptionEnd.objects.filter(
        user_id__in=list(user_ids),
        status=SubscriptionEnd.Status.INVOICED,
        period_start__gte=_aware(month),
        period_start__lt=_aware(next_month(month)),
    ).exclude(final_invoice_id="")
    return dict(ends.order_by("period_start").values_list("user_id", "final_invoice_id"))


def _aware(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


# The run


def billing_reconcile(
    *, months: list[dt.date], users: list[User] | None = None, now: dt.datetime | None = None
) -> Reconciliation:
    """Reconcile the months (for the given users, or everyone with figures in them)."""
    now = now or timezone.now()
    result = Reconciliation(months=sorted(set(months)))
    catalog = {entry.resource: entry for entry in StripeCatalogEntry.objects.all()}
    user_ids = None if users is None else [user.pk for user in users]
    drifts = {d.user_id: d for d in credits_check_balances()}
    if user_ids is not None:
        drifts = {k: v for k, v in drifts.items() if k in user_ids}
    for month in result.months:
        lines = _month_lines(month, user_ids=user_ids, now=now)
        for line in lines:
            _ask_stripe(result, line, catalog)
            _compare(line, now=now)
        result.lines += lines
    # A balance that disagrees with its ledger is not a month's: shown on the user's
    # newest line (one is made if the user has none).
    for user_id, drift in sorted(drifts.items()):
        line = next((ln for ln in reversed(result.lines) if ln.user_id == user_id), None)
        if line is None:
            line = _line(user_id, result.months[-1], _profiles([user_id]))
            result.lines.append(line)
        recorded = drift.recorded[0] - drift.recorded[1]
        ledger = drift.from_ledger[0] - drift.from_ledger[1]
        line.differences.append(
            Difference(
                "credits",
                "balance",
                int(to_cents(recorded - ledger) * 100),
                f"ledger sum != user_credits (recorded balance {recorded}, ledger {ledger})",
                explained=False,
                repair="run check_credit_balances --fix",
            )
        )
    return result


def _profiles(user_ids) -> dict[str, dict]:
    return {
        row["pk"]: row
        for row in User.objects.filter(pk__in=list(user_ids)).values(
            "pk",
            "email",
            "stripe_customer_id",
            "billing_profile__mode",
            "billing_profile__subscription_status",
            "billing_profile__subscription_started_at",
        )
    }


def _line(user_id: str, month: dt.date, profiles: dict) -> UserMonth:
    profile = profiles.get(user_id, {})
    return UserMonth(
        user_id=user_id,
        email=profile.get("email") or "",
        month=month,
        mode=profile.get("billing_profile__mode") or BillingProfile.Mode.POSTPAID,
        customer_id=profile.get("stripe_customer_id") or "",
        subscription_status=profile.get("billing_profile__subscription_status") or "",
        subscription_started_at=profile.get("billing_profile__subscription_started_at"),
    )


def _month_lines(month: dt.date, *, user_ids, now: dt.datetime) -> list[UserMonth]:
    ours = ours_by_user(month, user_ids=user_ids)
    reported = reported_by_user(month, user_ids=user_ids)
    credits = credits_by_user(month, user_ids=user_ids)
    everyone = sorted(set(ours) | set(reported) | set(credits))
    profiles = _profiles(everyone)
    invoices = _invoices_by_user(month, everyone)
    finals = _final_invoices_by_user(month, everyone)
    finalized = finalized_periods(user_ids=everyone)
    lines = []
    for user_id in everyone:
        line = _line(user_id, month, profiles)
        # The reporter's own rule for a closed month (no Stripe call: a start not yet
        # asked for is taken as "long ago").
        line.closed = month_closed(
            month,
            now=now,
            started=line.subscription_started_at or EPOCH,
            finalized=finalized.get(user_id, []),
        )
        if user_id in ours or user_id in reported:
            for resource in RESOURCES:
                sent = reported.get(user_id, {}).get(resource, Reported())
                line.figures[resource] = Figures(
                    resource=resource,
                    ours=ours.get(user_id, {}).get(resource, 0),
                    reported=sent.reported,
                    pending=sent.pending,
                    adjusted=sent.adjusted,
                    adjusting=sent.adjusting,
                    last_error=sent.last_error,
                    reported_recently=bool(
                        sent.last_reported_at and now - sent.last_reported_at < SUMMARY_LAG
                    ),
                )
        line.credits = credits.get(user_id)
        invoice = invoices.get(user_id)
        if invoice is not None:
            line.invoice_id = invoice.stripe_invoice_id or ""
            line.invoice_status = invoice.stripe_status or _stripe_status_of(invoice)
        line.final_invoice_id = finals.get(user_id, "")
        lines.append(line)
    return lines


def _stripe_status_of(invoice: BillingHistory) -> str:
    # Rows written before `stripe_status` existed: paid/void/failed are past draft.
    return "draft" if invoice.status == BillingHistory.Status.PENDING else invoice.status


def _ask_stripe(result: Reconciliation, line: UserMonth, catalog: dict) -> None:
    """What Stripe counted (one summary call per meter) and invoiced (the lines of the
    invoice on our metered prices, and of our final invoice its items for our resources)."""
    if not line.figures or not line.customer_id:
        return
    if not gateway.is_configured() or len(catalog) != len(RESOURCES):
        problem = "Stripe is not configured or its catalog is not set up (setup_stripe_billing)"
        if problem not in result.errors:
            result.errors.append(problem)
        return
    start, end = _bounds(line.month)
    try:
        for resource, figures in line.figures.items():
            figures.stripe = gateway.meter_event_summary_total(
                meter_id=catalog[resource].meter_id,
                customer_id=line.customer_id,
                start_time=start,
                end_time=end,
            )
        if line.invoice_id or line.final_invoice_id:
            by_price = {entry.price_id: resource for resource, entry in catalog.items()}
            invoiced = dict.fromkeys(RESOURCES, 0)
            if line.invoice_id:
                for item in gateway.list_invoice_lines(invoice_id=line.invoice_id):
                    resource = by_price.get(_price_of(item))
                    if resource is not None:
                        invoiced[resource] += int(item.get("amount") or 0)
            if line.final_invoice_id:
                for item in gateway.list_invoice_lines(invoice_id=line.final_invoice_id):
                    resource = final_item_resource(item)
                    if resource is not None:
                        invoiced[resource] += int(item.get("amount") or 0)
            for resource, figures in line.figures.items():
                figures.invoiced = invoiced[resource]
    except gateway.StripeGatewayError as error:
        result.errors.append(f"{line.user_id} {line.month:%Y-%m}: {error}")


def _price_of(item: dict) -> str | None:
    details = (item.get("pricing") or {}).get("price_details") or {}
    price = details.get("price") or item.get("price")
    return price.get("id") if isinstance(price, dict) else price


# Causes


def _compare(line: UserMonth, *, now: dt.datetime) -> None:
    live = is_active_subscription(line.subscription_status)
    reportable = event_timestamp(line.month, now) is not None and not line.month_closed
    for f in line.figures.values():
        pending = f.pending or 0
        # 1. Our usage against what we reported.
        missing = f.ours - f.reported - f.adjusted
        if missing:
            if f.pending is not None and f.reported + pending + f.adjusted == f.ours:
                cause, ok, repair = (
                    "pending event unconfirmed: the next report resends it",
                    True,
                    "",
                )
            elif f.adjusting and f.reported + f.adjusted + f.adjusting == f.ours:
                cause, ok, repair = (
                    "invoice item for a closed month unconfirmed: the next report sends it",
                    True,
                    "",
                )
            elif line.mode == BillingProfile.Mode.POSTPAID and not live:
                cause = "not reported: no live subscription (held as unbilled)"
                ok, repair = True, ""
            elif not reportable:
                # report_usage_to_stripe settles a closed month as an invoice item.
                why = line.closed or "its invoice is finalized"
                cause = (
                    f"not reported yet; the month is closed ({why}): the next report run "
                    "puts it on the next invoice as an invoice item"
                )
                ok, repair = True, ""
            else:
                cause, ok, repair = "not reported yet: the next report run sends it", True, ""
            if f.last_error:
                cause += f" (the last report failed: {f.last_error})"
            line.differences.append(
                Difference("ours/reported", f.resource, missing, cause, ok, repair)
            )
        # 2. What we reported against what Stripe's meter has.
        if f.stripe is not None and f.stripe != f.reported:
            lost = f.reported - f.stripe
            if f.pending is not None and f.stripe == f.reported + pending:
                cause, ok, repair = (
                    "pending event unconfirmed: Stripe has it; the next report confirms it",
                    True,
                    "",
                )
            elif f.reported_recently:
                cause, ok, repair = "Stripe's summary may lag the newest event", True, ""
            elif lost > 0:
                cause = "reported but Stripe does not have it: lost event"
                ok, repair = False, "resend" if reportable else _proposal(lost, line, f.resource)
            else:
                cause = (
                    "Stripe has more than we reported: an event counted twice (resent after "
                    "Stripe's 24-hour identifier window?)"
                )
                ok, repair = False, "resend" if reportable else _proposal(lost, line, f.resource)
            line.differences.append(
                Difference("reported/stripe", f.resource, lost, cause, ok, repair)
            )
        # 3. What Stripe's meter has against what its invoice charged (a closed month's
        #    corrections are invoice items on a later invoice: in neither).
        if f.invoiced is not None and f.stripe is not None and f.invoiced != f.stripe:
            late = f.stripe - f.invoiced
            if late > 0:
                cause = "invoice does not include late events: month closed"
                repair = _proposal(late, line, f.resource)
            else:
                cause, repair = "invoiced more than Stripe's meter has: cause unknown", ""
            line.differences.append(
                Difference("stripe/invoiced", f.resource, late, cause, False, repair)
            )
    if line.credits is not None:
        c = line.credits
        if c.usage != c.debited:
            line.differences.append(
                Difference(
                    "credits",
                    "usage",
                    c.usage - c.debited,
                    "credit-billed usage not debited in full (usage rows vs credits_debited)",
                    False,
                    "re-collect the days (usage_upsert debits the difference)",
                )
            )
        if c.debited != c.ledger:
            line.differences.append(
                Difference(
                    "credits",
                    "ledger",
                    c.debited - c.ledger,
                    "usage rows' credits_debited != the ledger's usage entries",
                    False,
                )
            )


def _proposal(cents: int, line: UserMonth, resource: str) -> str:
    kind = "invoice item" if cents > 0 else "credit note"
    customer = line.customer_id or "the customer"
    return (
        f"propose: {kind} of {abs(cents)} cents on the next invoice of {customer}"
        f" for {resource} usage of {line.month:%Y-%m}"
    )


# The one safe repair


class RepairRefused(Exception):
    """The repair is not safe now; the message says why."""


def resend_identifier(
    user_id: str, month: dt.date, resource: str, reported: int, stripe: int
) -> str:
    """Its own identifier per state: a retry of one repair is the same event; a repair of
    a later state is a new one."""
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
    return f"reconcile-{digest}-{month:%Y%m}-{resource}-{reported}-{stripe}"


def reconciliation_resend(
    *, user: User, month: dt.date, resource: str, actor: str, now: dt.datetime | None = None
) -> int:
    """Make Stripe's meter hold what we recorded as accepted: send the difference (negative
    when Stripe counted twice) as a meter event with a new identifier, while the month is
    open. Returns the cents sent (0: nothing to do). Our records do not change: they were
    right, Stripe's count was not. Raises RepairRefused when it is not safe."""
    now = now or timezone.now()
    timestamp = event_timestamp(month, now)
    entry = StripeCatalogEntry.objects.filter(resource=resource).first()
    if entry is None or not user.stripe_customer_id:
        raise RepairRefused(f"{user.pk} {month:%Y-%m} {resource}: no Stripe catalog or customer.")
    invoice = _invoices_by_user(month, [user.pk]).get(user.pk)
    started = (
        BillingProfile.objects.filter(user=user)
        .values_list("subscription_started_at", flat=True)
        .first()
    )
    closed = bool(
        month_closed(
            month,
            now=now,
            started=started or EPOCH,
            finalized=finalized_periods(user_ids=[user.pk]).get(user.pk, []),
        )
    ) or (invoice is not None and (invoice.stripe_status or _stripe_status_of(invoice)) != "draft")
    # Our final invoice of an ended subscription charged the month: the meter is closed too.
    closed = closed or user.pk in _final_invoices_by_user(month, [user.pk])
    if timestamp is None or closed:
        raise RepairRefused(
            f"{user.pk} {month:%Y-%m} {resource}: the month is closed; invoice the difference "
            "on the next invoice instead."
        )
    start, end = _bounds(month)
    with transaction.atomic():
        # Held while sending, so a report run cannot move the figures meanwhile.
        report = (
            StripeUsageReport.objects.select_for_update()
            .filter(user=user, month=month, resource=resource)
            .first()
        )
        if report is None:
            raise RepairRefused(f"{user.pk} {month:%Y-%m} {resource}: nothing was reported.")
        if report.pending_identifier:
            raise RepairRefused(
                f"{user.pk} {month:%Y-%m} {resource}: an event is pending; report_usage_to_stripe "
                "settles it first."
            )
        stripe = gateway.meter_event_summary_total(
            meter_id=entry.meter_id,
            customer_id=user.stripe_customer_id,
            start_time=start,
            end_time=end,
        )
        cents = report.reported_cents - stripe
        if cents == 0:
            return 0
        identifier = resend_identifier(user.pk, month, resource, report.reported_cents, stripe)
        gateway.send_meter_event(
            event_name=entry.event_name,
            customer_id=user.stripe_customer_id,
            value=cents,
            identifier=identifier,
            timestamp=timestamp,
        )
    logger.warning(
        "reconciliation: %s sent %+d cents (%s) for %s %s %s",
        actor,
        cents,
        identifier,
        user.pk,
        f"{month:%Y-%m}",
        resource,
    )
    return cents


def reconciliation_record(
    *, result: Reconciliation, actor: str, users: str = "", started_at: dt.datetime
) -> ReconciliationRun:
    """Keep a run for the admin's reconciliation page."""
    return ReconciliationRun.objects.create(
        started_at=started_at,
        finished_at=timezone.now(),
        months=", ".join(f"{m:%Y-%m}" for m in result.months),
        users=users,
        actor=actor,
        lines=[line.as_dict() for line in result.lines],
        differences=len(result.differences),
        unexplained=len(result.unexplained) + len(result.errors),
        errors=result.errors,
    )


def users_named(names: list[str]) -> list[User]:
    """Users by id or email (case-insensitive); ValueError naming any not found."""
    found, missing = [], []
    for name in names:
        user = User.objects.filter(Q(pk=name) | Q(email__iexact=name)).first()
        (found if user else missing).append(user or name)
    if missing:
        raise ValueError(f"No user with id or email {', '.join(map(repr, missing))}.")
    return found
