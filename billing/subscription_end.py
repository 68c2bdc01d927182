"""A postpaid subscription that ended outside our flow (the customer portal, Stripe's
dashboard): Stripe stops billing it, and the meter events it counted in the period that was
running are invoiced by nobody. So, once per subscription (`SubscriptionEnd`):

- usage after the end is not reported to it (the profile's status is canceled: the usage is
  held as unbilled until a new subscription is live, `billing.selectors.unbilled_usage`);
- if Stripe has no invoice of the subscription covering the period up to the end, a final
  invoice is made of what Stripe counted on our meters for the customer over that period:
  a draft (`final-<subscription>`), one item per resource, finalized, through the gateway.

An end we caused ourselves (an account close cancels with `invoice_now`) is recorded
before Stripe is asked, and no further invoice is made for it.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.models import Price, StripeCatalogEntry, SubscriptionEnd
from plumbing.jobs import defer

logger = logging.getLogger(__name__)


def subscription_end_record(*, user: User, subscription: dict) -> SubscriptionEnd:
    """Called for `customer.subscription.deleted` in the event's transaction: the first
    delivery records the end and queues the settlement; a later one changes nothing."""
    from billing.tasks import settle_ended_subscription  # tasks import this module

    items = (subscription.get("items") or {}).get("data") or []
    starts = [i["current_period_start"] for i in items if i.get("current_period_start")]
    ended = subscription.get("ended_at") or subscription.get("canceled_at")
    end, created = SubscriptionEnd.objects.get_or_create(
        subscription_id=subscription["id"],
        defaults={
            "user": user,
            "ended_by": SubscriptionEnd.EndedBy.STRIPE,
            "period_start": gateway.datetime_from_timestamp(min(starts)) if starts else None,
            "ended_at": gateway.datetime_from_timestamp(ended) if ended else timezone.now(),
        },
    )
    if created:
        defer(
            settle_ended_subscription,
            queueing_lock=f"subscription-end:{end.pk}",
            subscription_id=end.pk,
        )
    return end


def final_item_key(subscription_id: str, resource: str) -> str:
    """The idempotency key and `final_item` metadata of a final invoice's item."""
    return f"final-{subscription_id}-{resource}"


def final_item_resource(line: dict) -> str | None:
    """The resource a line of a final invoice charges (its `final_item` metadata), or None
    for any other line."""
    key = (line.get("metadata") or {}).get("final_item") or ""
    head, _, resource = key.rpartition("-")
    return resource if head.startswith("final-") and resource in Price.Resource.values else None


def _minute(moment: dt.datetime, *, up: bool) -> int:
    seconds = int(moment.timestamp())
    return seconds + (-seconds % 60 if up else -(seconds % 60))


def subscription_end_settle(*, subscription_id: str) -> SubscriptionEnd:
    """Invoice what was reported to an ended subscription and not invoiced (see above).
    Every Stripe call is idempotent or looked up first, so a retry after a lost answer makes
    no second invoice or item. Raises StripeGatewayError (recorded) to be retried."""
    with transaction.atomic():
        end = SubscriptionEnd.objects.select_for_update().get(pk=subscription_id)
        if end.status != SubscriptionEnd.Status.PENDING or end.ended_by != end.EndedBy.STRIPE:
            return end
        end.attempts += 1
        end.save(update_fields=["attempts"])
    try:
        _settle(end)
    except gateway.StripeGatewayError as error:
        SubscriptionEnd.objects.filter(pk=end.pk).update(last_error=str(error))
        raise
    return end


def _settle(end: SubscriptionEnd) -> None:
    customer_id = end.user.stripe_customer_id
    start, ended = end.period_start, end.ended_at
    invoices = gateway.list_subscription_invoices(subscription_id=end.subscription_id)
    covering = [
        i
        for i in invoices
        if i.get("status") not in ("draft", "void")
        and i.get("period_end")
        and gateway.datetime_from_timestamp(i["period_end"]) >= ended
    ]
    if covering:
        _finish(end, SubscriptionEnd.Status.COVERED, invoice_id=covering[0]["id"])
        return
    if not customer_id or start is None:
        _finish(end, SubscriptionEnd.Status.NOTHING_OWED)
        return
    # What Stripe counted for the customer on each of our meters in the unbilled period.
    lo, hi = _minute(start, up=False), _minute(ended, up=True)
    counted = {
        entry.resource: gateway.meter_event_summary_total(
            meter_id=entry.meter_id, customer_id=customer_id, start_time=lo, end_time=hi
        )
        for entry in StripeCatalogEntry.objects.order_by("resource")
    }
    counted = {resource: cents for resource, cents in counted.items() if cents}
    if not counted:
        _finish(end, SubscriptionEnd.Status.NOTHING_OWED)
        return
    key = f"final-{end.subscription_id}"
    invoice = end.final_invoice_id and gateway.retrieve_invoice(invoice_id=end.final_invoice_id)
    if not invoice:
        invoice = gateway.create_draft_invoice(
            customer_id=customer_id,
            description=f"Final usage of subscription {end.subscription_id} "
            f"({start:%Y-%m-%d} to {ended:%Y-%m-%d %H:%M} UTC)",
            idempotency_key=key,
            metadata={"final_for_subscription": end.subscription_id},
        )
        SubscriptionEnd.objects.filter(pk=end.pk).update(final_invoice_id=invoice["id"])
        end.final_invoice_id = invoice["id"]
    if invoice.get("status") == "draft":
        present = {
            (line.get("metadata") or {}).get("final_item")
            for line in gateway.list_invoice_lines(invoice_id=invoice["id"])
        }
        currency = settings.STRIPE_CURRENCY
        for resource, cents in counted.items():
            item_key = final_item_key(end.subscription_id, resource)
            if item_key in present:
                continue
            gateway.create_invoice_item(
                customer_id=customer_id,
                amount=gateway.from_minor_units(cents, currency),
                currency=currency,
                description=f"{resource} usage reported to subscription {end.subscription_id}",
                subscription_id=None,
                invoice_id=invoice["id"],
                idempotency_key=item_key,
                metadata={"final_item": item_key},
            )
        gateway.finalize_invoice(invoice_id=invoice["id"])
    _finish(
        end,
        SubscriptionEnd.Status.INVOICED,
        invoice_id=invoice["id"],
        cents=sum(counted.values()),
    )


def _finish(end: SubscriptionEnd, status: str, *, invoice_id: str = "", cents: int = 0) -> None:
    SubscriptionEnd.objects.filter(pk=end.pk).update(
        status=status,
        final_invoice_id=invoice_id or end.final_invoice_id,
        invoiced_cents=cents,
        last_error="",
        settled_at=timezone.now(),
    )
    end.status = status
    logger.info("subscription %s ended outside our flow: %s", end.subscription_id, status)
