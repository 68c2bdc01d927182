"""Stripe webhook events: stored once by their id, then processed in a transaction.

The dispatch table comes first: each event type we act on, and the one function that acts
on it (below, in the same order). Types not listed are stored and marked ignored. An event
about a customer we do not know is stored as unmatched: answered 200 (Stripe would
otherwise redeliver it for days and may disable the endpoint) and processed again by an
operator once the customer is linked.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User
from billing import purchases
from billing import stripe_gateway as gateway
from billing.checkout import BillingError
from billing.invoices import invoice_apply, invoice_credits_refresh, invoice_refund_apply
from billing.models import BillingHistory, BillingProfile, StripeEvent, is_active_subscription
from billing.profiles import billing_profile_ensure
from billing.selectors import user_for_stripe_object
from billing.standing import standing_evaluate
from plumbing.jobs import defer

logger = logging.getLogger(__name__)

# An event in one of these states is not processed again.
DONE = (StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED)
# A subscription in one of these is over for good (its id never becomes active again).
ENDED = BillingProfile.ENDED_SUBSCRIPTION

RETRY_BATCH = 100
RETRY_MAX_ATTEMPTS = 10
# Stripe objects are a few levels deep; anything much deeper is not an event of theirs.
MAX_EVENT_DEPTH = 64
LATEST_TIMESTAMP = int(dt.datetime(9999, 12, 31, tzinfo=dt.UTC).timestamp())


class UnmatchedCustomer(BillingError):
    """The event is about a Stripe customer or user that is not ours (yet)."""


def _handlers() -> dict:
    """Event type -> the function that applies it (looked up when an event is processed,
    so the table can stand above the functions it names)."""
    return {
        "checkout.session.completed": on_checkout_session_completed,
        "checkout.session.async_payment_succeeded": on_checkout_session_paid,
        "customer.subscription.created": on_customer_subscription_changed,
        "customer.subscription.updated": on_customer_subscription_changed,
        "customer.subscription.deleted": on_customer_subscription_deleted,
        "invoice.created": on_invoice_created,
        "invoice.finalized": on_invoice_finalized,
        "invoice.paid": on_invoice_paid,
        "invoice.payment_failed": on_invoice_payment_failed,
        "invoice.voided": on_invoice_voided,
        "invoice.marked_uncollectible": on_invoice_marked_uncollectible,
        "credit_note.created": on_credit_note_changed,
        "credit_note.updated": on_credit_note_changed,
        "credit_note.voided": on_credit_note_changed,
        "charge.refunded": on_charge_refunded,
        "refund.created": on_refund_changed,
        "refund.updated": on_refund_changed,
        "charge.dispute.created": on_charge_dispute_created,
        "charge.dispute.closed": on_charge_dispute_closed,
    }


def stripe_event_receive(*, payload: bytes, signature: str | None) -> StripeEvent:
    """Verify a webhook delivery, store it (once, by event id) and queue its processing in
    the same transaction: Stripe gets its answer at once, and a worker applies the event
    (retried with backoff if that fails). A redelivery of a processed event changes nothing.

    Raises `gateway.WebhookSignatureError` for a bad or stale signature, and ValueError for
    a signed body that is not a Stripe event (nothing stored in either case).
    """
    from billing.tasks import stripe_event_defer  # tasks import this module

    event = _storable(gateway.verify_webhook(payload=payload, signature_header=signature))
    with transaction.atomic():
        stored, _ = StripeEvent.objects.get_or_create(
            id=event["id"],
            defaults={
                "type": event["type"],
                "created": gateway.datetime_from_timestamp(event["created"]),
                "livemode": bool(event.get("livemode")),
                "payload": event,
            },
        )
        if stored.status not in DONE:
            stripe_event_defer(event_id=stored.id)
    return stored


def _storable(event: dict) -> dict:
    """The event checked for Stripe's envelope, with text PostgreSQL cannot store (NUL, lone
    surrogates) replaced by U+FFFD: it is signed, so it is Stripe's and is kept."""
    event = _clean(event, depth=0)
    if not isinstance(event.get("id"), str) or not event["id"].strip():
        raise ValueError("the event has no id")
    if not isinstance(event.get("type"), str) or not event["type"].strip():
        raise ValueError("the event has no type")
    created = event.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        raise ValueError("created is not a Unix timestamp")
    if not 0 <= created <= LATEST_TIMESTAMP:
        raise ValueError("created is not a plausible Unix timestamp")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise ValueError("the event has no data.object")
    return event


