"""Everything that moves money through Stripe, except usage reporting (stripe_reporting.py).

Only `billing.stripe_gateway` talks to Stripe. Webhook events are stored by their unique id
before they are processed, processed in a transaction, and applied in event-time order:
an older event never overwrites a newer state, and paid or void invoices stay so.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.credits import Kind, credits_add
from billing.models import (
    BillingAccount,
    BillingHistory,
    Price,
    StripeCatalogEntry,
    StripeEvent,
)
from billing.services import billing_account_for

logger = logging.getLogger(__name__)


class BillingError(Exception):
    """A billing request that cannot be done; the message is shown to the person."""


# Customers ----------------------------------------------------------------------------


def customer_ensure(*, user: User) -> str:
    """The user's Stripe customer, created the first time it is needed.

    The user's row is locked while the customer is created, and the creation carries an
    idempotency key derived from the user, so concurrent requests make one customer.
    """
    if user.stripe_customer_id:
        return user.stripe_customer_id
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        if not locked.stripe_customer_id:
            locked.stripe_customer_id = gateway.create_customer(
                user_id=locked.pk, email=locked.email, name=locked.name
            )
            User.objects.filter(pk=user.pk).update(stripe_customer_id=locked.stripe_customer_id)
    user.stripe_customer_id = locked.stripe_customer_id
    return user.stripe_customer_id


# Checkout -----------------------------------------------------------------------------


def topup_limits() -> tuple[Decimal, Decimal]:
    return Decimal(settings.CREDIT_TOPUP_MIN), Decimal(settings.CREDIT_TOPUP_MAX)


def parse_topup_amount(raw: str) -> Decimal:
    low, high = topup_limits()
    try:
        amount = Decimal(str(raw).strip().lstrip("$"))
    except (InvalidOperation, ValueError):
        raise BillingError("Enter an amount in dollars, for example 25 or 25.50.") from None
    if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
        raise BillingError("Enter an amount in dollars and cents, for example 25.50.")
    if not low <= amount <= high:
        raise BillingError(f"Buy between ${low} and ${high} of credit at a time.")
    return amount


def credit_checkout_start(
    *, user: User, amount: Decimal, request_key: str, success_url: str, cancel_url: str
) -> str:
    """A Stripe Checkout page for buying credits. Credits are added only when Stripe's
    signed webhook says the payment went through, never on the way back from Checkout."""
    if billing_account_for(user).mode != BillingAccount.Mode.PREPAID:
        raise BillingError("Credits are for prepaid accounts; yours is billed monthly.")
    session = gateway.create_credit_checkout(
        customer_id=customer_ensure(user=user),
        user_id=user.pk,
        amount=amount,
        currency=settings.STRIPE_CURRENCY,
        success_url=success_url,
        cancel_url=cancel_url,
        request_key=request_key,
    )
    return session.url


def first_of_next_month(now: dt.datetime | None = None) -> dt.datetime:
    now = now or timezone.now()
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def subscription_checkout_start(
    *, user: User, request_key: str, success_url: str, cancel_url: str
) -> str:
    """A Stripe Checkout page where a postpaid user adds a payment method and gets the one
    metered subscription, renewing on the first of each month (so a Stripe invoice covers
    one calendar month of usage)."""
    account = billing_account_for(user)
    if account.mode != BillingAccount.Mode.POSTPAID:
        raise BillingError("Your account is prepaid: buy credits instead.")
    if account.subscription_status in BillingAccount.ACTIVE_SUBSCRIPTION:
        raise BillingError("You already have a payment method and an active subscription.")
    prices = list(
        StripeCatalogEntry.objects.order_by("resource").values_list("price_id", flat=True)
    )
    if len(prices) != len(Price.Resource.values):
        raise BillingError(
            "Monthly billing is not set up yet (an operator runs setup_stripe_billing)."
        )
    session = gateway.create_subscription_checkout(
        customer_id=customer_ensure(user=user),
        user_id=user.pk,
        price_ids=prices,
        success_url=success_url,
        cancel_url=cancel_url,
        request_key=request_key,
        billing_cycle_anchor=int(first_of_next_month().timestamp()),
    )
    return session.url


# The catalog --------------------------------------------------------------------------

CATALOG_PREFIX = "hopsworks_platform"


def catalog_items() -> list[gateway.CatalogItem]:
    """One meter, product and metered price per rate-card resource. The meter counts
    cents of usage cost (we price each day with the rate card, negotiated prices
    included), and the price is one cent per unit: Stripe's invoice then equals our
    total to the cent, whatever the user's prices and whenever they change."""
    return [
        gateway.CatalogItem(
            resource=resource,
            display_name=f"{label} usage",
            event_name=f"{CATALOG_PREFIX}_{resource}_cents",
            product_id=f"{CATALOG_PREFIX}_{resource}",
            lookup_key=f"{CATALOG_PREFIX}_{resource}_cents",
            unit_amount=1,
            currency=settings.STRIPE_CURRENCY,
        )
        for resource, label in Price.Resource.choices
    ]


