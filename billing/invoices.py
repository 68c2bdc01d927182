"""Stripe invoices in billing history: applied from webhook events (stripe_events.py) and
repaired from Stripe's own list (`invoices_sync`). An older event never overwrites a newer
state, and paid or void invoices stay so. Two events of the same second that disagree are
not ordered by arrival: the invoice is read from Stripe and what Stripe says now applies.
Credit notes and refunds are Stripe's running totals for the invoice, read from Stripe."""

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


def invoice_status(invoice: dict) -> str:
    """Our status for an invoice as Stripe holds it. An open invoice whose collection was
    attempted and is still owed is one whose payment failed (Stripe keeps it `open`)."""
    stripe_status = invoice.get("status") or "draft"
    status = STRIPE_INVOICE_STATUS.get(stripe_status, BillingHistory.Status.PENDING)
    if stripe_status == "open" and invoice.get("attempted") and invoice.get("amount_remaining"):
        return BillingHistory.Status.FAILED
    return status


def invoice_apply(invoice: dict, *, status: str, event_created) -> BillingHistory | None:
    """Record an invoice's state, unless what we have is newer or final. An event of the
    same second as the one applied that says otherwise is settled by Stripe's invoice now."""
    user = user_for_stripe_object(invoice)
    if user is None and not BillingHistory.objects.filter(stripe_invoice_id=invoice["id"]).exists():
        # Never a row without a user (and a placeholder amount): the event stays unmatched.
        customer = invoice.get("customer")
        customer = customer.get("id") if isinstance(customer, dict) else customer
        raise LookupError(
            f"invoice {invoice['id']} names no user of ours (customer {customer or 'none'}); "
            "nothing recorded"
        )
    row, _ = BillingHistory.objects.get_or_create(
        stripe_invoice_id=invoice["id"],
        defaults={"amount": Decimal("0"), "status": status, "user": user},
    )
    row = BillingHistory.objects.select_for_update().get(pk=row.pk)
    _note_finalized(row, invoice, event_created)
    if row.stripe_event_created is not None and event_created < row.stripe_event_created:
        return None  # an older event, delivered late
    same_second = row.stripe_event_created is not None and event_created == row.stripe_event_created
    stripe_status = invoice.get("status") or ""
    if same_second and (status, stripe_status) != (row.status, row.stripe_status):
        invoice = gateway.retrieve_invoice(invoice_id=invoice["id"])
        status, stripe_status = invoice_status(invoice), invoice.get("status") or ""
    if row.status in BillingHistory.FINAL and status != row.status:
        return None  # paid and void are final
    currency = invoice.get("currency") or settings.STRIPE_CURRENCY
    # The invoice's amount is its total: a pre-payment credit note lowers `amount_due`,
    # and is shown in `amount_credited` instead.
    total = invoice.get("total")
    total = invoice.get("amount_due") if total is None else total
    row.amount = gateway.from_minor_units(total or 0, currency)
    row.currency = currency.upper()
    row.status = status
    row.stripe_status = stripe_status
    row.user = row.user or user
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


def invoice_credits_refresh(*, invoice_id: str) -> BillingHistory:
    """Set the invoice's credited amount to the sum of its issued credit notes as Stripe
    lists them now (so a redelivered, reordered or voided note is counted right)."""
    row = _row_or_retry(invoice_id)
    notes = gateway.list_credit_notes(invoice_id=invoice_id)
    row.amount_credited = sum(
        (
            gateway.from_minor_units(note["amount"], note.get("currency") or row.currency)
            for note in notes
            if note.get("status") == "issued"
        ),
        Decimal(0),
    )
    row.save(update_fields=["amount_credited", "updated_at"])
    return row


def invoice_refund_apply(*, charge: dict) -> BillingHistory | None:
    """A refund on a charge: if the charge paid an invoice of ours, the invoice shows the
    charge's refunded total. Charges outside invoices (credit purchases) are not ours here."""
    payment_intent = charge.get("payment_intent")
    if isinstance(payment_intent, dict):
        payment_intent = payment_intent.get("id")
    if not payment_intent:
        return None
    invoice_id = gateway.invoice_id_for_payment_intent(payment_intent_id=payment_intent)
    if invoice_id is None:
        return None
    row = _row_or_retry(invoice_id)
    refunded = gateway.from_minor_units(
        charge.get("amount_refunded") or 0, charge.get("currency") or row.currency
    )
    # Stripe's total only grows; a late event carries an older, smaller one.
    if refunded > row.amount_refunded:
        row.amount_refunded = refunded
        row.save(update_fields=["amount_refunded", "updated_at"])
    return row


def _row_or_retry(invoice_id: str) -> BillingHistory:
    row = BillingHistory.objects.select_for_update().filter(stripe_invoice_id=invoice_id).first()
    if row is None:  # its invoice.* event has not been applied yet: fail, to be retried
        raise LookupError(
            f"invoice {invoice_id} is not in billing history yet; the event is retried "
            "(or use Sync invoices from Stripe on its user)"
        )
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
        status = invoice_status(invoice)
        with transaction.atomic():
            if invoice_apply(invoice, status=status, event_created=now) is not None:
                count += 1
    return count
