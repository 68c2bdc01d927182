# ruff: noqa: S608 - table and column names come from the models; values are parameters
"""What the Stripe reporting decides with: our figures per user-month, Stripe's rules for
meter events (identifiers, timestamps, closed months) and the rows it keeps, read and
written in bulk. No Stripe call is made here except asking when a subscription began.

Everything takes many user-months at once and makes a fixed number of queries for them
(`billing/stripe_reporting.py` runs it in batches).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable
from decimal import ROUND_FLOOR, Decimal

from django.db import connection

from billing import stripe_gateway as gateway
from billing.models import (
    BillingHistory,
    BillingProfile,
    Price,
    StripeReportDue,
    StripeUsageAdjustment,
    StripeUsageReport,
    UsageDaily,
    UsageMonthly,
    is_active_subscription,
)
from billing.pricing import RESOURCE_NAMES, RateBook, resource_costs_of, to_cents
from plumbing.db import sql_array

RESOURCES = Price.Resource.values
_ZERO = Decimal(0)
# Stripe accepts meter events up to 35 days old; keep a margin.
MAX_EVENT_AGE = dt.timedelta(days=34)
# Stripe keeps a meter event identifier unique for about 24 hours: a pending event is
# resent with the same identifier only this long after it was first sent; after that
# Stripe's meter event summaries decide.
IDENTIFIER_WINDOW = dt.timedelta(hours=20)

Pair = tuple[str, dt.date]  # (user id, first day of the month)


# Our figures


def months_cents(pairs: Iterable[Pair], *, rates: RateBook | None = None) -> dict[Pair, dict]:
    """Per user-month, what the user owes through Stripe in cents per resource, adding up
    exactly to the month total rounded once. One query for all of them. A resource's cost is
    linear in its quantity, so with the same prices all month it is the month's quantity
    times the price: those user-months are read from the monthly rollup (`usage_monthly`,
    one index range a user-month, whatever the days), as `reconciliation.ours_by_user`
    does. A user-month whose prices may change within it (`RateBook.changes_within`) is
    summed from usage_daily per stretch of days with the same prices (between two days a
    price takes effect), through its (user_id, date) index: a stretch's sum priced once is
    the sum of its days priced one by one."""
    pairs = sorted(set(pairs))
    if not pairs:
        return {}
    rates = rates or RateBook.load(user_ids={user_id for user_id, _ in pairs})
    whole: list[Pair] = []
    by_day: list[Pair] = []
    for pair in pairs:
        user_id, month = pair
        changes = rates.changes_within(user_id=user_id, since=month, until=_next_month(month))
        (by_day if changes else whole).append(pair)
    # The rollup's rows are per cluster (or none): a month's are summed, priced on its
    # first day (the prices hold all month).
    sql = f"""
        SELECT p.user_id, p.month, d.first_day, d.cpu, d.gpu, d.storage, d.calls, d.cost
        FROM unnest(%s::text[], %s::date[]) AS p(user_id, month)
        CROSS JOIN LATERAL (
            SELECT p.month AS first_day, sum(m.cpu_hours) AS cpu, sum(m.gpu_hours) AS gpu,
                   sum(m.storage_gb_months) AS storage, sum(m.api_calls) AS calls,
                   sum(m.total_cost) AS cost
            FROM {UsageMonthly._meta.db_table} m
            WHERE m.user_id = p.user_id AND m.month = p.month AND m.billed_via = %s
            HAVING count(*) > 0
        ) AS d
    """
    params = [
        sql_array([user_id for user_id, _ in whole], text=True),
        sql_array([month for _, month in whole]),
        UsageDaily.BilledVia.STRIPE,
    ]
    if by_day:
        sql += f"""
        UNION ALL
        SELECT p.user_id, p.month, d.first_day, d.cpu, d.gpu, d.storage, d.calls, d.cost
        FROM unnest(%s::text[], %s::date[]) AS p(user_id, month)
        CROSS JOIN LATERAL (
            -- Aggregated per user-month (never pulled up into a join): each one is
            -- read through the (user_id, date) index, whatever usage_daily's size.
            SELECT min(u.date) AS first_day, sum(u.cpu_hours) AS cpu,
                   sum(u.gpu_hours) AS gpu, sum(u.storage_gb_months) AS storage,
                   sum(u.api_calls) AS calls, sum(u.total_cost) AS cost
            FROM {UsageDaily._meta.db_table} u
            WHERE u.user_id = p.user_id AND u.date >= p.month
              AND u.date < (p.month + interval '1 month')::date AND u.billed_via = %s
            GROUP BY width_bucket(u.date, %s::date[])
        ) AS d
        """
        params += [
            sql_array([user_id for user_id, _ in by_day], text=True),
            sql_array([month for _, month in by_day]),
            UsageDaily.BilledVia.STRIPE,
            rates.change_days(),
        ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    totals: dict[Pair, Decimal] = {}
    exact: dict[Pair, tuple[Decimal, ...]] = {}
    for user_id, month, first_day, cpu, gpu, storage, calls, cost in rows:
        pair = (user_id, month)
        costs = resource_costs_of(
            cpu, gpu, storage, int(calls), rates.rates(user_id=user_id, day=first_day)
        )
        if pair in totals:  # a month priced by stretches of days
            totals[pair] += cost
            costs = tuple(a + b for a, b in zip(exact[pair], costs, strict=True))
        else:
            totals[pair] = cost
        exact[pair] = costs
    nothing = (_ZERO,) * len(RESOURCES)
    return {
        pair: _split(
            to_cents(totals.get(pair, _ZERO)),
            dict(zip(RESOURCE_NAMES, exact.get(pair, nothing), strict=True)),
        )
        for pair in pairs
    }


def _next_month(month: dt.date) -> dt.date:
    return (month + dt.timedelta(days=32)).replace(day=1)


def month_cents_by_resource(user_id: str, month: dt.date) -> dict[str, int]:
    """What the user owes for the month through Stripe, in cents per resource."""
    return months_cents([(user_id, month)])[(user_id, month)]


def _split(total: Decimal, exact: dict[str, Decimal]) -> dict[str, int]:
    """Largest remainder: whole cents per resource that add up to `total`."""
    # In cents: scaleb moves the exponent, exactly as dividing by CENT would, for less.
    scaled = {r: v.scaleb(2) for r, v in exact.items()}
    cents = {r: int(v.to_integral_value(ROUND_FLOOR)) for r, v in scaled.items()}
    remaining = int(total.scaleb(2)) - sum(cents.values())
    order = sorted(scaled, key=lambda r: (scaled[r] - cents[r], r), reverse=True)
    for resource in (order * (abs(remaining) // len(order) + 1))[: abs(remaining)]:
        cents[resource] += 1 if remaining > 0 else -1
    return cents


def changed_days(pairs: dict[Pair, dt.datetime | None]) -> dict[Pair, list[dt.date]]:
    """Per user-month, its Stripe-billed days changed since the given moment (every day
    with usage, for None), in one query."""
    if not pairs:
        return {}
    keys = sorted(pairs)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT p.user_id, p.month, d.days
            FROM unnest(%s::text[], %s::date[], %s::timestamptz[]) AS p(user_id, month, since)
            CROSS JOIN LATERAL (
                SELECT array_agg(DISTINCT u.date ORDER BY u.date) AS days
                FROM {UsageDaily._meta.db_table} u
                WHERE u.user_id = p.user_id AND u.date >= p.month
                  AND u.date < (p.month + interval '1 month')::date AND u.billed_via = %s
                  AND ((p.since IS NULL AND u.total_cost > 0) OR u.updated_at > p.since)
            ) AS d
            WHERE d.days IS NOT NULL
            """,
            [
                [u for u, _ in keys],
                [m for _, m in keys],
                [pairs[k] for k in keys],
                UsageDaily.BilledVia.STRIPE,
            ],
        )
        return {(user_id, month): list(days) for user_id, month, days in cursor.fetchall()}


