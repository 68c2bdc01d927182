"""Operators' credits and debits, applied where the user's money is.

Prepaid: a ledger entry (a GRANT, or a negative ADJUSTMENT that may take the balance below
zero), written with its `BillingAdjustment` in one transaction. Postpaid: Stripe, through
the gateway: a credit on the customer's invoice balance (or a credit note on an open
invoice the operator picked), a debit as an invoice item on the next invoice. The
adjustment is committed `pending` first, then sent; while Stripe is unavailable it stays
pending with the error and a job sends it (`billing.send_billing_adjustment`). Its
`reference` is the idempotency key and the Stripe object's `billing_adjustment` metadata,
so a lost answer is looked up at Stripe before anything is sent again.

A prepaid user switched to postpaid with a negative balance carries the debt to Stripe
(`prepaid_debt_carry`): a ledger adjustment brings the balance back to zero and an invoice
item, with the same reference, puts the debt on the first postpaid invoice.

Lock order: the billing profile, then the user's credits (credits_apply), as
`billing_mode_set` takes them, so a grant and a switch never cross.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.credits import Kind, credits_add
from billing.models import (
    BillingAdjustment,
    BillingHistory,
    BillingModeChange,
    BillingProfile,
    CreditLedgerEntry,
    UserCredits,
)
from billing.pricing import to_cents
from billing.profiles import billing_profile_ensure
from plumbing.actors import actor_label
from plumbing.formatting import money, parse_money

logger = logging.getLogger(__name__)

Direction = BillingAdjustment.Direction
Channel = BillingAdjustment.Channel
Status = BillingAdjustment.Status
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
METADATA_KEY = "billing_adjustment"
# Stripe limits descriptions and memos; the reason is kept whole in our record.
MAX_DESCRIPTION = 300


class AdjustmentError(Exception):
    """An adjustment that cannot be made; the message says why and what to do."""


def adjustment_max() -> Decimal:
    return Decimal(str(settings.BILLING_ADJUSTMENT_MAX))


def parse_adjustment_amount(raw) -> Decimal:
    """Dollars as an operator types them: `25` or `25.00`; not `1e3`, not negative, not
    zero, at most BILLING_ADJUSTMENT_MAX."""
    try:
        amount = parse_money(str(raw))
    except ValueError as error:
        raise AdjustmentError(str(error)) from None
    if amount <= 0:
        raise AdjustmentError("The amount must be more than zero.")
    if amount > adjustment_max():
        raise AdjustmentError(
            f"An adjustment is at most {money(adjustment_max())} (BILLING_ADJUSTMENT_MAX); "
            "split a larger one and say why in each reason."
        )
    return amount.quantize(Decimal("0.01"))


def adjustment_reference(kind: str, *, token: str, user: User) -> str:
    """What makes one form submission for one user unique: `grant:<token>:<user>` (the
    reference grants always had) or `debit:<token>:<user>`."""
    if not TOKEN.fullmatch(token or ""):
        raise AdjustmentError("The form's token is missing or malformed: open the form again.")
    return f"{kind}:{token}:{user.pk}"


@dataclass(frozen=True)
class Applied:
    """What became of one user's adjustment: `created` is False when the reference was
    applied before (a resubmitted form), and then `adjustment` is the earlier one (None
    for a grant made before adjustments were recorded)."""

    adjustment: BillingAdjustment | None
    created: bool


def adjustment_make(
    *,
    user: User,
    direction: str,
    amount: Decimal,
    reason: str,
    actor,
    reference: str,
    invoice_id: str = "",
    send: bool = True,
) -> Applied:
    """Credit or debit a user by `amount` (dollars, positive) with a reason. Prepaid: done
    in the ledger now. Postpaid: recorded pending, then (with `send`) sent to Stripe once
    within the caller's deadline; what is still pending is queued for the job. Raises
    AdjustmentError, with nothing written, for what cannot be done."""
    amount = parse_adjustment_amount(amount)
    reason = (reason or "").strip()
    if not reason:
        raise AdjustmentError("Say why (the reason is kept with the adjustment).")
    if direction not in Direction.values:
        raise AdjustmentError(f"Unknown direction {direction!r}: credit or debit.")
    if invoice_id and direction != Direction.CREDIT:
        raise AdjustmentError("Only a credit can be a credit note on an invoice.")

    with transaction.atomic():
        profile = billing_profile_ensure(user=user)
        profile = BillingProfile.objects.select_for_update().get(pk=profile.pk)
        earlier = BillingAdjustment.objects.filter(reference=reference).first()
        if earlier is not None:
            return Applied(earlier, created=False)
        if profile.is_prepaid:
            if invoice_id:
                raise AdjustmentError(
                    "This user is prepaid: a credit note is for a postpaid invoice; grant "
                    "without picking an invoice to add to their prepaid balance."
                )
            adjustment = _ledger(user, direction, amount, reason, actor, reference)
            return Applied(adjustment, created=adjustment is not None)
        customer_id = User.objects.filter(pk=user.pk).values_list("stripe_customer_id", flat=True)
        customer_id = customer_id.first() or ""
        if not customer_id:
            raise AdjustmentError(
                "This user is postpaid and has no Stripe customer (they never added a "
                "payment method), so Stripe has nothing to credit or bill."
            )
        if invoice_id:
            _check_open_invoice(user, invoice_id)
            channel = Channel.CREDIT_NOTE
        else:
            channel = (
                Channel.CUSTOMER_BALANCE if direction == Direction.CREDIT else Channel.INVOICE_ITEM
            )
        adjustment = BillingAdjustment.objects.create(
            user=user,
            direction=direction,
            amount=amount,
            currency=settings.STRIPE_CURRENCY.lower(),
            channel=channel,
            reason=reason,
            actor=actor_label(actor),
            reference=reference,
            stripe_customer_id=customer_id,
            stripe_invoice_id=invoice_id,
        )
    if send:
        adjustment = adjustment_send(adjustment_id=adjustment.pk)
    if adjustment.status == Status.PENDING:
        adjustment_send_queue(adjustment=adjustment)
    return Applied(adjustment, created=True)


def _ledger(user, direction, amount, reason, actor, reference) -> BillingAdjustment | None:
    credit = direction == Direction.CREDIT
    entry = credits_add(
        user=user,
        kind=Kind.GRANT if credit else Kind.ADJUSTMENT,
        amount=amount if credit else -amount,
        reference=reference,
        actor=actor,
        reason=reason,
    )
    if entry is None:  # a grant of this reference made before adjustments were recorded
        return None
    return BillingAdjustment.objects.create(
        user=user,
        direction=direction,
        amount=amount,
        channel=Channel.LEDGER,
        reason=reason,
        actor=actor_label(actor),
        reference=reference,
        status=Status.SENT,
        sent_at=entry.created_at,
    )


def _check_open_invoice(user: User, invoice_id: str) -> None:
    invoice = BillingHistory.objects.filter(stripe_invoice_id=invoice_id).first()
    if invoice is None or invoice.user_id != user.pk:
        raise AdjustmentError(
            f"This user has no invoice {invoice_id}: pick one of their open invoices."
        )
    if invoice.stripe_status != "open":
        raise AdjustmentError(
            f"Invoice {invoice_id} is {invoice.stripe_status or invoice.status}, not open: a "
            "credit note here lowers what is still due; leave the invoice empty to credit "
            "their balance instead."
        )


# Sending ------------------------------------------------------------------------------


def _description(adjustment: BillingAdjustment) -> str:
    text = adjustment.reason
    if adjustment.channel != Channel.INVOICE_ITEM or not adjustment.reference.startswith("switch:"):
        text = f"{'Credit' if adjustment.direction == Direction.CREDIT else 'Charge'}: {text}"
    return text[:MAX_DESCRIPTION]


def _find_at_stripe(adjustment: BillingAdjustment) -> dict | None:
    """The object an earlier attempt made, if Stripe has it (its answer may have been lost
    after the idempotency key expired)."""
    if adjustment.channel == Channel.CUSTOMER_BALANCE:
        found = gateway.list_customer_balance_transactions(
            customer_id=adjustment.stripe_customer_id
        )
    elif adjustment.channel == Channel.CREDIT_NOTE:
        found = gateway.list_credit_notes(invoice_id=adjustment.stripe_invoice_id)
    else:
        found = gateway.list_invoice_items(customer_id=adjustment.stripe_customer_id)
    return next(
        (o for o in found if (o.get("metadata") or {}).get(METADATA_KEY) == adjustment.reference),
        None,
    )


def _create_at_stripe(adjustment: BillingAdjustment) -> dict:
    key, metadata = adjustment.reference, {METADATA_KEY: adjustment.reference}
    # Stripe's signs: a customer balance credit is negative, an invoice item charge positive.
    credit = adjustment.direction == Direction.CREDIT
    if adjustment.channel == Channel.CUSTOMER_BALANCE:
        return gateway.create_customer_balance_transaction(
            customer_id=adjustment.stripe_customer_id,
            amount=-adjustment.amount if credit else adjustment.amount,
            currency=adjustment.currency,
            description=_description(adjustment),
            idempotency_key=key,
            metadata=metadata,
        )
    if adjustment.channel == Channel.CREDIT_NOTE:
        return gateway.create_credit_note(
            invoice_id=adjustment.stripe_invoice_id,
            amount=adjustment.amount,
            currency=adjustment.currency,
            memo=_description(adjustment),
            idempotency_key=key,
            metadata=metadata,
        )
    profile = BillingProfile.objects.filter(user_id=adjustment.user_id).first()
    subscription = (
        profile.stripe_subscription_id if profile and profile.has_active_subscription else None
    )
    return gateway.create_invoice_item(
        customer_id=adjustment.stripe_customer_id,
        amount=-adjustment.amount if credit else adjustment.amount,
        currency=adjustment.currency,
        description=_description(adjustment),
        subscription_id=subscription or None,
        idempotency_key=key,
        metadata=metadata,
    )


def adjustment_send(*, adjustment_id: int) -> BillingAdjustment:
    """Send a pending adjustment to Stripe, once. The row is held while it is sent, so the
    web request and the job never send it at the same time (the one that finds it held
    leaves it to the other). A retriable error leaves it pending with the error; Stripe's
    refusal makes it failed."""
    with transaction.atomic():
        adjustment = (
            BillingAdjustment.objects.select_for_update(skip_locked=True)
            .filter(pk=adjustment_id)
            .first()
        )
        if adjustment is None:  # being sent right now, or gone
            return BillingAdjustment.objects.get(pk=adjustment_id)
        if adjustment.status != Status.PENDING:
            return adjustment
        adjustment.attempts += 1
        try:
            if not adjustment.stripe_customer_id:  # a carried debt waits for a customer
                from billing.checkout import customer_ensure  # checkout imports profiles

                adjustment.stripe_customer_id = customer_ensure(user=adjustment.user)
            found = _find_at_stripe(adjustment) if adjustment.attempts > 1 else None
            sent = found or _create_at_stripe(adjustment)
        except gateway.StripeGatewayError as error:
            adjustment.error = str(error)
            if not error.retriable:
                adjustment.status = Status.FAILED
            adjustment.save(update_fields=["attempts", "error", "status", "stripe_customer_id"])
            logger.warning("billing adjustment %s not sent: %s", adjustment.reference, error)
            return adjustment
        adjustment.status = Status.SENT
        adjustment.stripe_object_id = sent["id"]
        adjustment.sent_at = timezone.now()
        adjustment.error = ""
        adjustment.save()
    logger.info("billing adjustment %s sent as %s", adjustment.reference, sent["id"])
    return adjustment


def adjustment_send_queue(*, adjustment: BillingAdjustment):
    from billing.tasks import send_billing_adjustment  # tasks import this module
    from plumbing.jobs import defer

    return defer(
        send_billing_adjustment,
        queueing_lock=f"adjustment:{adjustment.pk}",
        adjustment_id=adjustment.pk,
    )


def adjustments_pending(*, older_than=None) -> list[BillingAdjustment]:
    rows = BillingAdjustment.objects.filter(status=Status.PENDING)
    if older_than is not None:
        rows = rows.filter(created_at__lt=older_than)
    return list(rows.order_by("created_at", "id"))


# A prepaid debt carried to Stripe -----------------------------------------------------


def prepaid_debt_carry(*, user: User, actor) -> BillingAdjustment | None:
    """A postpaid user's negative prepaid balance (left by the switch, or by prepaid days
    settled after it) moves to their next Stripe invoice: a ledger adjustment brings the
    balance back to zero and an invoice item bills the debt in cents, both under one
    reference (`switch:<mode change>:debt:<n>`), the item's sending queued in the same
    transaction. Under the profile's and the credits' locks: a balance carried once is
    zero, so running it again carries nothing."""
    with transaction.atomic():
        profile = billing_profile_ensure(user=user)
        profile = BillingProfile.objects.select_for_update().get(pk=profile.pk)
        if profile.is_prepaid:
            return None
        credits = UserCredits.objects.select_for_update().filter(user=user).first()
        if credits is None or credits.balance >= 0:
            return None
        change = (
            BillingModeChange.objects.filter(user=user, to_mode=BillingProfile.Mode.POSTPAID)
            .order_by("-effective_at", "-id")
            .first()
        )
        if change is None:  # never switched: a balance from before switches were recorded
            return None
        debt = -credits.balance
        billed = to_cents(debt)
        base = f"switch:{change.pk}:debt"
        # Each carry writes one ledger entry (a fraction of a cent no invoice item). Counted
        # among the user's own entries: no index serves a prefix of `reference` alone.
        earlier = CreditLedgerEntry.objects.filter(user=user, reference__startswith=f"{base}:")
        number = earlier.count() + 1
        reference = f"{base}:{number}"
        reason = (
            f"Negative prepaid balance of -${billed} carried to the first postpaid invoice "
            f"(postpaid since {change.effective_at:%Y-%m-%d %H:%M} UTC)"
        )
        credits_add(
            user=user,
            kind=Kind.ADJUSTMENT,
            amount=debt,
            reference=reference,
            actor=actor,
            reason=f"{reason}; billed by Stripe invoice item {reference}",
        )
        if billed <= 0:  # a fraction of a cent: nothing Stripe can bill
            return None
        customer_id = User.objects.filter(pk=user.pk).values_list("stripe_customer_id", flat=True)
        adjustment = BillingAdjustment.objects.create(
            user=user,
            direction=Direction.DEBIT,
            amount=billed,
            currency=settings.STRIPE_CURRENCY.lower(),
            channel=Channel.INVOICE_ITEM,
            reason=reason,
            actor=actor_label(actor),
            reference=reference,
            stripe_customer_id=customer_id.first() or "",
        )
        adjustment_send_queue(adjustment=adjustment)
    logger.info("prepaid debt of %s (%s) carried to Stripe", user.pk, billed)
    return adjustment


def users_with_prepaid_debt() -> list[User]:
    """Postpaid users whose prepaid balance is below zero (prepaid days settled after their
    switch): the debt is still to be carried."""
    in_debt = UserCredits.objects.filter(total_used__gt=F("total_purchased")).values("user_id")
    switched = BillingModeChange.objects.filter(to_mode=BillingProfile.Mode.POSTPAID)
    return list(
        User.objects.filter(pk__in=in_debt)
        .filter(pk__in=switched.values("user_id"))
        .exclude(billing_profile__mode=BillingProfile.Mode.PREPAID)
        .order_by("pk")
    )


def debt_carried(*, user: User) -> BillingAdjustment | None:
    """The debt carried by the user's latest switch to postpaid, if any."""
    change = (
        BillingModeChange.objects.filter(user=user, to_mode=BillingProfile.Mode.POSTPAID)
        .order_by("-effective_at", "-id")
        .first()
    )
    if change is None:
        return None
    return (
        BillingAdjustment.objects.filter(user=user, reference__startswith=f"switch:{change.pk}:")
        .order_by("-id")
        .first()
    )
