"""Prepaid credits: every movement is a ledger entry, applied once, under the user's lock.

`user_credits` (the seed's summary) changes only together with a ledger entry, in one
transaction, with the user's `user_credits` row locked; several users are locked in
primary-key order. A `reference` that was applied before is not applied again.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from django.db import IntegrityError, connection, transaction
from django.db.models import Case, DecimalField, F, Q, Sum, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from billing.alerts import low_balance_alerts_evaluate
from billing.models import CreditLedgerEntry, UserCredits
from billing.standing import standing_check_later
from plumbing.actors import actor_label
from plumbing.db import sql_array

logger = logging.getLogger(__name__)

Kind = CreditLedgerEntry.Kind
KINDS = frozenset(Kind.values)
ZERO = Decimal("0")
MAX_SINGLE_MOVEMENT = Decimal("1000000")


class CreditError(Exception):
    """A credit movement that cannot be applied; the message says what to fix."""


@dataclass(frozen=True)
class Movement:
    """One credit movement to apply. Usage movements carry the quantities they pay for."""

    user_id: str
    kind: str
    amount: Decimal
    reference: str
    actor: str
    reason: str = ""
    usage_id: object = None
    cpu_hours: Decimal = ZERO
    gpu_hours: Decimal = ZERO
    storage_gb_months: Decimal = ZERO


def _validate(movement: Movement) -> None:
    amount = movement.amount
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise CreditError("The amount must be a finite decimal number.")
    if amount == 0:
        raise CreditError("The amount must not be zero.")
    if abs(amount) > MAX_SINGLE_MOVEMENT:
        raise CreditError(f"A single movement is limited to ${MAX_SINGLE_MOVEMENT:,}.")
    if movement.kind in (Kind.PURCHASE, Kind.GRANT) and amount < 0:
        raise CreditError(f"A {movement.kind} adds credit: the amount must be positive.")
    if movement.kind == Kind.REFUND and amount > 0:
        raise CreditError("A refund takes credit back: the amount must be negative.")
    if movement.kind not in KINDS:
        raise CreditError(f"Unknown kind of movement {movement.kind!r}.")
    if not movement.reference:
        raise CreditError("A movement needs a reference (what makes it unique).")


def _lock_credits(user_ids) -> dict[str, UserCredits]:
    """Create missing summary rows, then lock all of them in primary-key order."""
    user_ids = sorted(set(user_ids))
    UserCredits.objects.bulk_create(
        [UserCredits(user_id=user_id) for user_id in user_ids], ignore_conflicts=True
    )
    return {
        row.user_id: row
        for row in UserCredits.objects.select_for_update()
        .filter(user_id__in=user_ids)
        .order_by("user_id")
    }


class AppliedEntry(NamedTuple):
    """A ledger entry `credits_apply_batch` wrote: its id, the movement, the balance after."""

    id: int
    movement: Movement
    balance_after: Decimal
    created_at: dt.datetime

    @property
    def user_id(self) -> str:
        return self.movement.user_id

    @property
    def amount(self) -> Decimal:
        return self.movement.amount

    @property
    def kind(self) -> str:
        return self.movement.kind


def credits_apply(movements: list[Movement]) -> list[CreditLedgerEntry]:
    """Apply movements in one transaction; those whose reference was applied before are
    skipped (a retry, a rerun, a duplicate webhook). Returns the entries written."""
    return [_as_model(entry) for entry in credits_apply_batch(movements)]


def _as_model(entry: AppliedEntry) -> CreditLedgerEntry:
    m = entry.movement
    model = CreditLedgerEntry(
        id=entry.id,
        user_id=m.user_id,
        kind=m.kind,
        amount=m.amount,
        balance_after=entry.balance_after,
        reference=m.reference,
        actor=m.actor,
        reason=m.reason,
        usage_id=m.usage_id,
        cpu_hours=m.cpu_hours,
        gpu_hours=m.gpu_hours,
        storage_gb_months=m.storage_gb_months,
        created_at=entry.created_at,
    )
    # Written already, as bulk_create would leave it (saving it again would be an update).
    model._state.adding = False
    model._state.db = "default"
    return model


def credits_apply_batch(
    movements: list[Movement], *, new: list[Movement] = ()
) -> list[AppliedEntry]:
    """`credits_apply` for thousands of movements (the usage upsert's): the same checks,
    locks and entries, in a constant number of statements, returned as `AppliedEntry`
    rather than model instances.

    `new` are movements that cannot have been applied before: their references name rows
    inserted in this transaction (a new usage row's first debit). They are not looked up
    in the ledger (a first load's batch then looks up nothing); the ledger's unique
    reference still refuses a second entry, so a mistake there fails the batch rather than
    counting twice. They are applied after `movements`."""
    movements = [*movements, *new]
    if not movements:
        return []
    for movement in movements:
        _validate(movement)
    references = [m.reference for m in movements]
    if len(set(references)) != len(references):
        raise CreditError("Two movements in one batch share a reference.")

    with transaction.atomic():
        summaries = _lock_summaries({m.user_id for m in movements})
        # Under the users' locks, a reference seen here cannot be applied concurrently.
        old = len(movements) - len(new)
        done = _applied_before(references[:old]) if old else ()
        todo = [m for m in movements if m.reference not in done] if done else movements
        if not todo:
            return []
        balances = []
        for movement in todo:
            row = summaries[movement.user_id]  # _SUMMARY_FIELDS, in order
            if movement.kind == Kind.USAGE:
                row[1] -= movement.amount  # a debit is negative: used grows
                row[2] += movement.cpu_hours
                row[3] += movement.gpu_hours
                row[4] += movement.storage_gb_months
            else:
                row[0] += movement.amount
            balances.append(row[0] - row[1])
        now = timezone.now()
        ids = _insert_entries(todo, balances, now)
        touched = sorted({m.user_id for m in todo})
        _write_summaries(touched, [summaries[user_id] for user_id in touched])
        # Under the same locks: a balance that just fell below its threshold alerts once.
        low_balance_alerts_evaluate(user_ids=touched)
        # A purchase, grant or refund moves the balance across the floor (usage is judged
        # by usage_upsert, once for the whole batch): a top-up resumes the user at once.
        standing_check_later(user_ids={m.user_id for m in todo if m.kind != Kind.USAGE})
    entries = [
        AppliedEntry(ids[m.reference], m, balance, now)
        for m, balance in zip(todo, balances, strict=True)
    ]
    _log_negative(entries)
    return entries


def _log_negative(entries: list[AppliedEntry]) -> None:
    """One warning for the users these entries took below zero (a usage batch can take
    thousands: one line each buried everything else in the log). The alerts and the stop
    of service for a low balance are decided elsewhere (`billing.alerts`, `billing.standing`)."""
    crossed = sorted(
        {e.user_id for e in entries if e.balance_after < 0 <= e.balance_after - e.amount}
    )
    if crossed:
        more = f" and {len(crossed) - 5} more" if len(crossed) > 5 else ""
        logger.warning(
            "credit balance of %d user(s) now negative: %s%s",
            len(crossed),
            ", ".join(crossed[:5]),
            more,
        )


def _lock_summaries(user_ids) -> dict[str, list[Decimal]]:
    """`_lock_credits` for many users: create the missing summary rows, lock all of them in
    primary-key order, and return their figures (`_SUMMARY_FIELDS`, in that order)."""
    ids = sql_array(sorted(user_ids), text=True)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO user_credits (user_id, total_purchased, total_used, cpu_hours_used,
                gpu_hours_used, storage_gb_months, updated_at)
            SELECT u, 0, 0, 0, 0, 0, %s FROM unnest(%s::text[]) AS u ORDER BY u
            ON CONFLICT DO NOTHING
            """,
            [timezone.now(), ids],
        )
        cursor.execute(
            f"""
            SELECT user_id, {", ".join(_SUMMARY_FIELDS)} FROM user_credits
            WHERE user_id = ANY(%s::text[]) ORDER BY user_id FOR UPDATE
            """,  # noqa: S608 - column names are ours
            [ids],
        )
        return {user_id: list(figures) for user_id, *figures in cursor.fetchall()}


def _applied_before(references: list[str]) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reference FROM billing_credit_ledger WHERE reference = ANY(%s::text[])",
            [sql_array(references, text=True)],
        )
        return {reference for (reference,) in cursor.fetchall()}


def _insert_entries(movements: list[Movement], balances: list[Decimal], now) -> dict[str, int]:
    """Append the entries in the movements' order (ids ascending); their ids by reference."""
    text = [
        sql_array([getattr(m, name) for m in movements], text=True)
        for name in ("user_id", "kind", "reference", "actor", "reason")
    ]
    other = [
        sql_array([getattr(m, name) for m in movements])
        for name in ("amount", "usage_id", "cpu_hours", "gpu_hours", "storage_gb_months")
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_credit_ledger (user_id, kind, reference, actor, reason, amount,
                usage_id, cpu_hours, gpu_hours, storage_gb_months, balance_after, created_at)
            SELECT e.user_id, e.kind, e.reference, e.actor, e.reason, e.amount, e.usage_id,
                   e.cpu_hours, e.gpu_hours, e.storage_gb_months, e.balance_after, %s
            FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                        %s::numeric[], %s::uuid[], %s::numeric[], %s::numeric[],
                        %s::numeric[], %s::numeric[])
              WITH ORDINALITY AS e(user_id, kind, reference, actor, reason, amount, usage_id,
                                   cpu_hours, gpu_hours, storage_gb_months, balance_after, n)
            ORDER BY e.n
            RETURNING id, reference
            """,
            [now, *text, *other, sql_array(balances)],
        )
        return {reference: entry_id for entry_id, reference in cursor.fetchall()}


def _write_summaries(user_ids: list[str], figures: list[list[Decimal]]) -> None:
    """Write the changed summaries back in one statement (array parameters)."""
    columns = [sql_array(user_ids, text=True)] + [
        sql_array([row[i] for row in figures]) for i in range(len(_SUMMARY_FIELDS))
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE user_credits c
            SET total_purchased = v.total_purchased, total_used = v.total_used,
                cpu_hours_used = v.cpu_hours_used, gpu_hours_used = v.gpu_hours_used,
                storage_gb_months = v.storage_gb_months, updated_at = %s
            FROM unnest(%s::text[], %s::numeric[], %s::numeric[], %s::numeric[],
                        %s::numeric[], %s::numeric[])
              AS v(user_id, total_purchased, total_used, cpu_hours_used, gpu_hours_used,
                   storage_gb_months)
            WHERE c.user_id = v.user_id
            """,
            [timezone.now(), *columns],
        )


