"""Credit purchases (prepaid credits paid through Stripe Checkout) and what happens to them
afterwards: refunds and disputes take the credits back, from Stripe's webhooks.

Each purchase row is written with its PURCHASE ledger entry. A refund is one REFUND ledger
entry per Stripe refund (`stripe:refund:<re_id>`), a dispute an ADJUSTMENT that holds the
disputed amount (`stripe:dispute:<dp_id>:hold`) and, if the dispute is won, one that gives it
back (`...:release`). The ledger's unique references make a redelivered or reordered event
count once; the refunds applied are Stripe's list for the charge as it is now, so whichever
refund event comes first applies every refund Stripe has, and the others find nothing left.
Lock order: the purchase row, then the user's credits (credits_apply).
"""

from __future__ import annotations

import logging
from decimal import Decimal

from django.db import transaction
from django.db.models import Q

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.checkout import BillingError
from billing.credits import Kind, credits_add
from billing.models import BillingHistory, CreditLedgerEntry, CreditPurchase

logger = logging.getLogger(__name__)

ZERO = Decimal("0")
Status = CreditPurchase.Status
# Refunds that take (or will take) the money back; a failed or canceled one gives it back.
REFUND_COUNTS = ("succeeded", "pending", "requires_action")
# A dispute closed this way leaves the money with us: the hold is released.
DISPUTE_RELEASED = ("won", "warning_closed")


def credit_purchase_apply(*, user: User, session: dict) -> CreditPurchase:
    """A paid Checkout session: the purchase's row and its credits, in one transaction;
    a redelivery changes nothing."""
    currency = session["currency"]
    amount = gateway.from_minor_units(session["amount_total"], currency)
    payment_intent = session.get("payment_intent") or ""
    if isinstance(payment_intent, dict):
        payment_intent = payment_intent.get("id") or ""
    with transaction.atomic():
        purchase, _ = CreditPurchase.objects.get_or_create(
            stripe_checkout_session_id=session["id"],
            defaults={
                "user": user,
                "stripe_payment_intent_id": payment_intent,
                "amount": amount,
                "currency": currency.upper(),
            },
        )
        entry = credits_add(
            user=user,
            kind=Kind.PURCHASE,
            amount=amount,
            reference=f"stripe:checkout:{session['id']}",
            actor="stripe",
            reason=f"Credit purchase (Checkout {session['id']})",
        )
        if entry is not None:
            _receipt(purchase, entry.reference, amount, "Credit purchase (receipt)")
    return purchase


def _receipt(purchase: CreditPurchase, reference: str, amount: Decimal, description: str) -> None:
    """The purchase or refund in billing history, once (by its reference)."""
    BillingHistory.objects.get_or_create(
        receipt_reference=reference,
        defaults={
            "user": purchase.user,
            "amount": amount,
            "currency": purchase.currency,
            "description": description,
            "status": BillingHistory.Status.PAID,
        },
    )


def _ids(obj: dict, *names: str) -> list[str]:
    found = []
    for name in names:
        value = obj.get(name)
        value = value.get("id") if isinstance(value, dict) else value
        found.append(value or "")
    return found


def credit_purchase_for(*, charge_id: str = "", payment_intent_id: str = "", lock: bool = False):
    """The purchase a charge or payment intent paid, or None."""
    match = Q(pk__in=[])
    if charge_id:
        match |= Q(stripe_charge_id=charge_id)
    if payment_intent_id:
        match |= Q(stripe_payment_intent_id=payment_intent_id)
    rows = CreditPurchase.objects.filter(match).order_by("pk")
    return (rows.select_for_update() if lock else rows).first()


def is_credit_charge(charge: dict) -> bool:
    """A charge that paid a credit purchase (its payment intent's metadata says so)."""
    return (charge.get("metadata") or {}).get("purpose") == "credits"


def credit_purchase_refunds_apply(
    *, charge_id: str, payment_intent_id: str = ""
) -> CreditPurchase | None:
    """Take back the credits of every refund Stripe lists for the purchase's charge now,
    each once (by its id), never more than the purchase. None if the charge paid no
    purchase of ours (yet)."""
    with transaction.atomic():
        purchase = credit_purchase_for(
            charge_id=charge_id, payment_intent_id=payment_intent_id, lock=True
        )
        if purchase is None:
            return None
        if charge_id and not purchase.stripe_charge_id:
            purchase.stripe_charge_id = charge_id
        if not purchase.stripe_charge_id:
            return purchase  # no charge named yet: the charge.refunded event names it
        refunds = gateway.list_refunds(charge_id=purchase.stripe_charge_id)
        for refund in sorted(refunds, key=lambda r: (r.get("created") or 0, r["id"])):
            _refund_apply(purchase, refund)
        if purchase.status not in (Status.DISPUTED, Status.DISPUTE_LOST):
            purchase.status = _refund_status(purchase)
        purchase.save()
    return purchase


def _refund_status(purchase: CreditPurchase) -> str:
    if purchase.amount_refunded >= purchase.amount:
        return Status.REFUNDED
    if purchase.amount_refunded > 0:
        return Status.PARTIALLY_REFUNDED
    return purchase.status if purchase.status == Status.DISPUTE_WON else Status.PAID


def _entry(reference: str) -> CreditLedgerEntry | None:
    return CreditLedgerEntry.objects.filter(reference=reference).first()