def _clean(value, *, depth: int):
    if depth > MAX_EVENT_DEPTH:
        raise ValueError(f"the event is nested deeper than {MAX_EVENT_DEPTH} levels")
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, list):
        return [_clean(item, depth=depth + 1) for item in value]
    if isinstance(value, dict):
        return {_clean_text(key): _clean(item, depth=depth + 1) for key, item in value.items()}
    return value


def _clean_text(text: str) -> str:
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (\ud800): not storable as UTF-8
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def stripe_event_process(*, event_id: str) -> StripeEvent:
    """Process a stored event once. A failure is recorded with its error and left for
    Stripe's redelivery or `retry_stripe_events`; an event about a customer we do not know
    is recorded as unmatched; a processed event is not processed again."""
    with transaction.atomic():
        event = StripeEvent.objects.select_for_update().get(pk=event_id)
        if event.status in DONE:
            return event
        handler = _handlers().get(event.type)
        event.attempts += 1
        event.last_attempt_at = timezone.now()
        try:
            with transaction.atomic():
                if handler is not None:
                    handler(event.payload["data"]["object"], event_created=event.created)
        except UnmatchedCustomer as error:
            logger.info("Stripe event %s (%s) is unmatched: %s", event.id, event.type, error)
            event.status = StripeEvent.Status.UNMATCHED
            event.error = str(error)
        except Exception as error:
            logger.exception("Stripe event %s (%s) failed", event.id, event.type)
            event.status = StripeEvent.Status.FAILED
            event.error = f"{type(error).__name__}: {error}"
        else:
            event.status = StripeEvent.Status.PROCESSED if handler else StripeEvent.Status.IGNORED
            event.error = ""
            event.processed_at = timezone.now()
        event.save(update_fields=["status", "error", "attempts", "processed_at", "last_attempt_at"])
    return event


def stripe_events_retry(
    *, limit: int = RETRY_BATCH, max_attempts: int = RETRY_MAX_ATTEMPTS
) -> list[StripeEvent]:
    """Process again the failed (or never processed) events, the one whose last attempt is
    oldest first, at most `limit` of them. Events tried `max_attempts` times, and unmatched
    ones, are left to an operator ("Process again" in the admin)."""
    due = StripeEvent.objects.filter(
        status__in=[StripeEvent.Status.FAILED, StripeEvent.Status.RECEIVED],
        attempts__lt=max_attempts,
    ).order_by(F("last_attempt_at").asc(nulls_first=True), "created", "id")[:limit]
    return [
        stripe_event_process(event_id=event_id) for event_id in due.values_list("pk", flat=True)
    ]


def stripe_events_worn_out(*, max_attempts: int = RETRY_MAX_ATTEMPTS):
    """Failed events no retry will take any more: they need an operator."""
    return StripeEvent.objects.filter(
        status__in=[StripeEvent.Status.FAILED, StripeEvent.Status.RECEIVED],
        attempts__gte=max_attempts,
    )


# Events whose handler needs a user of ours (found by `user_for_stripe_object`).
_NEED_A_USER = (
    "checkout.",
    "customer.subscription.",
    "invoice.",
    "credit_note.",
    "charge.refunded",
)


def stripe_event_not_processable(event: StripeEvent) -> str | None:
    """Why processing this event again now would change nothing, or None when it is worth
    queueing: an event done is done; an unmatched one whose customer is still no user of
    ours would only be unmatched again."""
    if event.status in DONE:
        return f"already {event.status}; nothing to do"
    if event.status != StripeEvent.Status.UNMATCHED or not event.type.startswith(_NEED_A_USER):
        return None
    obj = (event.payload.get("data") or {}).get("object") or {}
    if user_for_stripe_object(obj) is not None:
        return None
    customer = obj.get("customer")
    customer = customer.get("id") if isinstance(customer, dict) else customer
    return (
        f"it still names no user of ours (customer {customer or 'none'}); link the customer "
        "to a user first"
    )


def _user_or_unmatched(obj: dict, what: str) -> User:
    user = user_for_stripe_object(obj)
    if user is None:
        customer = obj.get("customer")
        customer = customer.get("id") if isinstance(customer, dict) else customer
        raise UnmatchedCustomer(
            f"{what} {obj.get('id')} names no user of ours (customer {customer or 'none'}); "
            "process it again once the customer is linked to a user."
        )
    return user


