"""Writing daily usage: validated, priced, idempotent, set-based, all or nothing.

`usage_upsert` is the one way usage rows are written (daily collection and the API both
use it). Per batch it runs a constant number of statements, whatever the batch size:

1. lock the rows of the batch that exist, in key order, and read their current figures;
2. price each record, and for prepaid users debit (or credit back) only the difference
   between the new cost and what the row has already taken from their balance (all of it
   for a new row);
3. insert the new rows with their final figures (`ON CONFLICT DO NOTHING`): each row is
   written once. A key a concurrent writer inserted first is skipped there, then locked
   and settled like an existing row;
4. write back the existing rows whose figures changed (a rerun rewrites nothing), and the
   credit movements, in the same transaction.

Step 1 locks in one global order (user, cluster, date) and step 3 makes concurrent writers
of the same new row queue behind one another on the unique index, so a rerun, a retry or
two collectors at once never count a day twice.

Between steps 2 and 3 the batch's rows of the monthly rollup (`usage_monthly`, one per user,
month, cluster and channel) are locked in one statement, in key order. The triggers that
keep the rollup exact lock its rows statement by statement, and steps 3 and 4 are two
statements: without this, two writers of the same user-months could each hold a rollup
row the other's next statement needs (a deadlock).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from billing import credits
from billing.alerts import cap_alerts_evaluate
from billing.models import NO_CLUSTER, BillingProfile, UsageDaily
from billing.pricing import FIGURES, MissingPrice, Quantities, RateBook, day_cost, quantize
from billing.selectors import billing_modes_on
from billing.standing import standing_check_later
from clusters.models import HopsworksCluster
from plumbing.actors import actor_label

ZERO = Decimal("0")
MAX_BATCH = 5000
# No user runs a billion CPU hours in a day: a bigger figure is a mistake, said so.
MAX_QUANTITY = Decimal("1000000000")


@dataclass(frozen=True)
class UsageRecord:
    """One user's usage on one cluster (or none) on one day. A figure left as None keeps
    the stored value (collection does not know API calls; a script may send only those)."""

    user_id: str
    date: dt.date
    cluster_id: object = None
    cpu_hours: Decimal | None = None
    gpu_hours: Decimal | None = None
    storage_gb_months: Decimal | None = None
    api_calls: int | None = None

    @property
    def key(self):
        return (self.user_id, self.cluster_id or NO_CLUSTER, self.date)


class UsageValidationError(Exception):
    """Bad records: nothing was written. `errors` maps a record's index to its problems."""

    def __init__(self, errors: dict[int, list[str]]):
        self.errors = errors
        first = next(iter(errors.items()))
        super().__init__(
            f"{len(errors)} record(s) rejected, nothing written; record {first[0]}: "
            + "; ".join(first[1])
        )


@dataclass
class UpsertResult:
    rows: int = 0
    credit_entries: int = 0
    debited: Decimal = ZERO
    negative_balances: list[str] = field(default_factory=list)


def _as_decimal(value, name: str, problems: list[str]) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        problems.append(f"{name} must be a decimal number written as a string or integer")
        return None
    try:
        number = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        problems.append(f"{name} is not a number: {value!r}")
        return None
    if not number.is_finite():
        problems.append(f"{name} must be a finite number")
        return None
    if number < 0:
        problems.append(f"{name} cannot be negative ({number})")
        return None
    if number > MAX_QUANTITY:
        problems.append(f"{name} is implausibly large ({number}); at most {MAX_QUANTITY:,}")
        return None
    return quantize(number)