MAX_DAYS_NAMED = 10


def adjustment_description(month: dt.date, days: list[dt.date], cents: int) -> str:
    """E.g. "Usage correction for 2026-10 (days 2026-10-03, 2026-10-07): +$12.34"."""
    amount = f"{'+' if cents > 0 else '-'}${Decimal(abs(cents)).scaleb(-2):,.2f}"
    named = ", ".join(f"{d}" for d in days[:MAX_DAYS_NAMED])
    if len(days) > MAX_DAYS_NAMED:
        named += f" and {len(days) - MAX_DAYS_NAMED} more"
    which = f" (days {named})" if days else ""
    return f"Usage correction for {month:%Y-%m}{which}: {amount}"


# Stripe's rules for meter events


def identifier(user_id: str, month: dt.date, resource: str, number: int) -> str:
    """Deterministic, at most 100 characters, no personal data."""
    return f"usage-{_digest(user_id)}-{_month_key(month)}-{resource}-{number}"


@functools.lru_cache(maxsize=64)  # a date's strftime was most of an identifier's cost
def _month_key(month: dt.date) -> str:
    return f"{month:%Y%m}"


@functools.lru_cache(maxsize=4096)  # a user's four resources, in a batch of user-months
def _digest(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=64)  # the same for every event of a month in a run
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