def on_checkout_session_completed(session: dict, *, event_created) -> None:
    """A Checkout finished: credits paid for (payment mode) or a subscription started."""
    if session.get("mode") == "payment":
        on_checkout_session_paid(session, event_created=event_created)
        return
    if session.get("mode") != "subscription" or not session.get("subscription"):
        return
    user = _user_or_unmatched(session, "Checkout session")
    subscription = session["subscription"]
    if isinstance(subscription, dict):
        subscription = subscription["id"]
    if session.get("status") == "complete":
        _subscription_state(
            user=user, subscription_id=subscription, status="active", event_created=event_created
        )
        _standing(user)


def on_checkout_session_paid(session: dict, *, event_created) -> None:
    """A credit purchase paid (at once, or later for delayed payment methods)."""
    metadata = session.get("metadata") or {}
    if session.get("mode") != "payment" or metadata.get("purpose") != "credits":
        return
    if session.get("payment_status") != "paid":
        return  # paid later: checkout.session.async_payment_succeeded comes then
    user = _user_or_unmatched(session, "Checkout session")
    purchases.credit_purchase_apply(user=user, session=session)
    _after_billing_ready(user)


def on_customer_subscription_changed(subscription: dict, *, event_created) -> None:
    """created, updated and deleted all carry the subscription's current status."""
    user = _user_or_unmatched(subscription, "Subscription")
    _subscription_state(
        user=user,
        subscription_id=subscription["id"],
        status=subscription["status"],
        event_created=event_created,
    )
    _standing(user)


def on_customer_subscription_deleted(subscription: dict, *, event_created) -> None:
    """The subscription ended. Usage is no longer reported to it (held as unbilled until a
    new one is live); when it was the user's subscription and we did not end it ourselves,
    what was reported to it is invoiced (billing.subscription_end), once."""
    from billing.subscription_end import subscription_end_record

    user = _user_or_unmatched(subscription, "Subscription")
    was_current = BillingProfile.objects.filter(
        user=user, stripe_subscription_id=subscription["id"]
    ).exists()
    on_customer_subscription_changed(subscription, event_created=event_created)
    if was_current:
        subscription_end_record(user=user, subscription=subscription)


def _subscription_state(*, user: User, subscription_id: str, status: str, event_created) -> None:
    """Keep exactly one subscription per user: the first active one wins; a second one
    (two checkouts completed, racing webhooks) is canceled at Stripe.

    An ended status (canceled, incomplete_expired) is final for its subscription id: no
    later event revives it. Events of the same second that disagree are settled by the
    subscription as Stripe holds it now, and so is a subscription that would replace an
    ended one (it may itself have ended since, its events still on their way)."""
    account = billing_profile_ensure(user=user)
    account = BillingProfile.objects.select_for_update().get(pk=account.pk)
    current = account.stripe_subscription_id
    if current == subscription_id and account.subscription_status in ENDED:
        return
    replacing_an_ended = (
        current and current != subscription_id and not account.has_active_subscription
    )
    if replacing_an_ended and is_active_subscription(status):
        status = _stripe_status(subscription_id)
    same_second = (
        current == subscription_id
        and account.subscription_event_created is not None
        and event_created == account.subscription_event_created
    )
    if same_second and status != account.subscription_status:
        status = _stripe_status(subscription_id)
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
        _report_held_usage()


def _report_held_usage() -> None:
    """Usage held as unbilled while the user had no live subscription is reported as soon
    as one is live: the report job is queued in this event's transaction (once)."""
    from billing.tasks import report_usage_now  # tasks import this module

    defer(report_usage_now, queueing_lock="report-usage")


def _stripe_status(subscription_id: str) -> str:
    return gateway.retrieve_subscription(subscription_id=subscription_id)["status"]


def on_invoice_created(invoice: dict, *, event_created) -> None:
    _user_or_unmatched(invoice, "Invoice")
    invoice_apply(invoice, status=BillingHistory.Status.PENDING, event_created=event_created)


def on_invoice_finalized(invoice: dict, *, event_created) -> None:
    _user_or_unmatched(invoice, "Invoice")
    invoice_apply(invoice, status=BillingHistory.Status.PENDING, event_created=event_created)


def on_invoice_paid(invoice: dict, *, event_created) -> None:
    """Paid: a dunning stop ends once no failed invoice of the user is left unpaid."""
    user = _user_or_unmatched(invoice, "Invoice")
    invoice_apply(invoice, status=BillingHistory.Status.PAID, event_created=event_created)
    _standing(user)


