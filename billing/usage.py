"""Writing daily usage: validated, priced, idempotent, set-based, all or nothing.

`usage_upsert` is the one way usage rows are written (daily collection and the API both
use it). Per batch it runs a constant number of statements, whatever the batch size:

1. read the rows of the batch that exist (records of days with no usage stored at all
   are not looked up: one probe per day), then lock, in key order, and read again only
   those the batch changes (a rerun locks nothing);
2. price each record (`pricing.cost_of`, the rates of a day looked up once); a new row is
   priced and settled from the record alone (its figures, its billing mode on
   the day, the whole cost debited for a prepaid day), an existing one against what it
   holds: for prepaid users only the difference between the new cost and what the row has
   already taken from their balance is debited (or credited back);
3. insert the new rows with their final figures: each row is written once. A plain
   COPY under the batch's turns, each row sent as it is priced; if a writer outside the
   turns took a key first, the COPY is rolled back to its savepoint and redone with
   `ON CONFLICT DO NOTHING`, and the key taken is then locked and settled like an
   existing row;
4. write back the existing rows whose figures changed (a rerun rewrites nothing), mark
   the Stripe months whose usage changed as due, apply the credit movements
   (`credits.credits_apply_batch`: ledger entries and balances set-based) and check the
   caps of the users whose cost moved, in the same transaction.

Step 1 locks in one global order (user, cluster, date) and step 3 makes concurrent writers
of the same new row queue behind one another on the unique index, so a rerun, a retry or
two collectors at once never count a day twice.

Records travel as tuples and arrays go to PostgreSQL as one literal each
(`plumbing.db.sql_array`): a batch is thousands of records, and per-record objects and
per-element parameter quoting were most of its cost (bench/README.md, issue 16).

Before step 1 the batch waits for the turns of its cluster-months (an advisory lock each,
`_take_cluster_months`). The triggers that keep the rollups (`usage_monthly`,
`usage_cluster_daily`) exact lock their rows statement by statement, and steps 3 and 4 are
two statements: without turns, two writers of the same user-months could each hold a
rollup row the other's next statement needs (a deadlock). Turns, rather than locking the
rollup rows up front, keep the rollups' rows written once per statement and let the
upsert lock usage rows before rollup rows, as every other writer of usage_daily does.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
import zlib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from itertools import compress

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing import credits
from billing.alerts import cap_alerts_evaluate
from billing.models import NO_CLUSTER, BillingProfile, UsageDaily
from billing.pricing import FIGURES, MissingPrice, RateBook, cost_of, quantize
from billing.selectors import billing_modes_on
from billing.standing import standing_check_later
from plumbing.actors import actor_label
from plumbing.db import sql_array
from plumbing.formatting import money

ZERO = Decimal("0")
MAX_BATCH = 5000
# No user runs a billion CPU hours in a day: a bigger figure is a mistake, said so.
MAX_QUANTITY = Decimal("1000000000")
MAX_CALLS = 2**31 - 1
# Nor does a user's day on a cluster cost a million dollars: a record priced above this is
# refused (by its index) as a mistake, before anything is written; it is also the largest
# single movement the credit ledger takes (`credits.MAX_SINGLE_MOVEMENT`), which a prepaid
# day's debit would otherwise hit in the middle of the batch.
MAX_ROW_COST = credits.MAX_SINGLE_MOVEMENT
PREPAID = BillingProfile.Mode.PREPAID


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
    # With check_caps=False: the caps the caller checks (`cap_alerts_evaluate`).
    cost_moved: set[str] = field(default_factory=set)
    days: set[dt.date] = field(default_factory=set)


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


# A record inside the service: (user_id, cluster_id, date, cpu_hours, gpu_hours,
# storage_gb_months, api_calls), figures cleaned (None: keep the stored one). Tuples, not
# UsageRecords: a batch is thousands of them, and each object costs (issue 16). The
# cluster id is its canonical text (or None): a `uuid.UUID` hashes in Python and is turned
# into text for every array, thousands of times a batch; the text of a UUID sorts as
# PostgreSQL sorts the UUIDs.
_USER, _CLUSTER, _DATE, _CPU, _GPU, _STORAGE, _CALLS = range(7)
_NO_CLUSTER = str(NO_CLUSTER)


def _key(row: tuple) -> tuple:
    return (row[_USER], row[_CLUSTER] or _NO_CLUSTER, row[_DATE])


def validate_records(records) -> list[UsageRecord]:
    """Clean every record or raise `UsageValidationError` naming each bad one."""
    return [UsageRecord(*row) for row in _clean(records)]


def _clean(records) -> list[tuple]:
    if len(records) > MAX_BATCH:
        raise UsageValidationError({0: [f"at most {MAX_BATCH} records per batch"]})
    today = timezone.now().date()
    user_ids = sorted({r.user_id for r in records if isinstance(r.user_id, str)})
    cluster_ids = {r.cluster_id for r in records if r.cluster_id}
    known_users = _existing(
        "SELECT id FROM users WHERE id = ANY(%s::text[])", sql_array(user_ids, text=True)
    )
    clusters = {value: _uuid_or_none(value) for value in cluster_ids}
    known_clusters = _existing(
        "SELECT id FROM hopsworks_clusters WHERE id = ANY(%s::uuid[])",
        sql_array(sorted({c for c in clusters.values() if c != "invalid"}, key=str)),
    )
    cluster_text = {value: str(c) for value, c in clusters.items() if c in known_clusters}
    errors: dict[int, list[str]] = {}
    cleaned, seen = [], {}
    for index, record in enumerate(records):
        problems: list[str] = []
        user_id, day, cluster_id = record.user_id, record.date, record.cluster_id
        if user_id not in known_users:
            problems.append(f"no user with id {user_id!r}")
        if not isinstance(day, dt.date):
            problems.append("date must be a date (YYYY-MM-DD)")
        elif day > today:
            problems.append(f"date {day} is in the future")
        if cluster_id:
            cluster_id = cluster_text.get(cluster_id)
            if cluster_id is None:
                problems.append(f"no cluster with id {record.cluster_id!r}")
        else:
            cluster_id = None
        cpu, gpu, storage = record.cpu_hours, record.gpu_hours, record.storage_gb_months
        # The common case (a Decimal in range) checked inline: thousands a batch.
        if type(cpu) is Decimal and cpu.is_finite() and ZERO <= cpu <= MAX_QUANTITY:
            cpu = quantize(cpu)
        else:
            cpu = _as_decimal(cpu, "cpu_hours", problems)
        if type(gpu) is Decimal and gpu.is_finite() and ZERO <= gpu <= MAX_QUANTITY:
            gpu = quantize(gpu)
        else:
            gpu = _as_decimal(gpu, "gpu_hours", problems)
        if type(storage) is Decimal and storage.is_finite() and ZERO <= storage <= MAX_QUANTITY:
            storage = quantize(storage)
        else:
            storage = _as_decimal(storage, "storage_gb_months", problems)
        calls = record.api_calls
        if calls is not None and (type(calls) is not int or not 0 <= calls <= MAX_CALLS):
            calls = _as_count(calls, problems)
        if not problems:
            row = (user_id, cluster_id, day, cpu, gpu, storage, calls)
            key = _key(row)
            if key in seen:
                problems.append(f"same user, cluster and date as record {seen[key]}")
            else:
                seen[key] = index
                cleaned.append(row)
        if problems:
            errors[index] = problems
    if errors:
        raise UsageValidationError(errors)
    return cleaned


def _existing(query: str, ids: str) -> set:
    with connection.cursor() as cursor:
        cursor.execute(query, [ids])
        return {value for (value,) in cursor.fetchall()}


def _uuid_or_none(value):
    if not value:
        return None
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return "invalid"


def usage_upsert(
    *, records, actor, validated: bool = False, check_caps: bool = True
) -> UpsertResult:
    """Write usage records (see the module docstring). Bad input raises
    `UsageValidationError` and writes nothing; sending the same batch twice changes
    nothing the second time.

    `check_caps=False` is for a caller writing several batches in one transaction (the
    collector): it checks the caps of the result's `cost_moved` users once, after the last
    batch, so the transaction takes its users' turns once (`billing.alerts`)."""
    rows = (
        [
            (
                r.user_id,
                str(r.cluster_id) if r.cluster_id else None,
                r.date,
                r.cpu_hours,
                r.gpu_hours,
                r.storage_gb_months,
                r.api_calls,
            )
            for r in records
        ]
        if validated
        else _clean(records)
    )
    if not rows:
        return UpsertResult()
    # Errors name a record by its place in the caller's list, not in the sorted copy.
    caller_index = {_key(row): index for index, row in enumerate(rows)}
    rows.sort(key=_key)  # (user, cluster, date): the order rows are locked in
    user_ids = sorted({r[_USER] for r in rows})
    rates = RateBook.load(user_ids=user_ids)
    settle = _Settler(rates=rates, actor_name=actor_label(actor), caller_index=caller_index)

    with transaction.atomic():
        # Writers of the same cluster-months take turns, before any row lock (see
        # `_take_cluster_months`).
        _take_cluster_months(rows)
        stored = _lock_rows(_on_days_with_usage(rows), lock=False)
        unstored, moving, kept = rows, [], set()
        if stored:
            unstored = []
            for r in rows:
                row = stored.get(key := _key(r))
                if row is None:
                    unstored.append(r)
                elif settle(r, row).changed:
                    moving.append(r)
                else:
                    # Holds the figures already: left unlocked and unwritten (see below).
                    kept.add(key)
        modes = billing_modes_on((r[_USER], r[_DATE]) for r in unstored)
        # Only the rows that change are locked (in key order) and read again: settled
        # against what they hold then, should a writer outside the turns have changed
        # them since the read above. A row left as it was is not locked: a change an
        # outside writer makes to it meanwhile is simply ordered after this upsert (each
        # row is settled on its own), and a rerun waits for no one. A row not stored (or
        # deleted meanwhile) goes to the insert, whose conflict handling meets a row a
        # concurrent writer commits meanwhile.
        current = _lock_rows(moving) if moving else {}
        new = (
            [r for r in rows if (key := _key(r)) not in current and key not in kept]
            if current or kept
            else rows
        )
        fresh = _Fresh()
        if new:
            missing = {(r[_USER], r[_DATE]) for r in new} - modes.keys()
            if missing:  # deleted meanwhile
                modes.update(billing_modes_on(missing))
            # Each row is priced as the COPY takes it: PostgreSQL inserts the rows sent so
            # far while the next ones are priced (`_insert_new`).
            fresh = _Fresh()
            inserted = _insert_new(fresh, settle.new_rows(new, modes, into=fresh))
            if len(inserted) < len(new):
                # Inserted meanwhile by a concurrent writer (who held it until they
                # committed): locked and settled like any existing row.
                late = [
                    r for r, row_id in zip(new, fresh.ids, strict=True) if row_id not in inserted
                ]
                current.update(_lock_rows(late))
                fresh = fresh.only(inserted)
        outcomes = [
            settle(r, row) for r in rows if current and (row := current.get(_key(r))) is not None
        ]
        updates = [o for o in outcomes if o.changed]
        if updates:
            _write_rows([o.update for o in updates])
        _mark_stripe_months_due(
            [
                (o.user_id, o.row["date"])
                for o in updates
                if o.row["billed_via"] == UsageDaily.BilledVia.STRIPE
            ]
            + fresh.stripe_changed
        )
        changed = {o.user_id for o in updates} | fresh.changed_users
        # The new rows' first debits name rows inserted just now: never applied before.
        entries = credits.credits_apply_batch(
            [o.movement for o in outcomes if o.movement], new=fresh.movements
        )
        days = {r[_DATE] for r in rows}
        if check_caps:
            # Caps are checked where usage is settled, for the users whose cost moved.
            cap_alerts_evaluate(user_ids=changed, days=days)
        # Usage may take a user past their cap or below the floor (or back): judged by a
        # job, so collection and the usage API do not wait for it.
        standing_check_later(user_ids=user_ids)
    return UpsertResult(
        rows=len(rows),
        credit_entries=len(entries),
        debited=sum((-e.amount for e in entries), ZERO),
        negative_balances=sorted({e.user_id for e in entries if e.balance_after < 0}),
        cost_moved=set() if check_caps else changed,
        days=set() if check_caps else days,
    )