def month_bounds(month: dt.date) -> tuple[int, int]:
    """[start, end) of a calendar month in Unix seconds (UTC)."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = dt.datetime.combine((month + dt.timedelta(days=32)).replace(day=1), dt.time(), dt.UTC)
    return int(start.timestamp()), int(end.timestamp())


def finalized_periods(*, user_ids) -> dict[str, list[tuple[dt.datetime, dt.datetime]]]:
    """Per user, the periods of their finalized invoices (one query; the user ids bound as
    one array: Django's `__in` prepares each of a batch's hundreds of ids in Python)."""
    periods: dict[str, list] = {}
    history = BillingHistory._meta
    user, start, end, finalized = (
        history.get_field(name).column
        for name in ("user", "period_start", "period_end", "finalized_at")
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT {user}, {start}, {end} FROM {history.db_table}
            WHERE {user} = ANY(%s::text[]) AND {finalized} IS NOT NULL
              AND {start} IS NOT NULL AND {end} IS NOT NULL
            """,
            [sql_array(sorted(user_ids), text=True)],
        )
        for user_id, period_start, period_end in cursor.fetchall():
            periods.setdefault(user_id, []).append((period_start, period_end))
    return periods


class ReportProfile:
    """What the reporting reads of a billing profile and its user (`reportable`,
    `subscription_starts`, the events' customer, an invoice item's subscription), as plain
    attributes with the model's names (the user's `stripe_customer_id` on the profile): a
    batch reads one for each of its hundreds of user-months, and a profile and a user model
    instance each (`from_db`, `__init__`, the related-object cache) cost more than every
    other step of the batch's profiles."""

    __slots__ = (
        "mode",
        "started_subscription_id",
        "stripe_customer_id",
        "stripe_subscription_id",
        "subscription_started_at",
        "subscription_status",
        "user_id",
    )

    def __init__(self, values) -> None:
        (
            self.user_id,
            self.mode,
            self.subscription_status,
            self.stripe_subscription_id,
            started_at,
            self.started_subscription_id,
            self.stripe_customer_id,
        ) = values
        self.subscription_started_at = _moment(started_at)

    @property
    def pk(self) -> str:
        return self.user_id

    @property
    def has_active_subscription(self) -> bool:
        return is_active_subscription(self.subscription_status)