def _refund_apply(purchase: CreditPurchase, refund: dict) -> None:
    reference = f"stripe:refund:{refund['id']}"
    taken = _entry(reference)
    if refund.get("status") in REFUND_COUNTS:
        if taken is not None:
            return
        currency = refund.get("currency") or purchase.currency
        amount = gateway.from_minor_units(refund["amount"], currency)
        amount = min(amount, purchase.amount - purchase.amount_refunded - purchase.amount_disputed)
        if amount <= 0:
            return  # nothing of the purchase is left to take back
        if credits_add(
            user=purchase.user,
            kind=Kind.REFUND,
            amount=-amount,
            reference=reference,
            actor="stripe",
            reason=f"Refund {refund['id']} of purchase {purchase.stripe_checkout_session_id}",
        ):
            purchase.amount_refunded += amount
            _receipt(purchase, reference, -amount, "Refund of credit purchase")
    elif taken is not None and refund.get("status") in ("failed", "canceled"):
        # The money never left: the credits taken for it come back, once.
        given = credits_add(
            user=purchase.user,
            kind=Kind.ADJUSTMENT,
            amount=-taken.amount,
            reference=f"{reference}:{refund['status']}",
            actor="stripe",
            reason=f"Refund {refund['id']} {refund['status']}: credits given back",
        )
        if given is not None:
            purchase.amount_refunded += taken.amount
            _receipt(purchase, given.reference, given.amount, "Refund of credit purchase failed")


def credit_purchase_dispute_apply(*, dispute: dict, closed: bool) -> CreditPurchase | None:
    """A dispute opened holds the disputed amount (at most what is left of the purchase);
    closed, it is released if won and stays taken if lost. A closed dispute whose opening
    was not applied yet is held first, so the order of events does not matter. None if the
    dispute is about no purchase of ours (nothing written)."""
    charge_id, payment_intent_id = _ids(dispute, "charge", "payment_intent")
    with transaction.atomic():
        purchase = credit_purchase_for(
            charge_id=charge_id, payment_intent_id=payment_intent_id, lock=True
        )
        if purchase is None:
            return None
        if charge_id and not purchase.stripe_charge_id:
            purchase.stripe_charge_id = charge_id
        hold = _entry(f"stripe:dispute:{dispute['id']}:hold")
        if hold is None:
            currency = dispute.get("currency") or purchase.currency
            amount = gateway.from_minor_units(dispute["amount"], currency)
            amount = min(amount, purchase.amount - purchase.amount_refunded)
            amount = amount - purchase.amount_disputed
            if amount > 0:
                hold = credits_add(
                    user=purchase.user,
                    kind=Kind.ADJUSTMENT,
                    amount=-amount,
                    reference=f"stripe:dispute:{dispute['id']}:hold",
                    actor="stripe",
                    reason=f"Dispute {dispute['id']} opened: the disputed amount is held",
                )
                purchase.amount_disputed += amount
            purchase.status = Status.DISPUTED
        if closed and dispute.get("status") in DISPUTE_RELEASED:
            if hold is not None:
                released = credits_add(
                    user=purchase.user,
                    kind=Kind.ADJUSTMENT,
                    amount=-hold.amount,
                    reference=f"stripe:dispute:{dispute['id']}:release",
                    actor="stripe",
                    reason=f"Dispute {dispute['id']} {dispute['status']}: the hold is released",
                )
                if released is not None:
                    purchase.amount_disputed += hold.amount
            purchase.status = Status.DISPUTE_WON
        elif closed and dispute.get("status") == "lost":
            purchase.status = Status.DISPUTE_LOST  # the hold is final
        purchase.save()
    return purchase


def credit_purchase_refund_request(
    *, purchase: CreditPurchase, amount: Decimal | None = None, actor
) -> dict:
    """An operator refunds (part of) a purchase: asked of Stripe only. The credits are taken
    back when Stripe's `charge.refunded` webhook confirms it (the same path as a refund made
    in Stripe's dashboard). Raises BillingError, with nothing sent, for a refund larger than
    what is left or of a purchase with nothing left."""
    with transaction.atomic():
        purchase = CreditPurchase.objects.select_for_update().get(pk=purchase.pk)
        left = purchase.refundable
        if left <= 0:
            raise BillingError(
                f"Purchase {purchase.stripe_checkout_session_id} has nothing left to refund "
                f"(refunded {purchase.amount_refunded}, disputed {purchase.amount_disputed} "
                f"of {purchase.amount} {purchase.currency})."
            )
        amount = left if amount is None else amount
        if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
            raise BillingError("A refund is a positive amount in dollars and cents.")
        if amount > left:
            raise BillingError(
                f"A refund of {amount} is more than what is left of the purchase "
                f"({left} {purchase.currency})."
            )
        if not purchase.stripe_payment_intent_id:
            raise BillingError("The purchase has no Stripe payment to refund.")
        # The same request (same purchase state and amount) is one refund at Stripe.
        key = f"credit-refund-{purchase.pk}-{purchase.amount_refunded}-{amount}"
        refund = gateway.create_refund(
            payment_intent_id=purchase.stripe_payment_intent_id,
            amount=amount,
            currency=purchase.currency,
            idempotency_key=key,
        )
    logger.info("refund of %s requested by %s: %s", purchase.pk, actor, refund.get("id"))
    return refund