class _Fresh:
    """New rows, priced and settled, a tuple each as `_insert_new` writes them (in the
    order of `COLUMNS`); their credit movements; and which of them change anything (a row
    of zeros is written, but moves no money and is due nowhere)."""

    COLUMNS = (
        "id",
        "user_id",
        "cluster_id",
        "date",
        "cpu_hours",
        "gpu_hours",
        "storage_gb_months",
        "api_calls",
        "total_cost",
        "credits_debited",
        "credit_revision",
        "billed_via",
    )

    def __init__(self):
        self.rows: list[tuple] = []
        self.changed: list[bool] = []
        self.movements: list[credits.Movement] = []

    @property
    def ids(self) -> list:
        return [row[0] for row in self.rows]

    def column(self, index: int) -> list:
        return [row[index] for row in self.rows]

    def only(self, inserted: set) -> _Fresh:
        """The rows that were inserted (a concurrent writer inserted the others first)."""
        keep = [row[0] in inserted for row in self.rows]
        kept = _Fresh()
        kept.rows = list(compress(self.rows, keep))
        kept.changed = list(compress(self.changed, keep))
        kept.movements = [m for m in self.movements if m.usage_id in inserted]
        return kept

    def _changed(self, column: int):
        return compress(self.column(column), self.changed)

    @property
    def changed_users(self) -> set:
        return set(self._changed(1))

    @property
    def stripe_changed(self) -> list[tuple]:
        stripe = UsageDaily.BilledVia.STRIPE
        return [
            (user_id, day)
            for user_id, day, via in zip(
                self._changed(1), self._changed(3), self._changed(11), strict=True
            )
            if via == stripe
        ]


