"""Spending alerts: 80 %, 90 % and 100 % of a postpaid user's monthly cap, and a prepaid
balance falling below the low-balance threshold (`SpendingAlert` says what a period is).

Evaluated where money moves, in the same transaction: after usage is written
(`usage_upsert`, used by the daily collection and the usage API) and after credit
movements (`credits_apply`), for the users concerned only, in a constant number of
queries. An alert is inserted with ON CONFLICT DO NOTHING on its unique key, and only the
transaction whose insert took effect queues its email (a job, deferred in the same
transaction): concurrent or repeated evaluations send each alert once.

Concurrent writers for one user are taken in turn (transaction-scoped advisory locks, one
per group of users, `_take_users_in_turn`) before month-to-date costs are read, so the
later one sees the earlier one's committed usage and a threshold crossed by the two
together is not missed.
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib
from decimal import Decimal

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import connection, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from billing.forecast import month_of
from billing.limits import money
from billing.models import BillingProfile, SpendingAlert, UsageDaily
from plumbing.db import sql_array

logger = logging.getLogger(__name__)
Kind = SpendingAlert.Kind
CAP_LEVELS = ((100, Kind.CAP_100), (90, Kind.CAP_90), (80, Kind.CAP_80))
# The email of a batch leads with the most pressing alert.
RANK = {Kind.LOW_BALANCE: 0, Kind.CAP_100: 1, Kind.CAP_90: 2, Kind.CAP_80: 3}
LOCK_CLASS = 13013  # the advisory-lock key space of spending alerts
TURNS = 512  # advisory locks in LOCK_CLASS that users are spread over (_take_users_in_turn)


def _turn(user_id: str) -> int:
    return zlib.crc32(user_id.encode()) % TURNS


def _take_users_in_turn(user_ids: list[str]) -> None:
    """Wait for the turns of these users, all in one statement, in turn order. A turn is
    one of TURNS advisory locks (a hash of the user id), not a lock per user: a cluster-day
    of 20,000 users is one transaction, and a lock each ran PostgreSQL's lock table (64 per
    connection by default) out of shared memory. Users sharing a turn just wait for each
    other. Taking them once per transaction, sorted, keeps two transactions from waiting
    for each other's turns (see `usage_upsert(check_caps=False)`)."""
    turns = sorted({_turn(user_id) for user_id in user_ids})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, t) FROM unnest(%s::integer[]) AS t",
            [LOCK_CLASS, sql_array(turns)],
        )


def cap_alerts_evaluate(*, user_ids, days=()) -> list[int]:
    """Cap alerts for postpaid users: for the current UTC month, and for the month before
    when `days` (the days just written) include one of it. Returns the new alerts' ids."""
    user_ids = sorted(set(user_ids))
    if not user_ids:
        return []
    today = timezone.now().date()
    current = month_of(today)[0]
    previous = month_of(current - dt.timedelta(days=1))[0]
    months = [current] + ([previous] if any(previous <= day < current for day in days) else [])
    _take_users_in_turn(user_ids)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT k.user_id, m.month, SUM(u.total_cost),
                   COALESCE(p.monthly_spending_cap, %s::numeric)
            FROM unnest(%s::text[]) AS k(user_id)
            CROSS JOIN unnest(%s::date[]) AS m(month)
            LEFT JOIN billing_account p ON p.user_id = k.user_id
            JOIN usage_monthly u ON u.user_id = k.user_id AND u.billed_via = %s
             AND u.month = m.month
            WHERE COALESCE(p.mode, %s) = %s
            GROUP BY k.user_id, m.month, p.monthly_spending_cap
            HAVING SUM(u.total_cost) > 0
               AND SUM(u.total_cost) * 100 >= COALESCE(p.monthly_spending_cap, %s::numeric) * %s
            """,
            [
                Decimal(str(settings.SPENDING_CAP_DEFAULT)),
                sql_array(user_ids, text=True),
                sql_array(months),
                UsageDaily.BilledVia.STRIPE,
                BillingProfile.Mode.POSTPAID,
                BillingProfile.Mode.POSTPAID,
                # Only the months past the lowest level come back (a usage batch asks for
                # thousands of users, most far below their cap).
                Decimal(str(settings.SPENDING_CAP_DEFAULT)),
                min(percent for percent, _ in CAP_LEVELS),
            ],
        )
        rows = []
        for user_id, month, total, cap in cursor.fetchall():
            if total <= 0:
                continue
            for percent, kind in CAP_LEVELS:
                if total * 100 >= cap * percent:
                    rows.append((user_id, kind, f"{month:%Y-%m}", total, cap))
    return _insert(rows)


def low_balance_alerts_evaluate(*, user_ids) -> list[int]:
    """Low-balance alerts for prepaid users whose balance is below their threshold, once
    per crossing. Returns the new alerts' ids."""
    user_ids = sorted(set(user_ids))
    if not user_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH s AS (
                SELECT c.user_id, c.total_purchased - c.total_used AS balance,
                       COALESCE(p.low_balance_threshold, %s::numeric) AS threshold
                FROM user_credits c
                JOIN billing_account p ON p.user_id = c.user_id AND p.mode = %s
                WHERE c.user_id = ANY(%s::text[])
            )
            SELECT s.user_id, s.balance, s.threshold,
                   COALESCE((SELECT max(e.id) FROM billing_credit_ledger e
                             WHERE e.user_id = s.user_id AND e.balance_after >= s.threshold), 0)
            FROM s WHERE s.balance < s.threshold
            """,
            [
                Decimal(str(settings.LOW_BALANCE_THRESHOLD_DEFAULT)),
                BillingProfile.Mode.PREPAID,
                sql_array(user_ids, text=True),
            ],
        )
        rows = [
            (user_id, Kind.LOW_BALANCE, f"since-{armed_by}", balance, threshold)
            for user_id, balance, threshold, armed_by in cursor.fetchall()
        ]
    return _insert(rows)


def spending_alerts_evaluate(*, user_ids) -> list[int]:
    """Both kinds, for the current month (after a change of the limits themselves).
    The low balance first: it takes no lock, so it never waits for a collection while
    holding the user's turn that collection is waiting for."""
    low = low_balance_alerts_evaluate(user_ids=user_ids)
    return low + cap_alerts_evaluate(user_ids=user_ids)