def _as_count(value, problems: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        problems.append(f"api_calls must be a whole number, not {value!r}")
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        problems.append(f"api_calls is not a number: {value!r}")
        return None
    if number != number.to_integral_value():
        problems.append(f"api_calls must be a whole number ({value})")
        return None
    if not 0 <= number <= 2**31 - 1:
        problems.append(f"api_calls must be between 0 and {2**31 - 1} ({value})")
        return None
    return int(number)


def validate_records(records) -> list[UsageRecord]:
    """Clean every record or raise `UsageValidationError` naming each bad one."""
    if len(records) > MAX_BATCH:
        raise UsageValidationError({0: [f"at most {MAX_BATCH} records per batch"]})
    today = timezone.now().date()
    user_ids = {r.user_id for r in records if isinstance(r.user_id, str)}
    cluster_ids = {r.cluster_id for r in records if r.cluster_id}
    known_users = set(User.objects.filter(pk__in=user_ids).values_list("pk", flat=True))
    try:
        known_clusters = set(
            HopsworksCluster.objects.filter(pk__in=cluster_ids).values_list("pk", flat=True)
        )
    except Exception:  # a malformed UUID: reported per record below
        known_clusters = set()
    errors: dict[int, list[str]] = {}
    cleaned, seen = [], {}
    for index, record in enumerate(records):
        problems: list[str] = []
        if record.user_id not in known_users:
            problems.append(f"no user with id {record.user_id!r}")
        if not isinstance(record.date, dt.date):
            problems.append("date must be a date (YYYY-MM-DD)")
        elif record.date > today:
            problems.append(f"date {record.date} is in the future")
        if record.cluster_id and _uuid_or_none(record.cluster_id) not in known_clusters:
            problems.append(f"no cluster with id {record.cluster_id!r}")
        figures = {
            name: _as_decimal(getattr(record, name), name, problems)
            for name in ("cpu_hours", "gpu_hours", "storage_gb_months")
        }
        api_calls = _as_count(record.api_calls, problems)
        if not problems:
            clean = UsageRecord(
                user_id=record.user_id,
                date=record.date,
                cluster_id=_uuid_or_none(record.cluster_id),
                api_calls=api_calls,
                **figures,
            )
            if clean.key in seen:
                problems.append(f"same user, cluster and date as record {seen[clean.key]}")
            else:
                seen[clean.key] = index
                cleaned.append(clean)
        if problems:
            errors[index] = problems
    if errors:
        raise UsageValidationError(errors)
    return cleaned


def _uuid_or_none(value):
    if not value:
        return None
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return "invalid"


def usage_upsert(*, records, actor, validated: bool = False) -> UpsertResult:
    """Write usage records (see the module docstring). Bad input raises
    `UsageValidationError` and writes nothing; sending the same batch twice changes
    nothing the second time."""
    records = records if validated else validate_records(records)
    if not records:
        return UpsertResult()
    # Errors name a record by its place in the caller's list, not in the sorted copy.
    caller_index = {record.key: index for index, record in enumerate(records)}
    records = sorted(records, key=lambda r: (r.user_id, str(r.cluster_id or NO_CLUSTER), r.date))
    user_ids = {r.user_id for r in records}
    rates = RateBook.load(user_ids=user_ids)
    settle = _Settler(rates=rates, actor_name=actor_label(actor), caller_index=caller_index)

    with transaction.atomic():
        # The rollup rows first, then the usage rows: every writer takes them in that order.
        # Which rollup rows: a stored row's channel (read, not locked yet), a new row's
        # from the billing mode in force when its day began (existing rows keep the
        # channel they were first written with).
        stored = _lock_rows(records, lock=False)
        unstored = [r for r in records if r.key not in stored]
        channel = _channels(unstored)
        _lock_months(
            [
                (r.user_id, r.date, r.cluster_id, stored[r.key]["billed_via"])
                for r in records
                if r.key in stored
            ]
            + [(r.user_id, r.date, r.cluster_id, channel[(r.user_id, r.date)]) for r in unstored]
        )
        current = _lock_rows(records)
        new = [r for r in records if r.key not in current]
        if any((r.user_id, r.date) not in channel for r in new):  # deleted meanwhile
            channel.update(_channels(r for r in new if (r.user_id, r.date) not in channel))
        if new:
            fresh = {r.key: settle(r, _fresh_row(r, channel[(r.user_id, r.date)])) for r in new}
            inserted = _insert_new([fresh[r.key] for r in new])
            # Inserted meanwhile by a concurrent writer (who held it until they committed):
            # locked and settled like any existing row.
            late = [r for r in new if fresh[r.key].row["id"] not in inserted]
            if late:
                current.update(_lock_rows(late))
                _drop_empty_months({r.user_id for r in late})
        outcomes = [
            settle(record, current[record.key]) if record.key in current else fresh[record.key]
            for record in records
        ]
        updates = [o for o in outcomes if o.changed and not o.new]
        if updates:
            _write_rows([o.update for o in updates])
        _mark_stripe_months_due(
            o for o in outcomes if o.changed and o.row["billed_via"] == UsageDaily.BilledVia.STRIPE
        )
        changed = {o.user_id for o in outcomes if o.changed}
        entries = credits.credits_apply([o.movement for o in outcomes if o.movement])
        # Caps are checked where usage is settled, for the users whose cost moved.
        cap_alerts_evaluate(user_ids=changed, days={r.date for r in records})
        # Usage may take a user past their cap or below the floor (or back): judged by a
        # job, so collection and the usage API do not wait for it.
        standing_check_later(user_ids=user_ids)
    return UpsertResult(
        rows=len(records),
        credit_entries=len(entries),
        debited=sum((-e.amount for e in entries), ZERO),
        negative_balances=sorted({e.user_id for e in entries if e.balance_after < 0}),
    )


def _channels(records) -> dict:
    """(user id, day) -> the channel a new row of that day is settled on."""
    return {
        key: UsageDaily.BilledVia.CREDITS
        if mode == BillingProfile.Mode.PREPAID
        else UsageDaily.BilledVia.STRIPE
        for key, mode in billing_modes_on((r.user_id, r.date) for r in records).items()
    }


def _fresh_row(record: UsageRecord, billed_via: str) -> dict:
    """A row not written yet: zero figures, nothing debited, its id chosen here (a credit
    movement's reference names it)."""
    return {
        "id": uuid.uuid4(),
        "user_id": record.user_id,
        "hopsworks_cluster_id": record.cluster_id,
        "date": record.date,
        **dict.fromkeys(FIGURES, ZERO),
        "api_calls": 0,
        "total_cost": ZERO,
        "credits_debited": ZERO,
        "credit_revision": 0,
        "billed_via": billed_via,
        "new": True,
    }


@dataclass
class _Outcome:
    row: dict  # as stored (or, new, as fresh)
    figures: dict
    cost: Decimal
    debited: Decimal
    revision: int
    movement: credits.Movement | None
    changed: bool

    @property
    def new(self) -> bool:
        return self.row.get("new", False)

    @property
    def user_id(self) -> str:
        return self.row["user_id"]

    @property
    def update(self):
        return (self.row["id"], self.figures, self.cost, self.debited, self.revision)


@dataclass
class _Settler:
    """Prices a record against its row and decides the credit movement: what the row
    becomes, whether it is new or existed."""

    rates: RateBook
    actor_name: str
    caller_index: dict

    def __call__(self, record: UsageRecord, row: dict) -> _Outcome:
        figures = {
            name: getattr(record, name) if getattr(record, name) is not None else row[name]
            for name in FIGURES
        }
        try:
            cost = day_cost(
                Quantities(**figures),
                self.rates.rates(user_id=record.user_id, day=record.date),
            )
        except MissingPrice as error:
            raise UsageValidationError({self.caller_index[record.key]: [str(error)]}) from None
        debited, revision, movement = row["credits_debited"], row["credit_revision"], None
        # A row is settled the way it was first written: a day billed through Stripe
        # is never also taken from credits after a switch to prepaid, and back.
        if row["billed_via"] == UsageDaily.BilledVia.CREDITS and cost != debited:
            revision += 1
            movement = credits.Movement(
                user_id=record.user_id,
                kind=credits.Kind.USAGE,
                amount=debited - cost,
                reference=f"usage:{row['id']}:r{revision}",
                actor=self.actor_name,
                reason=f"usage on {record.date}",
                usage_id=row["id"],
                **_quantity_change(row, figures),
            )
            debited = cost
        unchanged = all(row[name] == figures[name] for name in FIGURES) and (
            row["total_cost"],
            row["credits_debited"],
            row["credit_revision"],
        ) == (cost, debited, revision)
        # A rerun rewrites nothing; a new row counts as changed (it is written).
        return _Outcome(row, figures, cost, debited, revision, movement, not unchanged)


def _quantity_change(row, figures) -> dict:
    # The quantities a usage movement pays for: what changed since the last debit.
    paid = row["credits_debited"] != 0 or row["credit_revision"] > 0
    return {
        name: figures[name] - (row[name] if paid else ZERO)
        for name in ("cpu_hours", "gpu_hours", "storage_gb_months")
    }


# Steps 1, 3 and 4 in PostgreSQL with array parameters: one statement per step whatever the
# batch size, with few parameters.


def _insert_new(outcomes: list[_Outcome]) -> set:
    """Insert new rows with their final figures, in key order; a key a concurrent writer
    inserted first is skipped (ON CONFLICT) and left out of the ids returned."""
    now = timezone.now()
    columns = list(
        zip(
            *[
                (
                    o.row["id"],
                    o.row["user_id"],
                    o.row["hopsworks_cluster_id"],
                    o.row["date"],
                    o.figures["cpu_hours"],
                    o.figures["gpu_hours"],
                    o.figures["storage_gb_months"],
                    o.figures["api_calls"],
                    o.cost,
                    o.debited,
                    o.revision,
                    o.row["billed_via"],
                )
                for o in outcomes
            ],
            strict=True,
        )
    )
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO usage_daily (id, user_id, hopsworks_cluster_id, date, cpu_hours,
                gpu_hours, storage_gb_months, api_calls, total_cost, credits_debited,
                credit_revision, billed_via, created_at, updated_at)
            SELECT k.*, %s, %s
            FROM unnest(%s::uuid[], %s::text[], %s::uuid[], %s::date[], %s::numeric[],
                        %s::numeric[], %s::numeric[], %s::integer[], %s::numeric[],
                        %s::numeric[], %s::integer[], %s::text[])
              AS k(id, user_id, cluster_id, date, cpu_hours, gpu_hours, storage_gb_months,
                   api_calls, total_cost, credits_debited, credit_revision, billed_via)
            ON CONFLICT DO NOTHING
            RETURNING id
            """,
            [now, now, *[list(column) for column in columns]],
        )
        return {row_id for (row_id,) in cursor}


def _mark_stripe_months_due(outcomes) -> None:
    """The user-months whose Stripe-billed usage changed are due for Stripe reporting
    (`StripeReportDue`), in the transaction that changes them."""
    due = sorted({(o.user_id, o.row["date"].replace(day=1)) for o in outcomes})
    if not due:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_stripe_report_due (user_id, month, version)
            SELECT k.user_id, k.month, 1 FROM unnest(%s::text[], %s::date[]) AS k(user_id, month)
            ON CONFLICT (user_id, month)
            DO UPDATE SET version = billing_stripe_report_due.version + 1
            """,
            [[user_id for user_id, _ in due], [month for _, month in due]],
        )