@dataclass
class _Outcome:
    row: dict  # as stored
    figures: dict
    cost: Decimal
    debited: Decimal
    revision: int
    movement: credits.Movement | None
    changed: bool

    @property
    def user_id(self) -> str:
        return self.row["user_id"]

    @property
    def update(self):
        return (self.row["id"], self.figures, self.cost, self.debited, self.revision)


@dataclass
class _Settler:
    """Prices records and decides their credit movements: new rows all at once
    (`new_rows`), a row that exists against what it holds (a call)."""

    rates: RateBook
    actor_name: str
    caller_index: dict

    def _cost(self, row: tuple, figures) -> Decimal:
        try:
            cost = cost_of(*figures, self.rates.rates(user_id=row[_USER], day=row[_DATE]))
        except MissingPrice as error:
            raise UsageValidationError({self.caller_index[_key(row)]: [str(error)]}) from None
        if cost > MAX_ROW_COST:
            self._too_costly(row, cost)
        return cost

    def _too_costly(self, row: tuple, cost: Decimal):
        raise UsageValidationError(
            {
                self.caller_index[_key(row)]: [
                    f"one day of this usage costs {money(cost)}, over the {money(MAX_ROW_COST)} "
                    "a user's day on a cluster may cost: check the quantities"
                ]
            }
        )

    def new_rows(self, rows: list[tuple], modes: dict, *, into: _Fresh):
        """Rows not written yet, priced and settled one at a time: each is added to `into`
        (with its movement) and yielded, so the caller can send it on at once. Their ids
        are chosen here (a movement's reference names the row), figures not given are
        zero, and the whole cost is debited for a prepaid day. A new row is settled on the
        mode in force when its day began (existing rows keep the channel they were first
        written with)."""
        fresh = into
        changed, movements = fresh.changed, fresh.movements
        written = fresh.rows
        credits_via, stripe_via = UsageDaily.BilledVia.CREDITS, UsageDaily.BilledVia.STRIPE
        # Looked up once, not per row: thousands of rows a batch (issue 16).
        usage_kind, actor_name, rates_on = credits.Kind.USAGE, self.actor_name, self.rates.rates
        ids = _new_ids(len(rows))
        for row in rows:
            user_id, cluster_id, day, cpu, gpu, storage, calls = row
            figures = (
                ZERO if cpu is None else cpu,
                ZERO if gpu is None else gpu,
                ZERO if storage is None else storage,
                0 if calls is None else calls,
            )
            try:
                cost = cost_of(*figures, rates_on(user_id=user_id, day=day))
            except MissingPrice as error:
                raise UsageValidationError({self.caller_index[_key(row)]: [str(error)]}) from None
            if cost > MAX_ROW_COST:
                self._too_costly(row, cost)
            row_id = next(ids)
            if modes[(user_id, day)] == PREPAID:
                via, debited, revision = credits_via, ZERO, 0
                if cost != ZERO:
                    revision = 1
                    movements.append(
                        credits.Movement(
                            user_id=user_id,
                            kind=usage_kind,
                            amount=-cost,
                            reference=f"usage:{row_id}:r1",
                            actor=actor_name,
                            reason=f"usage on {day}",
                            usage_id=row_id,
                            # Nothing was paid for this row yet: all of its quantities.
                            cpu_hours=figures[0],
                            gpu_hours=figures[1],
                            storage_gb_months=figures[2],
                        )
                    )
                    debited = cost
            else:
                via, debited, revision = stripe_via, ZERO, 0
            priced = (row_id, user_id, cluster_id, day, *figures, cost, debited, revision, via)
            written.append(priced)
            # A row of zeros (nothing used) is written but changes nothing.
            changed.append(any(figures))
            yield priced

    def __call__(self, record: tuple, row: dict) -> _Outcome:
        given = dict(zip(FIGURES, record[_CPU:], strict=True))
        figures = {name: given[name] if given[name] is not None else row[name] for name in FIGURES}
        cost = self._cost(record, figures.values())
        debited, revision, movement = row["credits_debited"], row["credit_revision"], None
        # A row is settled the way it was first written: a day billed through Stripe
        # is never also taken from credits after a switch to prepaid, and back.
        if row["billed_via"] == UsageDaily.BilledVia.CREDITS and cost != debited:
            revision += 1
            movement = credits.Movement(
                user_id=record[_USER],
                kind=credits.Kind.USAGE,
                amount=debited - cost,
                reference=f"usage:{row['id']}:r{revision}",
                actor=self.actor_name,
                reason=f"usage on {record[_DATE]}",
                usage_id=row["id"],
                **_quantity_change(row, figures),
            )
            debited = cost
        unchanged = all(row[name] == figures[name] for name in FIGURES) and (
            row["total_cost"],
            row["credits_debited"],
            row["credit_revision"],
        ) == (cost, debited, revision)
        # A rerun rewrites nothing.
        return _Outcome(row, figures, cost, debited, revision, movement, not unchanged)


