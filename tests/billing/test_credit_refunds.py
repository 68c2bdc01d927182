"""Refunds and disputes of credit purchases: the credits follow the money, once, whatever
order Stripe's events come in.

The real stripe SDK talks to a local fake Stripe; webhooks are signed with Stripe's scheme.
"""

from decimal import Decimal

import pytest
from django.urls import reverse

from billing import stripe_events
from billing.checkout import BillingError
from billing.credits import Kind, credits_add
from billing.models import BillingHistory, CreditLedgerEntry, CreditPurchase, StripeEvent
from billing.purchases import credit_purchase_refund_request
from tests.billing.stripe_helpers import balance, buy, login, prepaid_user
from tests.fakes.stripe import make_event

pytestmark = pytest.mark.django_db
D = Decimal


def bought(client, fake_stripe, deliver, user, amount="25"):
    """A credit purchase paid and its webhook applied; returns the charge at Stripe."""
    _, _, session_id = buy(client, fake_stripe, user, amount)
    session = fake_stripe.complete_checkout(session_id)
    deliver(make_event("checkout.session.completed", session))
    return fake_stripe.charge_of(session["payment_intent"])


def used(user, amount):
    credits_add(user=user, kind=Kind.USAGE, amount=-D(amount), reference="usage:1", actor="run")


def refunds(user):
    return list(CreditLedgerEntry.objects.filter(user=user, kind=Kind.REFUND))


def test_a_credit_purchase_records_its_payment_intent_with_its_ledger_entry(
    client, fake_stripe, deliver
):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")

    purchase = CreditPurchase.objects.get()
    [session_id] = fake_stripe.checkout_sessions
    assert purchase.user == user
    assert purchase.stripe_checkout_session_id == session_id
    assert purchase.stripe_payment_intent_id == charge["payment_intent"]
    assert (purchase.amount, purchase.currency, purchase.status) == (D("25"), "USD", "paid")
    assert purchase.amount_refunded == purchase.amount_disputed == 0
    assert balance(user) == D("25")


def test_a_refund_of_a_credit_purchase_takes_back_the_refunded_amount(client, fake_stripe, deliver):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    used(user, "2.50")

    refunded = fake_stripe.refund_charge(charge["id"], 1000)
    deliver(make_event("charge.refunded", refunded))

    assert balance(user) == D("12.50")  # $15 left of the purchase, minus the usage
    [entry] = refunds(user)
    [refund] = refunded["refunds"]["data"]
    assert (entry.amount, entry.reference) == (D("-10"), f"stripe:refund:{refund['id']}")
    purchase = CreditPurchase.objects.get()
    assert (purchase.amount_refunded, purchase.status) == (D("10"), "partially_refunded")
    assert purchase.stripe_charge_id == charge["id"]
    assert StripeEvent.objects.get(type="charge.refunded").status == "processed"


def test_the_same_refund_delivered_again_and_as_refund_events_has_one_effect(
    client, fake_stripe, deliver
):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    refunded = fake_stripe.refund_charge(charge["id"], 1000)
    refund = refunded["refunds"]["data"][0]

    deliver(make_event("refund.created", refund))
    deliver(make_event("charge.refunded", refunded))  # new event ids, same refund
    deliver(make_event("charge.refunded", refunded))
    deliver(make_event("refund.updated", refund))

    assert balance(user) == D("15")
    assert len(refunds(user)) == 1


def test_a_second_refund_takes_back_only_the_new_amount_never_more_than_the_purchase(
    client, fake_stripe, deliver
):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    first = make_event("charge.refunded", dict(fake_stripe.refund_charge(charge["id"], 1000)))
    second = make_event("charge.refunded", fake_stripe.refund_charge(charge["id"], 1500))

    deliver(second)  # out of order: the newer total first
    deliver(first)

    assert balance(user) == D("0")
    assert sorted(e.amount for e in refunds(user)) == [D("-15"), D("-10")]
    purchase = CreditPurchase.objects.get()
    assert (purchase.amount_refunded, purchase.status) == (D("25"), "refunded")


def test_a_refund_before_its_purchase_is_retried_and_then_applies_once(
    client, fake_stripe, deliver
):
    user = prepaid_user()
    _, _, session_id = buy(client, fake_stripe, user, "25")
    session = fake_stripe.complete_checkout(session_id)
    charge = fake_stripe.charge_of(session["payment_intent"])
    refunded = fake_stripe.refund_charge(charge["id"], 1000)

    deliver(make_event("refund.created", refunded["refunds"]["data"][0]))
    deliver(make_event("charge.refunded", refunded))
    early = StripeEvent.objects.get(type="charge.refunded")
    assert early.status == "failed" and "not recorded yet" in early.error
    assert balance(user) == 0 and not CreditLedgerEntry.objects.exists()

    deliver(make_event("checkout.session.completed", session))
    stripe_events.stripe_events_retry()
    stripe_events.stripe_events_retry()

    assert StripeEvent.objects.get(type="charge.refunded").status == "processed"
    assert balance(user) == D("15")
    assert len(refunds(user)) == 1


def test_a_lost_dispute_keeps_the_disputed_amount_taken(client, fake_stripe, deliver):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    used(user, "2.50")

    dispute = fake_stripe.dispute_charge(charge["id"])
    deliver(make_event("charge.dispute.created", dict(dispute)))
    deliver(make_event("charge.dispute.created", dict(dispute)))  # redelivered
    assert balance(user) == D("-2.50")
    deliver(make_event("charge.dispute.closed", fake_stripe.close_dispute(dispute["id"], "lost")))

    assert balance(user) == D("-2.50")
    [hold] = CreditLedgerEntry.objects.filter(kind=Kind.ADJUSTMENT)
    assert (hold.amount, hold.reference) == (D("-25"), f"stripe:dispute:{dispute['id']}:hold")
    purchase = CreditPurchase.objects.get()
    assert (purchase.status, purchase.amount_disputed) == ("dispute_lost", D("25"))