def _insert(rows) -> list[int]:
    """Insert the alerts not inserted before (by anyone); queue the email of the new ones."""
    if not rows:
        return []
    columns = list(zip(*rows, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_spending_alert
                (user_id, kind, period, amount, limit_amount, created_at, attempts, error)
            SELECT a.user_id, a.kind, a.period, a.amount, a.limit_amount, %s, 0, ''
            FROM unnest(%s::text[], %s::text[], %s::text[], %s::numeric[], %s::numeric[])
              AS a(user_id, kind, period, amount, limit_amount)
            ON CONFLICT (user_id, kind, period) DO NOTHING
            RETURNING id
            """,
            [
                timezone.now(),
                *[sql_array(column, text=i < 3) for i, column in enumerate(columns)],
            ],
        )
        new = sorted(row[0] for row in cursor.fetchall())
    if new:
        from billing.tasks import spending_alerts_send_defer

        spending_alerts_send_defer(alert_ids=new)
    return new


# Sending ---------------------------------------------------------------------------------


def _email(user, alerts: list[SpendingAlert], page_url: str) -> EmailMessage:
    """One email per user and batch: the highest cap level reached (lower ones reached at
    the same time are said with it), or the low balance."""
    top = alerts[0]
    if top.kind == Kind.LOW_BALANCE:
        subject = f"Your credit balance is low: {money(top.amount)}"
        body = (
            f"Your prepaid credit balance is {money(top.amount)}, below your low-balance "
            f"threshold of {money(top.limit_amount)}.\n\n"
            "What you can do:\n"
            f"- Buy credits on your account page: {page_url}\n"
            f"- If the balance falls below {money(Decimal(str(settings.PREPAID_BALANCE_FLOOR)))},"
            " your service is stopped until you top up.\n"
            "- Change the threshold for this warning on the same page.\n"
        )
    else:
        percent = {Kind.CAP_80: 80, Kind.CAP_90: 90, Kind.CAP_100: 100}[top.kind]
        subject = (
            f"You have reached your monthly spending cap of {money(top.limit_amount)}"
            if percent == 100
            else f"You have used {percent}% of your monthly spending cap"
        )
        body = (
            f"Your usage in {top.period} has cost {money(top.amount)} so far: {percent}% or "
            f"more of your monthly spending cap of {money(top.limit_amount)}.\n\n"
            "What you can do:\n"
            f"- See your usage and the month's projected cost on your account page: "
            f"{page_url}\n"
            "- Raise your monthly spending cap on the same page (within your limit), or "
            "reduce your usage.\n"
            + (
                "- Over the cap your service may be stopped until the next month or until "
                "the cap is raised.\n"
                if percent == 100
                else ""
            )
        )
    return EmailMessage(subject=subject, body=body, to=[user.email])


def spending_alerts_send(*, alert_ids: list[int]) -> tuple[int, list[str]]:
    """Email the given alerts not sent yet. Each row is locked while its email goes out
    (skipping rows another worker holds), so a retried job never sends one twice. Returns
    (emails sent, errors); a failed email keeps its alert unsent with the error, for the
    job's retry."""
    page_url = settings.CONSOLE_URL.rstrip("/") + reverse("home")
    sent, errors = 0, []
    with transaction.atomic():
        alerts = list(
            SpendingAlert.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk__in=alert_ids, sent_at__isnull=True)
            .select_related("user")
            .order_by("user_id", "id")
        )
        by_user: dict[str, list[SpendingAlert]] = {}
        for alert in alerts:
            by_user.setdefault(alert.user_id, []).append(alert)
        for group in by_user.values():
            group.sort(key=lambda a: RANK[a.kind])
            user = group[0].user
            ids = [a.pk for a in group]
            try:
                _email(user, group, page_url).send(fail_silently=False)
            except Exception as error:  # SMTP, DNS, refused recipient: retried by the job
                message = f"{type(error).__name__}: {error}"[:500]
                errors.append(f"{user.email}: {message}")
                SpendingAlert.objects.filter(pk__in=ids).update(
                    attempts=F("attempts") + 1, error=message
                )
                continue
            SpendingAlert.objects.filter(pk__in=ids).update(
                sent_at=timezone.now(), error="", attempts=F("attempts") + 1
            )
            sent += 1
    return sent, errors