def _new_ids(count: int):
    """Time-ordered (version 7, RFC 9562) UUIDs as text, for many rows at once: the Unix
    time in milliseconds, a 12-bit counter within the batch (the millisecond moves on
    every 4,096 ids, as the RFC allows), then 62 random bits (one call to the OS for all
    of them, no UUID object per row). New rows then land at the right edge of the primary
    key's index, not on a random leaf page each: at 9 million rows a quarter of a
    cluster-day's insert time and of its full-page images (issue 16, bench/README.md).
    Still unique without coordination: writers in the same millisecond differ in the
    random bits."""
    start = time.time_ns() // 1_000_000
    random = os.urandom(8 * count).hex()
    ids = []
    append = ids.append
    # The time part is formatted once per 4,096 ids, the counter part taken from a table.
    for base in range(0, count, 4096):
        moment = f"{start + (base >> 12):012x}"
        prefix = f"{moment[:8]}-{moment[8:]}-"
        for index in range(base, min(base + 4096, count)):
            h = random[16 * index : 16 * index + 16]
            append(f"{prefix}{_COUNTER[index & 0xFFF]}-{_VARIANT[h[0]]}{h[1:4]}-{h[4:]}")
    return iter(ids)


# The variant bits (10xx) in the first hex digit of the fourth group, as RFC 4122 says.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
# The version (7) and the 12-bit counter: the third group.
_COUNTER = [f"7{counter:03x}" for counter in range(4096)]


