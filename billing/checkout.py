"""Paying us through Stripe Checkout: the user's Stripe customer, buying credits (prepaid),
and adding a payment method for the metered subscription (postpaid). Credits and
subscriptions take effect only when Stripe's signed webhook says so (stripe_events.py).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.models import BillingProfile, Price, StripeCatalogEntry
from billing.profiles import billing_profile_ensure
from plumbing.formatting import money, parse_money


class BillingError(Exception):
    """A billing request that cannot be done; the message is shown to the person."""


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


def topup_limits() -> tuple[Decimal, Decimal]:
    return Decimal(settings.CREDIT_TOPUP_MIN), Decimal(settings.CREDIT_TOPUP_MAX)


def parse_topup_amount(raw: str) -> Decimal:
    low, high = topup_limits()
    try:
        amount = parse_money(str(raw))
    except ValueError as error:
        raise BillingError(str(error)) from None
    if not low <= amount <= high:
        raise BillingError(f"Buy between {money(low)} and {money(high)} of credit at a time.")
    return amount


def credit_checkout_start(
    *, user: User, amount: Decimal, request_key: str, success_url: str, cancel_url: str
) -> str:
    """A Stripe Checkout page for buying credits. Credits are added only when Stripe's
    signed webhook says the payment went through, never on the way back from Checkout."""
    if billing_profile_ensure(user=user).mode != BillingProfile.Mode.PREPAID:
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
    account = billing_profile_ensure(user=user)
    if account.mode != BillingProfile.Mode.POSTPAID:
        raise BillingError("Your account is prepaid: buy credits instead.")
    if account.has_active_subscription:
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
