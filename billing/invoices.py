"""Stripe invoices in billing history: applied from webhook events (stripe_events.py) and
repaired from Stripe's own list (`invoices_sync`). An older event never overwrites a newer
state, and paid or void invoices stay so."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.models import BillingHistory
from billing.selectors import user_for_stripe_object

# Stripe's invoice status -> ours, for invoices read from Stripe's list.
STRIPE_INVOICE_STATUS = {
    "draft": BillingHistory.Status.PENDING,
    "open": BillingHistory.Status.PENDING,
    "paid": BillingHistory.Status.PAID,
    "void": BillingHistory.Status.VOID,
    "uncollectible": BillingHistory.Status.FAILED,
}


def invoice_apply(invoice: dict, *, status: str, event_created) -> BillingHistory | None:
    """Record an invoice's state, unless what we have is newer or final."""
    row, _ = BillingHistory.objects.get_or_create(
        stripe_invoice_id=invoice["id"],
        defaults={
            "amount": Decimal("0"),
            "status": status,
            "user": user_for_stripe_object(invoice),
        },
    )
    row = BillingHistory.objects.select_for_update().get(pk=row.pk)
    _note_finalized(row, invoice, event_created)
    if row.stripe_event_created is not None and event_created < row.stripe_event_created:
        return None  # an older event, delivered late
    if row.status in BillingHistory.FINAL and status != row.status:
        return None  # paid and void are final
    currency = invoice.get("currency") or settings.STRIPE_CURRENCY
    row.amount = gateway.from_minor_units(invoice.get("amount_due") or 0, currency)
    row.currency = currency.upper()
    row.status = status
    row.user = row.user or user_for_stripe_object(invoice)
    row.description = invoice.get("description") or _describe(invoice)
    row.hosted_invoice_url = invoice.get("hosted_invoice_url") or ""
    if invoice.get("period_start"):
        row.period_start = gateway.datetime_from_timestamp(invoice["period_start"])
    if invoice.get("period_end"):
        row.period_end = gateway.datetime_from_timestamp(invoice["period_end"])
    if invoice.get("created"):
        row.created_at = gateway.datetime_from_timestamp(invoice["created"])
    row.stripe_event_created = event_created
    row.save()
    return row


def _note_finalized(row: BillingHistory, invoice: dict, event_created) -> None:
    """Finalization happens once and is never undone, whatever order events come in:
    noted from any event that shows it (Stripe's status past draft or its time)."""
    if row.finalized_at is not None:
        return
    at = (invoice.get("status_transitions") or {}).get("finalized_at")
    if at:
        row.finalized_at = gateway.datetime_from_timestamp(at)
    elif invoice.get("status") in ("open", "paid", "uncollectible", "void"):
        row.finalized_at = event_created
    else:
        return
    row.save(update_fields=["finalized_at"])


def _describe(invoice: dict) -> str:
    number = invoice.get("number") or invoice["id"]
    if invoice.get("period_start") and invoice.get("period_end"):
        start, end = (
            gateway.datetime_from_timestamp(invoice["period_start"]),
            gateway.datetime_from_timestamp(invoice["period_end"]),
        )
        return f"Invoice {number}: usage {start:%Y-%m-%d} to {end:%Y-%m-%d}"
    return f"Invoice {number}"


def invoices_sync(*, user: User) -> int:
    """Repair missed webhooks: take every invoice of the user's customer as Stripe has it."""
    if not user.stripe_customer_id:
        return 0
    now = timezone.now()
    count = 0
    for invoice in gateway.list_invoices(customer_id=user.stripe_customer_id):
        status = STRIPE_INVOICE_STATUS.get(invoice.get("status") or "draft")
        with transaction.atomic():
            if invoice_apply(invoice, status=status, event_created=now) is not None:
                count += 1
    return count