def on_invoice_payment_failed(invoice: dict, *, event_created) -> None:
    """Dunning starts: a stop with DUNNING_GRACE_HOURS and a mail to the user (Stripe's
    retries run meanwhile). An older failure arriving after the paid event changes nothing
    (invoice_apply keeps paid), so it stops no one."""
    user = _user_or_unmatched(invoice, "Invoice")
    invoice_apply(invoice, status=BillingHistory.Status.FAILED, event_created=event_created)
    _standing(user)


def on_invoice_voided(invoice: dict, *, event_created) -> None:
    user = _user_or_unmatched(invoice, "Invoice")
    invoice_apply(invoice, status=BillingHistory.Status.VOID, event_created=event_created)
    _standing(user)


def on_invoice_marked_uncollectible(invoice: dict, *, event_created) -> None:
    """Stripe gave up collecting: `failed` in billing history, `uncollectible` kept beside."""
    user = _user_or_unmatched(invoice, "Invoice")
    invoice_apply(invoice, status=BillingHistory.Status.FAILED, event_created=event_created)
    _standing(user)


def on_credit_note_changed(credit_note: dict, *, event_created) -> None:
    """A credit note issued or voided: the invoice's credited total, as Stripe lists it."""
    _user_or_unmatched(credit_note, "Credit note")
    invoice = credit_note.get("invoice")
    invoice = invoice.get("id") if isinstance(invoice, dict) else invoice
    if invoice:
        invoice_credits_refresh(invoice_id=invoice)


def on_charge_refunded(charge: dict, *, event_created) -> None:
    """Money returned on a charge: a credit purchase's credits are taken back; otherwise it
    is shown on the invoice it paid, if it paid one. A refund of a credit purchase whose
    checkout event has not been applied yet fails, to be retried once it has."""
    _user_or_unmatched(charge, "Charge")
    charge_id, payment_intent = charge["id"], charge.get("payment_intent")
    if isinstance(payment_intent, dict):
        payment_intent = payment_intent.get("id")
    applied = purchases.credit_purchase_refunds_apply(
        charge_id=charge_id, payment_intent_id=payment_intent or ""
    )
    if applied is not None:
        return
    if purchases.is_credit_charge(charge):
        raise LookupError(
            f"charge {charge_id} paid a credit purchase not recorded yet (its "
            "checkout.session.completed event is not applied); the event is retried"
        )
    invoice_refund_apply(charge=charge)


def on_refund_changed(refund: dict, *, event_created) -> None:
    """A refund created or updated (pending -> succeeded or failed): for a credit purchase,
    the same as charge.refunded. Refunds of anything else, and of purchases not recorded
    yet, are left to charge.refunded (which Stripe sends for each refund, and retries)."""
    charge = refund.get("charge")
    charge = charge.get("id") if isinstance(charge, dict) else charge
    payment_intent = refund.get("payment_intent")
    if isinstance(payment_intent, dict):
        payment_intent = payment_intent.get("id")
    if charge or payment_intent:
        purchases.credit_purchase_refunds_apply(
            charge_id=charge or "", payment_intent_id=payment_intent or ""
        )


def on_charge_dispute_created(dispute: dict, *, event_created) -> None:
    _dispute(dispute, closed=False)


def on_charge_dispute_closed(dispute: dict, *, event_created) -> None:
    _dispute(dispute, closed=True)


def _dispute(dispute: dict, *, closed: bool) -> None:
    """Disputes of credit purchases hold (and release or keep) the credits. A dispute about
    a charge that paid no purchase of ours is unmatched, with nothing written."""
    if purchases.credit_purchase_dispute_apply(dispute=dispute, closed=closed) is None:
        raise UnmatchedCustomer(
            f"dispute {dispute.get('id')} is about charge {dispute.get('charge')} "
            f"(payment intent {dispute.get('payment_intent') or 'none'}), which paid no credit "
            "purchase of ours; nothing was held. Process it again once the purchase is recorded."
        )


def _standing(user: User) -> None:
    """The user's stops follow this event at once, in its transaction (a job's, not the
    webhook request's): opened, resolved or enforced."""
    standing_evaluate(user_ids=[user.pk], actor="stripe")


def _after_billing_ready(user: User) -> None:
    """A user who waited for billing gets a place now, in this event's transaction (the
    Hopsworks account it wants is a job the placement queues)."""
    from clusters import services as placement
    from clusters.models import CapacityWait

    if CapacityWait.objects.filter(user=user, reason=CapacityWait.Reason.BILLING).exists():
        placement.assignment_place(user=user, actor="billing")