def _quantity_change(row, figures) -> dict:
    # The quantities a usage movement pays for: what changed since the last debit.
    paid = row["credits_debited"] != 0 or row["credit_revision"] > 0
    return {
        name: figures[name] - (row[name] if paid else ZERO)
        for name in ("cpu_hours", "gpu_hours", "storage_gb_months")
    }


# Steps 1, 3 and 4 in PostgreSQL with array parameters: one statement per step whatever the
# batch size, each array one literal (`sql_array`).

_TEXT_COLUMNS = {"user_id", "billed_via"}


def _insert_new(fresh: _Fresh, priced) -> set:
    """Insert new rows with their final figures, in key order: `priced` yields them as
    they are priced (and adds them to `fresh`). Returns the ids inserted.

    The rows are sent as they come: PostgreSQL inserts the rows received (their index
    entries, checks) while the next ones are priced here, instead of after all of them
    were (about 5 % of a batch of new rows, paired: bench/README.md, "ninth pass").

    A plain COPY first, in a savepoint: the writer holds its cluster-months' turns, so no
    other upsert inserts these keys. COPY fills the heap a page at a time (one WAL record
    a page, not a row; the indexes still take an entry a row) with no array literal to
    parse, and skips ON CONFLICT's speculative insertion (a probe and a confirmation
    record per row: 0.92 s against 0.75 s for 90,000 rows, bench/README.md). A writer
    outside the turns (an operator's SQL) may still have taken a key: the COPY then fails
    on it (after waiting for that writer, as ON CONFLICT would), is rolled back to the
    savepoint, and the rows go in again with `INSERT ... ON CONFLICT DO NOTHING`, the key
    taken skipped (and then locked and settled like a stored row by the caller)."""
    now = timezone.now()
    try:
        with (
            transaction.atomic(),
            connection.cursor() as cursor,
            # psycopg's errors as Django's (IntegrityError), as `execute` raises them.
            connection.wrap_database_errors,
            cursor.copy(_COPY_NEW) as copy,
        ):
            # Sent as it is formatted: PostgreSQL reads the rows meanwhile.
            write_row = copy.write_row
            for row in priced:
                write_row((*row, now, now))
        return set(fresh.ids)
    except IntegrityError as error:
        if getattr(error.__cause__, "diag", None) is None or (
            error.__cause__.diag.constraint_name != KEY_CONSTRAINT
        ):
            raise
    # Priced in full, should the COPY have stopped taking rows before the last.
    for _ in priced:
        pass
    arrays = [
        sql_array(fresh.column(index), text=name in _TEXT_COLUMNS)
        for index, name in enumerate(_Fresh.COLUMNS)
    ]
    with connection.cursor() as cursor:
        # The conflict is looked for on the key's index alone: the ids are new UUIDs with
        # 62 random bits (a check of the primary key too cost an index probe per row).
        cursor.execute(
            _INSERT_NEW
            + "ON CONFLICT (user_id, (COALESCE(hopsworks_cluster_id, %s::uuid)), date) DO NOTHING",
            [now, now, *arrays, NO_CLUSTER],
        )
        if cursor.rowcount == len(fresh.ids):
            return set(fresh.ids)
        # Some keys were taken: the ids chosen here that made it in are ours (ids are
        # random, no one else has them).
        cursor.execute("SELECT id::text FROM usage_daily WHERE id = ANY(%s::uuid[])", [arrays[0]])
        return {row_id for (row_id,) in cursor.fetchall()}