def profiles_of(user_ids) -> list[ReportProfile]:
    """The users' billing profiles with their users' Stripe customers (one query; the ids
    bound as one array, as in `finalized_periods`; the start read as epoch microseconds,
    as in `reports_claim`)."""
    profile, user = BillingProfile._meta, BillingProfile._meta.get_field("user").related_model
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT p.user_id, p.mode, p.subscription_status, p.stripe_subscription_id,
                   (extract(epoch FROM p.subscription_started_at) * 1000000)::bigint,
                   p.started_subscription_id, u.stripe_customer_id
            FROM {profile.db_table} p JOIN {user._meta.db_table} u ON u.id = p.user_id
            WHERE p.user_id IN (SELECT unnest(%s::text[]))
            """,
            [sql_array(sorted(user_ids), text=True)],
        )
        return [ReportProfile(values) for values in cursor.fetchall()]


def subscription_starts(
    profiles: Iterable[ReportProfile], *, errors: list[str]
) -> dict[str, dt.datetime | None]:
    """When each user's subscription began (Stripe's start_date): asked once per
    subscription and kept on the profile (one query for all those asked); None, with the
    reason in `errors`, when Stripe could not say."""
    starts: dict[str, dt.datetime | None] = {}
    asked = []
    for profile in profiles:
        if (
            profile.subscription_started_at is not None
            and profile.started_subscription_id == profile.stripe_subscription_id
        ):
            starts[profile.user_id] = profile.subscription_started_at
            continue
        try:
            subscription = gateway.retrieve_subscription(
                subscription_id=profile.stripe_subscription_id
            )
        except gateway.StripeGatewayError as error:
            starts[profile.user_id] = None
            errors.append(f"{profile.user_id}: when did the subscription begin? {error}")
            continue
        profile.subscription_started_at = gateway.datetime_from_timestamp(
            subscription.get("start_date") or subscription["created"]
        )
        profile.started_subscription_id = subscription["id"]
        starts[profile.user_id] = profile.subscription_started_at
        asked.append(profile)
    if asked:  # only these two columns: the webhook owns the rest of the profile
        BillingProfile.objects.bulk_update(
            [
                BillingProfile(
                    user_id=profile.user_id,
                    subscription_started_at=profile.subscription_started_at,
                    started_subscription_id=profile.started_subscription_id,
                )
                for profile in asked
            ],
            ["subscription_started_at", "started_subscription_id"],
        )
    return starts


def month_closed(month: dt.date, *, now, started: dt.datetime, finalized) -> str:
    """Why Stripe will not bill a meter event for this month any more ("" if it will):
    its invoice is finalized, it ended before the subscription began, or it is older than
    Stripe takes meter events."""
    start, end = _month_moments(month)
    if any(p_start <= start and end <= p_end for p_start, p_end in finalized):
        return "its invoice is finalized"
    if end <= started:
        return "it ended before the subscription began"
    if end <= now - MAX_EVENT_AGE:
        return "Stripe takes meter events up to 35 days old"
    return ""


@functools.lru_cache(maxsize=64)  # asked for each user-month of a batch
def _month_moments(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """`month_bounds` as aware UTC datetimes."""
    start, end = month_bounds(month)
    return gateway.datetime_from_timestamp(start), gateway.datetime_from_timestamp(end)


# The rows, in bulk


def due_months(*, user_ids=None, after: Pair | None = None, limit: int | None = None) -> list:
    """The next user-months (after `after`, in order) a run may have to look at: those whose
    Stripe-billed usage changed since they were last decided or with an event still pending
    (`StripeReportDue`, with the version read: a month stays due while an event of it is
    pending) and those with an invoice item still pending. One query, whatever the history:
    an ordered merge of two index scans that stops after `limit` (whether the user has a
    live subscription is the caller's to check, with the profiles it reads anyway: a join
    here would read every profile for every batch)."""
    due, adjustment = StripeReportDue._meta.db_table, StripeUsageAdjustment._meta.db_table
    where, params = [], []
    if after is not None:
        where.append("(user_id, month) > (%s, %s)")
        params += list(after)
    if user_ids is not None:
        where.append("user_id = ANY(%s::text[])")
        params.append(list(user_ids))
    condition = " AND ".join(where) or "TRUE"
    # Each source is read in (user, month) order through its index and stops at `limit`
    # keys: the first `limit` keys of the two together are among them. (A plain UNION
    # of them, grouped, made PostgreSQL read every row after the cursor each batch.)
    cap = "LIMIT %s" if limit is not None else ""
    branch_params = [*params, int(limit)] if limit is not None else list(params)
    sql = f"""
        SELECT user_id, month, max(version) FROM (
            (SELECT user_id, month, version FROM {due} WHERE {condition}
             ORDER BY user_id, month {cap})
            UNION ALL
            (SELECT DISTINCT user_id, month, NULL::bigint FROM {adjustment}
             WHERE status = 'pending' AND {condition} ORDER BY user_id, month {cap})
        ) AS s
        GROUP BY user_id, month
        ORDER BY user_id, month
    """
    params = branch_params * 2
    if limit is not None:
        sql += " LIMIT %s"
        params.append(int(limit))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [
            {"user_id": user_id, "month": month, "version": version}
            for user_id, month, version in cursor.fetchall()
        ]


def reportable(profile: ReportProfile | None) -> bool:
    """Whether the user's usage goes to Stripe now: a live subscription and a customer."""
    return (
        profile is not None
        and profile.has_active_subscription
        and profile.stripe_customer_id is not None
    )


