"""Reads about usage, costs and credits, shared by the admin, the user's page and the API.

They are the seed's "Current month usage" and "Daily breakdown" queries: month to date is
every day from the first of the current UTC month on; the breakdown is the newest 30 days
(summed over clusters, so a user moved mid-day still has one line per day).

Figures over whole months read `usage_monthly` (`UsageMonthly`, kept exact by triggers on
`usage_daily`): a few rows per user instead of a month of days. The dashboard's daily cost
per cluster reads `usage_cluster_daily` (`UsageClusterDaily`, kept by the same triggers).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from django.db import connection
from django.db.models import (
    DecimalField,
    ExpressionWrapper,
    F,
    OuterRef,
    Subquery,
    Sum,
    TextField,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from billing.models import (
    BillingAdjustment,
    BillingModeChange,
    BillingProfile,
    CreditLedgerEntry,
    UsageClusterDaily,
    UsageDaily,
    UsageMonthly,
    UserCredits,
)
from plumbing.db import sql_array

ZERO = Decimal("0")
CENT = Decimal("0.01")
_DECIMAL = DecimalField(max_digits=30, decimal_places=10)


def _sum(field):
    return Coalesce(Sum(field), Value(ZERO), output_field=_DECIMAL)


def month_start(today: dt.date | None = None) -> dt.date:
    return (today or timezone.now().date()).replace(day=1)


def month_to_date_cost(user: User, *, today: dt.date | None = None) -> Decimal:
    return UsageMonthly.objects.filter(user=user, month__gte=month_start(today)).aggregate(
        total=_sum("total_cost")
    )["total"]


def users_with_billing_figures(users, *, today: dt.date | None = None):
    """`users` annotated with `billing_mode_now` (postpaid without a profile),
    `month_to_date_total` (this month's cost) and `credit_balance_now` (None without a
    credits row): in the same query as the users, for lists."""
    month = (
        UsageMonthly.objects.filter(user=OuterRef("pk"), month__gte=month_start(today))
        .order_by()
        .values("user")
        .annotate(total=Sum("total_cost"))
        .values("total")
    )
    return users.annotate(
        billing_mode_now=Coalesce(
            F("billing_profile__mode"),
            Value(BillingProfile.Mode.POSTPAID),
            output_field=TextField(),
        ),
        month_to_date_total=Coalesce(Subquery(month), Value(ZERO), output_field=_DECIMAL),
        credit_balance_now=ExpressionWrapper(
            F("credits__total_purchased") - F("credits__total_used"), output_field=_DECIMAL
        ),
    )


def month_to_date_by_user(*, today: dt.date | None = None):
    """Every user's month-to-date cost, in one aggregate query."""
    return (
        UsageMonthly.objects.filter(month__gte=month_start(today))
        .values("user_id")
        .order_by("user_id")
        .annotate(monthly_total=_sum("total_cost"))
    )


def daily_breakdown(
    user: User, *, days: int = 30, since: dt.date | None = None, until: dt.date | None = None
):
    rows = UsageDaily.objects.filter(user=user)
    if since:
        rows = rows.filter(date__gte=since)
    if until:
        rows = rows.filter(date__lte=until)
    return (
        rows.values("date")
        .order_by("-date")
        .annotate(
            cpu_hours=_sum("cpu_hours"),
            gpu_hours=_sum("gpu_hours"),
            storage_gb_months=_sum("storage_gb_months"),
            api_calls=Sum("api_calls"),
            total_cost=_sum("total_cost"),
        )[:days]
    )


def daily_cost_by_cluster(*, since: dt.date, until: dt.date):
    """Cost per cluster and day over [since, until], one GROUP BY for the dashboard's chart:
    rows of date, hopsworks_cluster_id, hopsworks_cluster__name and total_cost. From the
    daily rollup per cluster (its two channels summed), not the days of every user."""
    return (
        UsageClusterDaily.objects.filter(date__gte=since, date__lte=until)
        .values("date", "hopsworks_cluster_id", "hopsworks_cluster__name")
        .annotate(total_cost=_sum("total_cost"))
        .order_by("date")
    )


