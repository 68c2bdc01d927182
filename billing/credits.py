"""Prepaid credits: every movement is a ledger entry, applied once, under the user's lock.

`user_credits` (the seed's summary) changes only together with a ledger entry, in one
transaction, with the user's `user_credits` row locked; several users are locked in
primary-key order. A `reference` that was applied before is not applied again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import Case, DecimalField, F, Q, Sum, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from billing.alerts import low_balance_alerts_evaluate
from billing.models import CreditLedgerEntry, UserCredits
from billing.standing import standing_check_later
from plumbing.actors import actor_label

logger = logging.getLogger(__name__)

Kind = CreditLedgerEntry.Kind
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
    if movement.kind not in Kind.values:
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


def credits_apply(movements: list[Movement]) -> list[CreditLedgerEntry]:
    """Apply movements in one transaction; those whose reference was applied before are
    skipped (a retry, a rerun, a duplicate webhook). Returns the entries written."""
    if not movements:
        return []
    for movement in movements:
        _validate(movement)
    references = [m.reference for m in movements]
    if len(set(references)) != len(references):
        raise CreditError("Two movements in one batch share a reference.")

    with transaction.atomic():
        rows = _lock_credits(m.user_id for m in movements)
        # Under the users' locks, a reference seen here cannot be applied concurrently.
        done = set(
            CreditLedgerEntry.objects.filter(reference__in=references)
            .order_by()
            .values_list("reference", flat=True)
        )
        entries = []
        now = timezone.now()
        for movement in movements:
            if movement.reference in done:
                continue
            row = rows[movement.user_id]
            if movement.kind == Kind.USAGE:
                row.total_used -= movement.amount  # a debit is negative: used grows
                row.cpu_hours_used += movement.cpu_hours
                row.gpu_hours_used += movement.gpu_hours
                row.storage_gb_months += movement.storage_gb_months
            else:
                row.total_purchased += movement.amount
            row.updated_at = now
            entries.append(
                CreditLedgerEntry(
                    user_id=movement.user_id,
                    kind=movement.kind,
                    amount=movement.amount,
                    balance_after=row.balance,
                    reference=movement.reference,
                    actor=movement.actor,
                    reason=movement.reason,
                    usage_id=movement.usage_id,
                    cpu_hours=movement.cpu_hours,
                    gpu_hours=movement.gpu_hours,
                    storage_gb_months=movement.storage_gb_months,
                    created_at=now,
                )
            )
        if not entries:
            return []
        CreditLedgerEntry.objects.bulk_create(entries)
        _write_summaries([rows[user_id] for user_id in sorted({e.user_id for e in entries})])
        # Under the same locks: a balance that just fell below its threshold alerts once.
        low_balance_alerts_evaluate(user_ids={e.user_id for e in entries})
        # A purchase, grant or refund moves the balance across the floor (usage is judged
        # by usage_upsert, once for the whole batch): a top-up resumes the user at once.
        standing_check_later(user_ids={e.user_id for e in entries if e.kind != Kind.USAGE})
    for entry in entries:
        if entry.balance_after < 0 <= entry.balance_after - entry.amount:
            logger.warning("credit balance of %s is now negative", entry.user_id)
    return entries


def _write_summaries(rows: list[UserCredits]) -> None:
    """Write the changed summaries back in one statement (array parameters)."""
    columns = [[row.user_id for row in rows]] + [
        [getattr(row, field) for row in rows] for field in _SUMMARY_FIELDS
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