def catalog_setup() -> list[StripeCatalogEntry]:
    entries = gateway.ensure_billing_catalog(catalog_items())
    saved = []
    with transaction.atomic():
        for entry in entries:
            row, _ = StripeCatalogEntry.objects.update_or_create(
                resource=entry.resource,
                defaults={
                    "event_name": entry.event_name,
                    "meter_id": entry.meter_id,
                    "product_id": entry.product_id,
                    "price_id": entry.price_id,
                },
            )
            saved.append(row)
    return saved


# Webhooks -----------------------------------------------------------------------------


def _at(timestamp) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(timestamp), tz=dt.UTC)


def stripe_event_receive(*, payload: bytes, signature: str | None) -> StripeEvent:
    """Verify, store (once, by event id) and process a webhook delivery.

    Raises `gateway.WebhookSignatureError` for a bad or stale signature (nothing stored).
    """
    event = gateway.verify_webhook(payload=payload, signature_header=signature)
    StripeEvent.objects.get_or_create(
        id=event["id"],
        defaults={
            "type": event["type"],
            "created": _at(event["created"]),
            "livemode": bool(event.get("livemode")),
            "payload": event,
        },
    )
    return stripe_event_process(event_id=event["id"])


def stripe_event_process(*, event_id: str) -> StripeEvent:
    """Process a stored event once. A failure is recorded with its error and left for
    Stripe's redelivery or `retry_stripe_events`; a processed event is not processed again."""
    with transaction.atomic():
        event = StripeEvent.objects.select_for_update().get(pk=event_id)
        if event.status in (StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED):
            return event
        handler = HANDLERS.get(event.type)
        event.attempts += 1
        try:
            with transaction.atomic():
                if handler is not None:
                    handler(event.payload["data"]["object"], event_created=event.created)
        except Exception as error:
            logger.exception("Stripe event %s (%s) failed", event.id, event.type)
            event.status = StripeEvent.Status.FAILED
            event.error = f"{type(error).__name__}: {error}"
        else:
            event.status = StripeEvent.Status.PROCESSED if handler else StripeEvent.Status.IGNORED
            event.error = ""
            event.processed_at = timezone.now()
        event.save(update_fields=["status", "error", "attempts", "processed_at"])
    return event


def _user_for(obj: dict) -> User | None:
    user_id = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("user_id")
    if user_id:
        user = User.objects.filter(pk=user_id).first()
        if user is not None:
            return user
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return User.objects.filter(stripe_customer_id=customer).first() if customer else None


def _credits_paid(session: dict, *, event_created) -> None:
    metadata = session.get("metadata") or {}
    if session.get("mode") != "payment" or metadata.get("purpose") != "credits":
        return
    if session.get("payment_status") != "paid":
        return  # paid later: checkout.session.async_payment_succeeded comes then
    user = _user_for(session)
    if user is None:
        raise BillingError(f"Checkout session {session['id']} names no user of ours.")
    amount = gateway.from_minor_units(session["amount_total"], session["currency"])
    credits_add(
        user=user,
        kind=Kind.PURCHASE,
        amount=amount,
        reference=f"stripe:checkout:{session['id']}",
        actor="stripe",
        reason=f"Credit purchase (Checkout {session['id']})",
    )
    _after_billing_ready(user)


def _subscription_state(*, user: User, subscription_id: str, status: str, event_created) -> None:
    """Keep exactly one subscription per user: the first active one wins; a second one
    (two checkouts completed, racing webhooks) is canceled at Stripe."""
    account = billing_account_for(user)
    account = BillingAccount.objects.select_for_update().get(pk=account.pk)
    current = account.stripe_subscription_id
    if current and current != subscription_id:
        current_active = account.subscription_status in BillingAccount.ACTIVE_SUBSCRIPTION
        if current_active and status in BillingAccount.ACTIVE_SUBSCRIPTION:
            gateway.cancel_subscription(subscription_id=subscription_id)
            logger.warning(
                "user %s had subscription %s; duplicate %s canceled",
                user.pk,
                current,
                subscription_id,
            )
            return
        if status not in BillingAccount.ACTIVE_SUBSCRIPTION:
            return  # news about a subscription we do not use
        account.subscription_event_created = None  # the new one replaces a dead one
    stale = (
        account.subscription_event_created is not None
        and event_created < account.subscription_event_created
    )
    if current == subscription_id and stale:
        return
    account.stripe_subscription_id = subscription_id
    account.subscription_status = status
    account.subscription_event_created = event_created
    account.save(
        update_fields=[
            "stripe_subscription_id",
            "subscription_status",
            "subscription_event_created",
            "updated_at",
        ]
    )
    if status in BillingAccount.ACTIVE_SUBSCRIPTION:
        _after_billing_ready(user)