def usage_totals(queryset) -> dict:
    """Totals of a filtered usage list, in one query."""
    return queryset.aggregate(
        cpu_hours=_sum("cpu_hours"),
        gpu_hours=_sum("gpu_hours"),
        storage_gb_months=_sum("storage_gb_months"),
        api_calls=Coalesce(Sum("api_calls"), Value(0)),
        total_cost=_sum("total_cost"),
    )


def usage_totals_of_months(
    *, first: dt.date, following: dt.date | None, cluster_id=None, no_cluster: bool = False
) -> dict:
    """The totals `usage_totals` gives for every user's days from `first` (a month's first
    day) up to `following` (a later month's first day, or no end), on one cluster, without
    one, or all: from the monthly rollup, in one query."""
    months = UsageMonthly.objects.filter(month__gte=first)
    if following is not None:
        months = months.filter(month__lt=following)
    if no_cluster:
        months = months.filter(hopsworks_cluster__isnull=True)
    elif cluster_id is not None:
        months = months.filter(hopsworks_cluster_id=cluster_id)
    return usage_totals(months)


def billing_mode(user: User) -> str:
    account = BillingProfile.objects.filter(user=user).first()
    return account.mode if account else BillingProfile.Mode.POSTPAID


def billing_modes_on(pairs) -> dict[tuple[str, dt.date], str]:
    """The billing mode of each (user id, day): the mode in force when the day began
    (00:00 UTC), i.e. the `to_mode` of the latest `BillingModeChange` effective by then;
    before a user's first change, its `from_mode`; for a user with no change recorded, the
    profile's mode (postpaid without a profile). One query for any number of pairs."""
    pairs = set(pairs)
    if not pairs:
        return {}
    # One row per user (and per change of theirs, usually none), the rule applied here:
    # per (user, day) subqueries cost the usage upsert a tenth of its time (issue 16).
    profile_mode, changes = {}, defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT k.user_id, p.mode, c.effective_at, c.id, c.from_mode, c.to_mode
            FROM unnest(%s::text[]) AS k(user_id)
            LEFT JOIN billing_account p ON p.user_id = k.user_id
            LEFT JOIN billing_mode_change c ON c.user_id = k.user_id
            """,
            [sql_array(sorted({user_id for user_id, _ in pairs}), text=True)],
        )
        for user_id, mode, effective_at, change_id, from_mode, to_mode in cursor.fetchall():
            profile_mode[user_id] = mode or BillingProfile.Mode.POSTPAID
            if change_id is not None:
                changes[user_id].append((effective_at, change_id, from_mode, to_mode))
    for series in changes.values():
        series.sort()
    modes = {}
    for user_id, day in pairs:
        series = changes.get(user_id)
        if not series:
            modes[(user_id, day)] = profile_mode[user_id]
            continue
        began = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        in_force = series[0][2]  # before the first change: what it changed from
        for effective_at, _, _, to_mode in series:
            if effective_at > began:
                break
            in_force = to_mode
        modes[(user_id, day)] = in_force
    return modes


def unbilled_usage(*, user_ids=None) -> dict[str, Decimal]:
    """Per user without a live subscription (none, or canceled, unpaid, incomplete...):
    their Stripe-billed usage not yet reported to Stripe, in dollars and cents. It is our
    month totals (each rounded to the cent once, as reported) minus what
    `StripeUsageReport` says Stripe took, over all months. Held until a subscription is
    live; the next report then sends it. One query, whatever the number of users, reading
    the months of only the users without a live subscription."""
    only = "AND h.user_id = ANY(%s)" if user_ids is not None else ""
    params = [UsageDaily.BilledVia.STRIPE, list(BillingProfile.ACTIVE_SUBSCRIPTION)]
    if user_ids is not None:
        params.append(list(user_ids))
    with connection.cursor() as cursor:
        # From the users `StripeBilledUser` does not say live (its index on that condition):
        # every user with Stripe-billed usage is there, and none marked live without a
        # live subscription; the profile is checked again for those it marks not live.
        cursor.execute(
            f"""
            WITH months AS (
                SELECT u.user_id, u.month, ROUND(SUM(u.total_cost), 2) AS total
                FROM billing_stripe_billed_user h
                JOIN usage_monthly u ON u.user_id = h.user_id AND u.billed_via = %s
                WHERE NOT h.subscription_live
                  AND NOT EXISTS (
                      SELECT 1 FROM billing_account p
                      WHERE p.user_id = h.user_id AND p.subscription_status = ANY(%s))
                  {only}
                GROUP BY 1, 2
            ), reported AS (
                SELECT r.user_id, r.month, SUM(r.reported_cents) AS cents
                FROM billing_stripe_usage_report r
                WHERE r.user_id IN (SELECT user_id FROM months)
                GROUP BY 1, 2
            )
            SELECT m.user_id, SUM(m.total - COALESCE(r.cents, 0) / 100.0) AS unbilled
            FROM months m
            LEFT JOIN reported r ON r.user_id = m.user_id AND r.month = m.month
            GROUP BY m.user_id
            HAVING SUM(m.total - COALESCE(r.cents, 0) / 100.0) <> 0
            """,  # noqa: S608 - the optional condition is ours, values are parameters
            params,
        )
        return {user_id: Decimal(amount).quantize(CENT) for user_id, amount in cursor}


def credit_balance(user: User) -> Decimal:
    credits = UserCredits.objects.filter(user=user).first()
    return credits.balance if credits else ZERO


def negative_balances():
    return UserCredits.objects.filter(total_used__gt=F("total_purchased"))


def credit_movements(user: User, *, limit: int = 50):
    return CreditLedgerEntry.objects.filter(user=user).order_by("-created_at", "-id")[:limit]


def user_for_stripe_object(obj: dict) -> User | None:
    """The user a Stripe object (session, subscription, invoice) belongs to: by the id we
    put in it, else by its customer."""
    user_id = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("user_id")
    if user_id:
        user = User.objects.filter(pk=user_id).first()
        if user is not None:
            return user
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return User.objects.filter(stripe_customer_id=customer).first() if customer else None


WHERE_ADJUSTED = {
    "ledger": "your prepaid balance",
    "stripe_customer_balance": "your Stripe balance, off your next invoices",
    "stripe_invoice_item": "your next invoice",
    "stripe_credit_note": "a credit note on your open invoice",
}


def account_changes(user: User, *, limit: int = 20) -> list[dict]:
    """The user's history of how they pay: mode switches (with their effective time) and
    operators' credits and debits, newest first, in words for the user's own page."""
    changes = [
        {
            "at": change.effective_at,
            "what": f"Billing mode {change.get_from_mode_display()} → "
            f"{change.get_to_mode_display()}, effective "
            f"{change.effective_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC",
            "note": "",  # the operator's reason may be internal
        }
        for change in BillingModeChange.objects.filter(user=user).order_by("-effective_at")[:limit]
    ]
    for adjustment in (
        BillingAdjustment.objects.filter(user=user)
        .exclude(status=BillingAdjustment.Status.FAILED)
        .order_by("-created_at")[:limit]
    ):
        kind = "Credit" if adjustment.direction == BillingAdjustment.Direction.CREDIT else "Charge"
        pending = adjustment.status == BillingAdjustment.Status.PENDING
        changes.append(
            {
                "at": adjustment.created_at,
                "what": f"{kind} of ${adjustment.amount}: {adjustment.reason}",
                "note": ("being applied to " if pending else "applied to ")
                + WHERE_ADJUSTED[adjustment.channel],
            }
        )
    return sorted(changes, key=lambda c: c["at"], reverse=True)[:limit]