def credits_add(
    *, user: User, kind: str, amount: Decimal, reference: str, actor, reason: str = ""
) -> CreditLedgerEntry | None:
    """One purchase, grant, refund or adjustment. Returns None if the reference was
    already applied."""
    movement = Movement(
        user_id=user.pk,
        kind=kind,
        amount=amount,
        reference=reference,
        actor=actor_label(actor),
        reason=reason,
    )
    try:
        entries = credits_apply([movement])
    except IntegrityError:  # the same reference applied concurrently for another user row
        return None
    return entries[0] if entries else None


def credits_grant(
    *, user: User, amount: Decimal, reason: str, actor, reference: str
) -> CreditLedgerEntry | None:
    """An operator gives credit. `reference` makes a resubmitted form apply once."""
    if not reason.strip():
        raise CreditError("Say why the credit is granted (the reason is kept in the ledger).")
    return credits_add(
        user=user,
        kind=Kind.GRANT,
        amount=amount,
        reference=f"grant:{reference}",
        actor=actor,
        reason=reason.strip(),
    )


@dataclass(frozen=True)
class BalanceDrift:
    user_id: str
    recorded: tuple
    from_ledger: tuple


_SUMMARY_FIELDS = (
    "total_purchased",
    "total_used",
    "cpu_hours_used",
    "gpu_hours_used",
    "storage_gb_months",
)


