"""Stripe webhook events: stored once by their id, then processed in a transaction.

The dispatch table comes first: each event type we act on, and the one function that acts
on it (below, in the same order). Types not listed are stored and marked ignored.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.checkout import BillingError
from billing.credits import Kind, credits_add
from billing.invoices import invoice_apply
from billing.models import BillingHistory, BillingProfile, StripeEvent, is_active_subscription
from billing.profiles import billing_profile_ensure
from billing.selectors import user_for_stripe_object

logger = logging.getLogger(__name__)


def _handlers() -> dict:
    """Event type -> the function that applies it (looked up when an event is processed,
    so the table can stand above the functions it names)."""
    return {
        "checkout.session.completed": on_checkout_session_completed,
        "checkout.session.async_payment_succeeded": on_checkout_session_paid,
        "customer.subscription.created": on_customer_subscription_changed,
        "customer.subscription.updated": on_customer_subscription_changed,
        "customer.subscription.deleted": on_customer_subscription_changed,
        "invoice.created": on_invoice_created,
        "invoice.finalized": on_invoice_finalized,
        "invoice.paid": on_invoice_paid,
        "invoice.payment_failed": on_invoice_payment_failed,
        "invoice.voided": on_invoice_voided,
    }


def stripe_event_receive(*, payload: bytes, signature: str | None) -> StripeEvent:
    """Verify, store (once, by event id) and process a webhook delivery.

    Raises `gateway.WebhookSignatureError` for a bad or stale signature (nothing stored).
    """
    event = gateway.verify_webhook(payload=payload, signature_header=signature)
    StripeEvent.objects.get_or_create(
        id=event["id"],
        defaults={
            "type": event["type"],
            "created": gateway.datetime_from_timestamp(event["created"]),
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
        handler = _handlers().get(event.type)
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


def stripe_events_retry(*, limit: int = 500) -> list[StripeEvent]:
    pending = StripeEvent.objects.filter(
        status__in=[StripeEvent.Status.FAILED, StripeEvent.Status.RECEIVED]
    ).order_by("created")[:limit]
    return [
        stripe_event_process(event_id=event_id) for event_id in pending.values_list("pk", flat=True)
    ]


def on_checkout_session_completed(session: dict, *, event_created) -> None:
    """A Checkout finished: credits paid for (payment mode) or a subscription started."""
    if session.get("mode") == "payment":
        on_checkout_session_paid(session, event_created=event_created)
        return
    if session.get("mode") != "subscription" or not session.get("subscription"):
        return
    user = user_for_stripe_object(session)
    if user is None:
        raise BillingError(f"Checkout session {session['id']} names no user of ours.")
    subscription = session["subscription"]
    if isinstance(subscription, dict):
        subscription = subscription["id"]
    if session.get("status") == "complete":
        _subscription_state(
            user=user, subscription_id=subscription, status="active", event_created=event_created
        )


def on_checkout_session_paid(session: dict, *, event_created) -> None:
    """A credit purchase paid (at once, or later for delayed payment methods)."""
    metadata = session.get("metadata") or {}
    if session.get("mode") != "payment" or metadata.get("purpose") != "credits":
        return
    if session.get("payment_status") != "paid":
        return  # paid later: checkout.session.async_payment_succeeded comes then
    user = user_for_stripe_object(session)
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


def on_customer_subscription_changed(subscription: dict, *, event_created) -> None:
    """created, updated and deleted all carry the subscription's current status."""
    user = user_for_stripe_object(subscription)
    if user is None:
        raise BillingError(f"Subscription {subscription['id']} belongs to no user of ours.")
    _subscription_state(
        user=user,
        subscription_id=subscription["id"],
        status=subscription["status"],
        event_created=event_created,
    )


def _subscription_state(*, user: User, subscription_id: str, status: str, event_created) -> None:
    """Keep exactly one subscription per user: the first active one wins; a second one
    (two checkouts completed, racing webhooks) is canceled at Stripe."""
    account = billing_profile_ensure(user=user)
    account = BillingProfile.objects.select_for_update().get(pk=account.pk)
    current = account.stripe_subscription_id
    if current and current != subscription_id:
        current_active = account.has_active_subscription
        if current_active and is_active_subscription(status):
            gateway.cancel_subscription(subscription_id=subscription_id)
            logger.warning(
                "user %s had subscription %s; duplicate %s canceled",
                user.pk,
                current,
                subscription_id,
            )
            return
        if not is_active_subscription(status):
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
    if is_active_subscription(status):
        _after_billing_ready(user)


def on_invoice_created(invoice: dict, *, event_created) -> None:
    invoice_apply(invoice, status=BillingHistory.Status.PENDING, event_created=event_created)


def on_invoice_finalized(invoice: dict, *, event_created) -> None:
    invoice_apply(invoice, status=BillingHistory.Status.PENDING, event_created=event_created)


def on_invoice_paid(invoice: dict, *, event_created) -> None:
    invoice_apply(invoice, status=BillingHistory.Status.PAID, event_created=event_created)


def on_invoice_payment_failed(invoice: dict, *, event_created) -> None:
    invoice_apply(invoice, status=BillingHistory.Status.FAILED, event_created=event_created)


def on_invoice_voided(invoice: dict, *, event_created) -> None:
    invoice_apply(invoice, status=BillingHistory.Status.VOID, event_created=event_created)


def _after_billing_ready(user: User) -> None:
    """A user who waited for billing gets a place now, in this event's transaction (the
    Hopsworks account it wants is a job the placement queues)."""
    from clusters import services as placement
    from clusters.models import CapacityWait

    if CapacityWait.objects.filter(user=user, reason=CapacityWait.Reason.BILLING).exists():
        placement.assignment_place(user=user, actor="billing")