def _checkout_completed(session: dict, *, event_created) -> None:
    if session.get("mode") == "payment":
        _credits_paid(session, event_created=event_created)
        return
    if session.get("mode") != "subscription" or not session.get("subscription"):
        return
    user = _user_for(session)
    if user is None:
        raise BillingError(f"Checkout session {session['id']} names no user of ours.")
    subscription = session["subscription"]
    if isinstance(subscription, dict):
        subscription = subscription["id"]
    if session.get("status") == "complete":
        _subscription_state(
            user=user, subscription_id=subscription, status="active", event_created=event_created
        )


def _subscription_changed(subscription: dict, *, event_created) -> None:
    user = _user_for(subscription)
    if user is None:
        raise BillingError(f"Subscription {subscription['id']} belongs to no user of ours.")
    _subscription_state(
        user=user,
        subscription_id=subscription["id"],
        status=subscription["status"],
        event_created=event_created,
    )


INVOICE_STATUS = {
    "invoice.created": BillingHistory.Status.PENDING,
    "invoice.finalized": BillingHistory.Status.PENDING,
    "invoice.paid": BillingHistory.Status.PAID,
    "invoice.payment_failed": BillingHistory.Status.FAILED,
    "invoice.voided": BillingHistory.Status.VOID,
}
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
        defaults={"amount": Decimal("0"), "status": status, "user": _user_for(invoice)},
    )
    row = BillingHistory.objects.select_for_update().get(pk=row.pk)
    if row.stripe_event_created is not None and event_created < row.stripe_event_created:
        return None  # an older event, delivered late
    if row.status in BillingHistory.FINAL and status != row.status:
        return None  # paid and void are final
    currency = invoice.get("currency") or settings.STRIPE_CURRENCY
    row.amount = gateway.from_minor_units(invoice.get("amount_due") or 0, currency)
    row.currency = currency.upper()
    row.status = status
    row.user = row.user or _user_for(invoice)
    row.description = invoice.get("description") or _describe(invoice)
    row.hosted_invoice_url = invoice.get("hosted_invoice_url") or ""
    if invoice.get("period_start"):
        row.period_start = _at(invoice["period_start"])
    if invoice.get("period_end"):
        row.period_end = _at(invoice["period_end"])
    if invoice.get("created"):
        row.created_at = _at(invoice["created"])
    row.stripe_event_created = event_created
    row.save()
    return row


def _describe(invoice: dict) -> str:
    number = invoice.get("number") or invoice["id"]
    if invoice.get("period_start") and invoice.get("period_end"):
        start, end = _at(invoice["period_start"]), _at(invoice["period_end"])
        return f"Invoice {number}: usage {start:%Y-%m-%d} to {end:%Y-%m-%d}"
    return f"Invoice {number}"


def _invoice_event(event_type: str):
    def handle(invoice: dict, *, event_created) -> None:
        invoice_apply(invoice, status=INVOICE_STATUS[event_type], event_created=event_created)

    return handle


HANDLERS = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _credits_paid,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    **{event_type: _invoice_event(event_type) for event_type in INVOICE_STATUS},
}


def stripe_events_retry(*, limit: int = 500) -> list[StripeEvent]:
    pending = StripeEvent.objects.filter(
        status__in=[StripeEvent.Status.FAILED, StripeEvent.Status.RECEIVED]
    ).order_by("created")[:limit]
    return [
        stripe_event_process(event_id=event_id) for event_id in pending.values_list("pk", flat=True)
    ]


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


def _after_billing_ready(user: User) -> None:
    """A user who waited for billing gets a place now (after this transaction commits)."""
    from clusters import services as placement
    from clusters.models import CapacityWait

    if CapacityWait.objects.filter(user=user, reason=CapacityWait.Reason.BILLING).exists():
        transaction.on_commit(lambda: placement.assignment_auto_assign(user=user, actor="billing"))