def _ledger_totals():
    decimal = DecimalField(max_digits=30, decimal_places=10)

    def total(expression):
        return Coalesce(Sum(expression), Value(ZERO), output_field=decimal)

    usage = Q(kind=Kind.USAGE)
    return (
        CreditLedgerEntry.objects.values("user_id")
        .order_by("user_id")
        .annotate(
            total_purchased=total(Case(When(~usage, then=F("amount")), default=Value(ZERO))),
            total_used=total(Case(When(usage, then=-F("amount")), default=Value(ZERO))),
            cpu_hours_used=total("cpu_hours"),
            gpu_hours_used=total("gpu_hours"),
            storage_gb_months=total("storage_gb_months"),
        )
    )


def credits_check_balances(*, fix: bool = False) -> list[BalanceDrift]:
    """Recompute every `user_credits` row from the ledger; with fix, write it back."""
    ledger = {row["user_id"]: tuple(row[f] for f in _SUMMARY_FIELDS) for row in _ledger_totals()}
    recorded = {
        row["user_id"]: tuple(row[f] for f in _SUMMARY_FIELDS)
        for row in UserCredits.objects.values("user_id", *_SUMMARY_FIELDS)
    }
    zero = (ZERO,) * len(_SUMMARY_FIELDS)
    drifts = [
        BalanceDrift(user_id, recorded.get(user_id, zero), ledger.get(user_id, zero))
        for user_id in sorted(set(ledger) | set(recorded))
        if recorded.get(user_id, zero) != ledger.get(user_id, zero)
    ]
    if fix and drifts:
        with transaction.atomic():
            rows = _lock_credits(d.user_id for d in drifts)
            fresh = {r["user_id"]: r for r in _ledger_totals().filter(user_id__in=list(rows))}
            for user_id, row in rows.items():
                for field in _SUMMARY_FIELDS:
                    setattr(row, field, fresh.get(user_id, {}).get(field, ZERO))
                row.updated_at = timezone.now()
            UserCredits.objects.bulk_update(list(rows.values()), [*_SUMMARY_FIELDS, "updated_at"])
        for drift in drifts:
            logger.warning("user_credits of %s repaired from the ledger", drift.user_id)
    return drifts