# The unique index on (user, cluster or none, day) that a second row for a key breaks.
KEY_CONSTRAINT = "usage_daily_one_row_per_user_cluster_day"
_COPY_NEW = (
    "COPY usage_daily (id, user_id, hopsworks_cluster_id, date, cpu_hours, gpu_hours,"
    " storage_gb_months, api_calls, total_cost, credits_debited, credit_revision,"
    " billed_via, created_at, updated_at) FROM STDIN"
)
_INSERT_NEW = """
    INSERT INTO usage_daily (id, user_id, hopsworks_cluster_id, date, cpu_hours,
        gpu_hours, storage_gb_months, api_calls, total_cost, credits_debited,
        credit_revision, billed_via, created_at, updated_at)
    SELECT k.*, %s, %s
    FROM unnest(%s::uuid[], %s::text[], %s::uuid[], %s::date[], %s::numeric[],
                %s::numeric[], %s::numeric[], %s::integer[], %s::numeric[],
                %s::numeric[], %s::integer[], %s::text[])
      AS k(id, user_id, cluster_id, date, cpu_hours, gpu_hours, storage_gb_months,
           api_calls, total_cost, credits_debited, credit_revision, billed_via)
    """


def _mark_stripe_months_due(user_days) -> None:
    """The user-months whose Stripe-billed usage changed are due for Stripe reporting
    (`StripeReportDue`), in the transaction that changes them."""
    user_days = list(user_days)
    # A batch's days are a handful: each day's month worked out once, not per row.
    month_of = {day: day.replace(day=1) for day in {day for _, day in user_days}}
    due = sorted({(user_id, month_of[day]) for user_id, day in user_days})
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
            [
                sql_array([user_id for user_id, _ in due], text=True),
                sql_array([month for _, month in due]),
            ],
        )


# The advisory-lock key space of usage writers' turns (`_take_cluster_months`); spending
# alerts use 13013.
LOCK_CLASS = 13016


