"""Writing daily usage: validated, priced, idempotent, set-based, all or nothing.

`usage_upsert` is the one way usage rows are written (daily collection and the API both
use it). Per batch it runs a constant number of statements, whatever the batch size:

1. insert the rows that do not exist yet, with zero figures (`ON CONFLICT DO NOTHING`);
2. lock every row of the batch, in key order, and read its current figures;
3. price each row, and for prepaid users debit (or credit back) only the difference
   between the new cost and what the row has already taken from their balance;
4. write the new figures back, and the credit movements, in the same transaction.

Step 1 makes concurrent writers of the same new row queue behind one another on the
unique index, and step 2 locks in one global order (user, cluster, date), so a rerun, a
retry or two collectors at once never count a day twice and never deadlock each other.
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
    actor_name = actor_label(actor)
    # A new row is settled on the mode in force when its day began (existing rows keep
    # the channel they were first written with).
    channel = {
        key: UsageDaily.BilledVia.CREDITS
        if mode == BillingProfile.Mode.PREPAID
        else UsageDaily.BilledVia.STRIPE
        for key, mode in billing_modes_on((r.user_id, r.date) for r in records).items()
    }

    with transaction.atomic():
        _insert_missing(records, channel)
        current = _lock_rows(records)
        updates, movements, changed = [], [], set()
        for record in records:
            row = current[record.key]
            figures = {
                name: getattr(record, name) if getattr(record, name) is not None else row[name]
                for name in FIGURES
            }
            try:
                cost = day_cost(
                    Quantities(**figures),
                    rates.rates(user_id=record.user_id, day=record.date),
                )
            except MissingPrice as error:
                raise UsageValidationError({caller_index[record.key]: [str(error)]}) from None
            debited, revision = row["credits_debited"], row["credit_revision"]
            # A row is settled the way it was first written: a day billed through Stripe
            # is never also taken from credits after a switch to prepaid, and back.
            if row["billed_via"] == UsageDaily.BilledVia.CREDITS and cost != debited:
                revision += 1
                movements.append(
                    credits.Movement(
                        user_id=record.user_id,
                        kind=credits.Kind.USAGE,
                        amount=debited - cost,
                        reference=f"usage:{row['id']}:r{revision}",
                        actor=actor_name,
                        reason=f"usage on {record.date}",
                        usage_id=row["id"],
                        **_quantity_change(row, figures),
                    )
                )
                debited = cost
            unchanged = all(row[name] == figures[name] for name in FIGURES) and (
                row["total_cost"],
                row["credits_debited"],
                row["credit_revision"],
            ) == (cost, debited, revision)
            if not unchanged:  # a rerun rewrites nothing
                updates.append((row["id"], figures, cost, debited, revision))
                changed.add(record.user_id)
        if updates:
            _write_rows(updates)
        entries = credits.credits_apply(movements)
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


def _quantity_change(row, figures) -> dict:
    # The quantities a usage movement pays for: what changed since the last debit.
    paid = row["credits_debited"] != 0 or row["credit_revision"] > 0
    return {
        name: figures[name] - (row[name] if paid else ZERO)
        for name in ("cpu_hours", "gpu_hours", "storage_gb_months")
    }


# Step 1-2 and 4 in PostgreSQL with array parameters: one statement per step whatever the
# batch size, with few parameters.


def _insert_missing(records, channel) -> None:
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO usage_daily (id, user_id, hopsworks_cluster_id, date, cpu_hours,
                gpu_hours, storage_gb_months, api_calls, total_cost, credits_debited,
                credit_revision, billed_via, created_at, updated_at)
            SELECT gen_random_uuid(), k.user_id, k.cluster_id, k.date, 0, 0, 0, 0, 0, 0, 0,
                k.billed_via, %s, %s
            FROM unnest(%s::text[], %s::uuid[], %s::date[], %s::text[])
              AS k(user_id, cluster_id, date, billed_via)
            ON CONFLICT DO NOTHING
            """,
            [now, now, *_key_arrays(records), [channel[(r.user_id, r.date)] for r in records]],
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


def _lock_rows(records) -> dict:
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
            FOR UPDATE OF u
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