def test_a_won_dispute_gives_the_held_amount_back(client, fake_stripe, deliver):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    dispute = fake_stripe.dispute_charge(charge["id"], 2000)

    deliver(make_event("charge.dispute.created", dict(dispute)))
    assert balance(user) == D("5")
    closed = fake_stripe.close_dispute(dispute["id"], "won")
    deliver(make_event("charge.dispute.closed", closed))
    deliver(make_event("charge.dispute.closed", closed))

    assert balance(user) == D("25")
    assert CreditLedgerEntry.objects.filter(kind=Kind.ADJUSTMENT).count() == 2
    purchase = CreditPurchase.objects.get()
    assert (purchase.status, purchase.amount_disputed) == ("dispute_won", D("0"))


def test_a_dispute_for_a_charge_we_do_not_know_is_unmatched_and_writes_nothing(
    fake_stripe, deliver
):
    customer = fake_stripe.add_customer(email="someone@example.com")
    charge = fake_stripe.add_charge(customer=customer["id"], amount=900)

    deliver(make_event("charge.dispute.created", fake_stripe.dispute_charge(charge["id"])))

    event = StripeEvent.objects.get()
    assert event.status == "unmatched"
    assert charge["id"] in event.error and "paid no credit purchase" in event.error
    assert not CreditLedgerEntry.objects.exists()


def test_an_operator_refund_is_asked_of_stripe_and_applied_by_its_webhook(
    client, fake_stripe, deliver
):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    purchase = CreditPurchase.objects.get()

    refund = credit_purchase_refund_request(purchase=purchase, amount=D("10"), actor="ops")

    [sent] = fake_stripe.posts("/v1/refunds")
    assert sent.form["payment_intent"] == charge["payment_intent"]
    assert sent.form["amount"] == "1000"
    assert sent.idempotency_key
    assert balance(user) == D("25")  # not until Stripe confirms it
    deliver(make_event("charge.refunded", fake_stripe.charges[charge["id"]]))
    assert balance(user) == D("15")
    assert refunds(user)[0].reference == f"stripe:refund:{refund['id']}"


@pytest.mark.parametrize(
    ("already", "asked", "words"),
    [
        (0, D("25.01"), "more than what is left"),
        (1000, D("20"), "more than what is left"),
        (2500, None, "nothing left to refund"),
        (0, D("-5"), "positive amount"),
    ],
)
def test_a_refund_too_large_or_of_a_refunded_purchase_says_so_and_sends_nothing(
    client, fake_stripe, deliver, already, asked, words
):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    if already:
        deliver(make_event("charge.refunded", fake_stripe.refund_charge(charge["id"], already)))
    ledger = CreditLedgerEntry.objects.count()

    with pytest.raises(BillingError, match=words):
        credit_purchase_refund_request(
            purchase=CreditPurchase.objects.get(), amount=asked, actor="ops"
        )

    assert not fake_stripe.posts("/v1/refunds")
    assert CreditLedgerEntry.objects.count() == ledger


def test_the_admin_refund_action_asks_stripe_and_says_the_webhook_takes_the_credits(
    client, fake_stripe, deliver, operator
):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    purchase = CreditPurchase.objects.get()
    operator_client = login(client, operator) or client
    url = reverse("admin:billing_creditpurchase_changelist")

    asked = operator_client.post(
        url, {"action": "refund_purchases", "_selected_action": [purchase.pk]}
    )
    assert "Refund credit purchases" in asked.content.decode()  # a confirmation page first
    assert fake_stripe.posts("/v1/refunds") == []
    response = operator_client.post(
        url,
        {"action": "refund_purchases", "_selected_action": [purchase.pk], "confirmed": "yes"},
        follow=True,
    )

    [sent] = fake_stripe.posts("/v1/refunds")
    assert sent.form["amount"] == "2500"
    text = response.content.decode()
    assert "refund of $25.00 requested at Stripe" in text
    assert "the credits are taken back when Stripe confirms it" in text
    assert balance(user) == D("25")
    deliver(make_event("charge.refunded", fake_stripe.charges[charge["id"]]))
    assert balance(user) == D("0")

    again = operator_client.post(
        url,
        {"action": "refund_purchases", "_selected_action": [purchase.pk], "confirmed": "yes"},
        follow=True,
    )

    assert "nothing left to refund" in again.content.decode()
    assert len(fake_stripe.posts("/v1/refunds")) == 1


def test_each_purchase_and_refund_is_a_paid_receipt_in_billing_history_once(
    client, fake_stripe, deliver
):
    user = prepaid_user()
    charge = bought(client, fake_stripe, deliver, user, "25")
    refunded = fake_stripe.refund_charge(charge["id"], 1000)
    deliver(make_event("charge.refunded", refunded))
    deliver(make_event("charge.refunded", refunded))
    [session_id] = fake_stripe.checkout_sessions
    deliver(make_event("checkout.session.completed", fake_stripe.checkout_sessions[session_id]))

    rows = BillingHistory.objects.filter(user=user).order_by("amount")
    assert [(r.description, r.amount, r.status, r.stripe_invoice_id) for r in rows] == [
        ("Refund of credit purchase", D("-10"), "paid", None),
        ("Credit purchase (receipt)", D("25"), "paid", None),
    ]
    assert [r.receipt_reference for r in rows] == [
        f"stripe:refund:{refunded['refunds']['data'][0]['id']}",
        f"stripe:checkout:{session_id}",
    ]