def _take_cluster_months(rows: list[tuple]) -> None:
    """Wait for the turns of the batch's cluster-months (cluster or none, month), all in
    one statement, in key order: one advisory lock each, a handful a batch.

    Every row the batch locks or writes (its usage rows, the `usage_monthly` and
    `usage_cluster_daily` rows the triggers update) belongs to one cluster-month, so two
    upserts that could meet at any row take turns here first, before holding anything, and
    cannot deadlock on the triggers' statement-by-statement row locks. An upsert then
    locks usage rows before rollup rows, as any other writer of usage_daily does (an
    operator's SQL, a delete): the triggers run at the end of a statement. Writers of other
    users on the same cluster and month take turns too (on the same cluster-day they
    already did, at its rollup row)."""
    cluster_days = {(r[_CLUSTER], r[_DATE]) for r in rows}  # a few: formatted once each
    keys = sorted(
        {
            zlib.crc32(f"{cluster or _NO_CLUSTER}:{day:%Y-%m}".encode()) - 2**31
            for cluster, day in cluster_days
        }
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::integer[]) AS k",
            [LOCK_CLASS, sql_array(keys)],
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


def _on_days_with_usage(rows: list[tuple]) -> list[tuple]:
    """The records that may have a row stored: their cluster-day has usage, and their user
    is within the range of users stored on their day. One probe of the cluster-day rollup
    (`usage_cluster_daily`, kept by the triggers in the writing transaction) per
    cluster-day, and the first and last user stored on its day (two probes of the
    `usage_daily_date` index), instead of one lookup per record: a first load (a
    backfill, a new day, the next cluster of a day being collected, the rest of a day a
    batch left half loaded) looks up nothing (issue 16). A row a writer outside the turns
    commits meanwhile is met by the insert's conflict handling, as for any new key; so is
    a stored row this missed, were the database's collation to order user ids otherwise
    than Python does (slower, never wrong)."""
    cluster_days = sorted({(r[_CLUSTER] or _NO_CLUSTER, r[_DATE]) for r in rows})
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT k.cluster_id::text, k.date,
                   (SELECT min(s.user_id) FROM usage_daily s WHERE s.date = k.date),
                   (SELECT max(s.user_id) FROM usage_daily s WHERE s.date = k.date)
            FROM unnest(%s::uuid[], %s::date[]) AS k(cluster_id, date)
            WHERE EXISTS (
                SELECT 1 FROM usage_cluster_daily c
                WHERE COALESCE(c.hopsworks_cluster_id, %s::uuid) = k.cluster_id
                  AND c.date = k.date AND c.usage_rows > 0
            )
            """,
            [
                sql_array([cluster for cluster, _ in cluster_days]),
                sql_array([day for _, day in cluster_days]),
                NO_CLUSTER,
            ],
        )
        stored = {(cluster, day): (first, last) for cluster, day, first, last in cursor}
    if not stored:
        return []
    kept = []
    for r in rows:
        span = stored.get((r[_CLUSTER] or _NO_CLUSTER, r[_DATE]))
        if span is not None and span[0] is not None and span[0] <= r[_USER] <= span[1]:
            kept.append(r)
    return kept


# The cluster as text, as records carry it.
_LOCKED_SELECT = {"hopsworks_cluster_id": "u.hopsworks_cluster_id::text"}


def _lock_rows(rows: list[tuple], *, lock: bool = True) -> dict:
    """The batch's rows that exist, locked in key order (or only read, `lock=False`)."""
    if not rows:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT {", ".join(_LOCKED_SELECT.get(c, "u." + c) for c in _LOCKED_COLUMNS)}
            FROM usage_daily u
            JOIN unnest(%s::text[], %s::uuid[], %s::date[]) AS k(user_id, cluster_id, date)
              ON u.user_id = k.user_id AND u.date = k.date
             AND COALESCE(u.hopsworks_cluster_id, %s::uuid)
               = COALESCE(k.cluster_id, %s::uuid)
            ORDER BY u.user_id, COALESCE(u.hopsworks_cluster_id, %s::uuid), u.date
            {"FOR UPDATE OF u" if lock else ""}
            """,  # noqa: S608 - column names are ours, values are parameters
            [
                sql_array([r[_USER] for r in rows], text=True),
                sql_array([r[_CLUSTER] for r in rows]),
                sql_array([r[_DATE] for r in rows]),
                NO_CLUSTER,
                NO_CLUSTER,
                NO_CLUSTER,
            ],
        )
        found = [dict(zip(_LOCKED_COLUMNS, values, strict=True)) for values in cursor.fetchall()]
    return {(r["user_id"], r["hopsworks_cluster_id"] or _NO_CLUSTER, r["date"]): r for r in found}


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
            [now, *[sql_array(column) for column in columns]],
        )