def _lock_months(keys) -> None:
    """Lock the rollup rows (`usage_monthly`) the batch's writes will change, in the key
    order the triggers use, in one statement: a missing one is inserted empty (the
    triggers fill it in this transaction). `ON CONFLICT ... DO UPDATE ... WHERE false`
    locks an existing row without writing it; row locks take no room in PostgreSQL's
    lock table, whatever the batch size."""
    keys = {
        (user_id, day.replace(day=1), cluster_id or NO_CLUSTER, via)
        for user_id, day, cluster_id, via in keys
    }
    if not keys:
        return
    columns = list(zip(*sorted(keys, key=str), strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO usage_monthly AS m (user_id, hopsworks_cluster_id, month, billed_via,
                cpu_hours, gpu_hours, storage_gb_months, api_calls, total_cost,
                credits_debited, days)
            SELECT k.user_id, NULLIF(k.cluster_key, %s::uuid), k.month, k.billed_via,
                   0, 0, 0, 0, 0, 0, 0
            FROM unnest(%s::text[], %s::date[], %s::uuid[], %s::text[])
              AS k(user_id, month, cluster_key, billed_via)
            ORDER BY k.user_id, k.month, k.cluster_key, k.billed_via
            ON CONFLICT (user_id, month, (COALESCE(hopsworks_cluster_id, %s::uuid)), billed_via)
            DO UPDATE SET days = m.days WHERE false
            """,
            [NO_CLUSTER, *[list(c) for c in columns], NO_CLUSTER],
        )


def _drop_empty_months(user_ids) -> None:
    """A row a concurrent writer inserted first may be on another channel than the one
    locked for it: the rollup row locked for nothing is removed."""
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM usage_monthly WHERE days = 0 AND user_id = ANY(%s)", [sorted(user_ids)]
        )


def _key_arrays(records):
    return (
        [r.user_id for r in records],
        [r.cluster_id for r in records],
        [r.date for r in records],
    )


_LOCKED_COLUMNS = (
    "id",
    "user_id",
    "hopsworks_cluster_id",
    "date",
    *FIGURES,
    "total_cost",
    "credits_debited",
    "credit_revision",
    "billed_via",
)


def _lock_rows(records, *, lock: bool = True) -> dict:
    """The batch's rows that exist, locked in key order (or only read, `lock=False`)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT {", ".join("u." + c for c in _LOCKED_COLUMNS)}
            FROM usage_daily u
            JOIN unnest(%s::text[], %s::uuid[], %s::date[]) AS k(user_id, cluster_id, date)
              ON u.user_id = k.user_id AND u.date = k.date
             AND COALESCE(u.hopsworks_cluster_id, %s::uuid)
               = COALESCE(k.cluster_id, %s::uuid)
            ORDER BY u.user_id, COALESCE(u.hopsworks_cluster_id, %s::uuid), u.date
            {"FOR UPDATE OF u" if lock else ""}
            """,  # noqa: S608 - column names are ours, values are parameters
            [*_key_arrays(records), NO_CLUSTER, NO_CLUSTER, NO_CLUSTER],
        )
        rows = [dict(zip(_LOCKED_COLUMNS, values, strict=True)) for values in cursor]
    return {(r["user_id"], r["hopsworks_cluster_id"] or NO_CLUSTER, r["date"]): r for r in rows}


def _write_rows(updates) -> None:
    now = timezone.now()
    columns = list(
        zip(
            *[
                (
                    row_id,
                    f["cpu_hours"],
                    f["gpu_hours"],
                    f["storage_gb_months"],
                    f["api_calls"],
                    cost,
                    debited,
                    revision,
                )
                for row_id, f, cost, debited, revision in updates
            ],
            strict=True,
        )
    )
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE usage_daily u
            SET cpu_hours = v.cpu_hours, gpu_hours = v.gpu_hours,
                storage_gb_months = v.storage_gb_months, api_calls = v.api_calls,
                total_cost = v.total_cost, credits_debited = v.credits_debited,
                credit_revision = v.credit_revision, updated_at = %s
            FROM unnest(%s::uuid[], %s::numeric[], %s::numeric[], %s::numeric[],
                        %s::integer[], %s::numeric[], %s::numeric[], %s::integer[])
              AS v(id, cpu_hours, gpu_hours, storage_gb_months, api_calls, total_cost,
                   credits_debited, credit_revision)
            WHERE u.id = v.id
              AND (u.cpu_hours, u.gpu_hours, u.storage_gb_months, u.api_calls,
                   u.total_cost, u.credits_debited, u.credit_revision)
                  IS DISTINCT FROM
                  (v.cpu_hours, v.gpu_hours, v.storage_gb_months, v.api_calls,
                   v.total_cost, v.credits_debited, v.credit_revision)
            """,
            [now, *[list(column) for column in columns]],
        )