def reports_ensure(pairs: list[Pair]) -> None:
    """A report row per resource for each user-month (one statement, in its own
    transaction: the claim that follows then never waits on a row another run inserted).
    Only user-months with fewer rows than resources are inserted into: one index range
    read per user-month, where an insert of every row met its conflict row by row (a
    batch's user-months nearly all have theirs)."""
    table = StripeUsageReport._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table}
                (user_id, month, resource, reported_cents, events_sent, pending_identifier,
                 last_error, adjusted_cents)
            SELECT p.user_id, p.month, r.resource, 0, 0, '', '', 0
            FROM unnest(%s::text[], %s::date[]) AS p(user_id, month)
            CROSS JOIN unnest(%s::text[]) AS r(resource)
            WHERE (
                SELECT count(*) FROM {table} e
                WHERE e.user_id = p.user_id AND e.month = p.month
                  AND e.resource = ANY(%s::text[])
            ) < %s
            ORDER BY 1, 2, 3
            ON CONFLICT DO NOTHING
            """,
            [
                sql_array([u for u, _ in pairs], text=True),
                sql_array([m for _, m in pairs]),
                RESOURCES,
                RESOURCES,
                len(RESOURCES),
            ],
        )


REPORT_COLUMNS = (
    ("reported_cents", "bigint"),
    ("events_sent", "integer"),
    ("pending_identifier", "text"),
    ("pending_cents", "bigint"),
    ("pending_since", "timestamptz"),
    ("pending_timestamp", "bigint"),
    ("last_error", "text"),
    ("last_reported_at", "timestamptz"),
    ("adjusted_cents", "bigint"),
)


# What the claim reads, in this order (`ReportRow.__init__` unpacks it).
CLAIMED_COLUMNS = ("id", "user_id", "month", "resource", *(name for name, _ in REPORT_COLUMNS))


class ReportRow:
    """A claimed `StripeUsageReport` row as plain attributes (the model's names): a batch
    claims thousands of them, and a model instance each was most of the claim's time. Written
    back with `reports_save`, `reports_decide` or `reports_accept`."""

    # `last_reported_at` is kept as the claim read it (epoch microseconds) until it is asked
    # for: a reporting run never reads it, and making a datetime of it for every claimed
    # row (two claims a batch) was a sixth of the claim's Python.
    __slots__ = tuple(
        "_last_reported_at" if name == "last_reported_at" else name for name in CLAIMED_COLUMNS
    )

    def __init__(self, values) -> None:
        # One unpacking, in the order of CLAIMED_COLUMNS (a setattr() call per column was a
        # third of the claim's Python time).
        (
            self.id,
            self.user_id,
            self.month,
            self.resource,
            self.reported_cents,
            self.events_sent,
            self.pending_identifier,
            self.pending_cents,
            self.pending_since,
            self.pending_timestamp,
            self.last_error,
            self._last_reported_at,
            self.adjusted_cents,
        ) = values

    @property
    def pk(self) -> int:
        return self.id

    @property
    def last_reported_at(self) -> dt.datetime | None:
        value = self._last_reported_at
        if type(value) is int:  # as claimed: microseconds since the epoch
            value = self._last_reported_at = _moment(value)
        return value

    @last_reported_at.setter
    def last_reported_at(self, value: dt.datetime | None) -> None:
        self._last_reported_at = value


# The claim reads a timestamptz column as whole microseconds since the epoch, made a
# datetime here: Django's loader for timestamptz is psycopg's pure-Python parser of the
# text form plus a tzinfo replace, ~5 us a value, and a claim reads two per row.
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MOMENTS = frozenset(name for name, kind in REPORT_COLUMNS if kind == "timestamptz")


def _claimed_column(name: str) -> str:
    if name in _MOMENTS:
        return f"(extract(epoch FROM r.{name}) * 1000000)::bigint"
    return f"r.{name}"


def _moment(microseconds: int | None) -> dt.datetime | None:
    if microseconds is None:
        return None
    return _EPOCH + dt.timedelta(microseconds=microseconds)


def reports_claim(pairs: Iterable[Pair]) -> dict[Pair, dict[str, ReportRow]]:
    """The report rows of the user-months no other run holds, locked (one statement, inside
    the caller's transaction). A user-month is claimed by its first resource's row, taken
    with SKIP LOCKED; its other rows are then locked in primary-key order."""
    pairs = sorted(set(pairs))
    if not pairs:
        return {}
    table = StripeUsageReport._meta.db_table
    columns = ", ".join(_claimed_column(name) for name in CLAIMED_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH claimed AS (
                SELECT user_id, month FROM {table}
                WHERE resource = %s
                  AND (user_id, month) IN (SELECT * FROM unnest(%s::text[], %s::date[]))
                ORDER BY id
                FOR UPDATE SKIP LOCKED
            )
            SELECT {columns} FROM {table} r JOIN claimed c USING (user_id, month)
            ORDER BY r.id
            FOR UPDATE OF r
            """,
            [
                RESOURCES[0],
                sql_array([u for u, _ in pairs], text=True),
                sql_array([m for _, m in pairs]),
            ],
        )
        rows = cursor.fetchall()
    claimed: dict[Pair, dict[str, ReportRow]] = defaultdict(dict)
    for values in rows:
        row = ReportRow(values)
        # Most rows have no pending moment: converted only where set (a call for every row
        # was a tenth of the claim's Python).
        # (`last_reported_at` is made a datetime when read.)
        if row.pending_since is not None:
            row.pending_since = _moment(row.pending_since)
        claimed[(row.user_id, row.month)][row.resource] = row
    return {pair: rows for pair, rows in claimed.items() if len(rows) == len(RESOURCES)}


# The three writes below also bound the ids by their least and greatest: a batch's rows
# are mostly neighbours (inserted together, in (user, month) order), and with no other
# condition on the id the planner read the whole table for every batch (a hash join on
# a sequential scan for the decision, in plans with and without statistics; the
# acceptance too before the table was first analyzed). The range is read through the
# primary key; the ids still decide which rows.
def _id_range(reports) -> tuple[int, int]:
    ids = [report.id for report in reports]
    return min(ids), max(ids)


def reports_save(reports: Iterable[ReportRow]) -> None:
    """Write the reports' state (one UPDATE from arrays, whatever their number)."""
    reports = list({report.pk: report for report in reports}.values())
    if not reports:
        return
    names = ", ".join(name for name, _ in REPORT_COLUMNS)
    casts = ", ".join(f"%s::{kind}[]" for _, kind in REPORT_COLUMNS)
    sets = ", ".join(f"{name} = v.{name}" for name, _ in REPORT_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {StripeUsageReport._meta.db_table} r SET {sets}
            FROM unnest(%s::bigint[], {casts}) AS v(id, {names})
            WHERE r.id = v.id AND r.id BETWEEN %s AND %s
            """,
            [
                [report.pk for report in reports],
                *([getattr(report, name) for report in reports] for name, _ in REPORT_COLUMNS),
                *_id_range(reports),
            ],
        )


def reports_decide(reports: list[ReportRow], *, now: dt.datetime) -> None:
    """Write the pending events just decided (identifier, cents and timestamp; all decided
    `now`): only those columns, one statement."""
    if not reports:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {StripeUsageReport._meta.db_table} r
            SET pending_identifier = v.identifier, pending_cents = v.cents,
                pending_since = %s, pending_timestamp = v.stamp
            FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::bigint[])
                AS v(id, identifier, cents, stamp)
            WHERE r.id = v.id AND r.id BETWEEN %s AND %s
            """,
            [
                now,
                sql_array([r.id for r in reports]),
                sql_array([r.pending_identifier for r in reports], text=True),
                sql_array([r.pending_cents for r in reports]),
                sql_array([r.pending_timestamp for r in reports]),
                *_id_range(reports),
            ],
        )


def reports_accept(reports: list[ReportRow], *, now: dt.datetime) -> None:
    """Stripe took these rows' pending events: each one's cents move into `reported_cents`
    and its number is used up (one statement from the row ids; the rows are held by the
    caller, so what is pending is what was sent). The rows in memory must say the same
    (`reports_save` writes them whole instead)."""
    if not reports:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {StripeUsageReport._meta.db_table}
            SET reported_cents = reported_cents + pending_cents, events_sent = events_sent + 1,
                pending_identifier = '', pending_cents = NULL, pending_since = NULL,
                pending_timestamp = NULL, last_error = '', last_reported_at = %s
            WHERE id = ANY(%s::bigint[]) AND id BETWEEN %s AND %s
              AND pending_identifier <> ''
            """,
            [now, sql_array([r.id for r in reports]), *_id_range(reports)],
        )


def due_settle(pairs: Iterable[Pair], versions: dict[Pair, int | None]) -> None:
    """These user-months' changes up to the version read are decided: no longer due,
    unless they changed again meanwhile (a higher version stays). One statement."""
    keys = sorted(pair for pair in set(pairs) if versions.get(pair) is not None)
    if not keys:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            DELETE FROM {StripeReportDue._meta.db_table} d
            USING unnest(%s::text[], %s::date[], %s::bigint[]) AS v(user_id, month, version)
            WHERE d.user_id = v.user_id AND d.month = v.month AND d.version = v.version
            """,
            [
                sql_array([u for u, _ in keys], text=True),
                sql_array([m for _, m in keys]),
                sql_array([versions[k] for k in keys]),
            ],
        )
