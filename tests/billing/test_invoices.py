"""Invoices in billing history, repaired from Stripe's own list; the Stripe admin pages.

The real stripe SDK talks to a local fake Stripe; webhooks are signed with Stripe's scheme.
"""

import time
from decimal import Decimal

import pytest

from billing.checkout import customer_ensure
from billing.models import BillingHistory, StripeEvent
from tests.factories import UserFactory
from tests.fakes.stripe import make_event
from tests.jobs import run_queued_jobs

pytestmark = pytest.mark.django_db
D = Decimal


def test_sync_invoices_repairs_missed_webhooks(operator_client, fake_stripe):
    user = UserFactory()
    customer = customer_ensure(user=user)
    fake_stripe.add_invoice(customer=customer, status="paid", amount_due=999)
    fake_stripe.add_invoice(customer=customer, status="open", amount_due=100)

    response = operator_client.post(
        "/admin/accounts/user/",
        {"action": "sync_invoices", "_selected_action": [user.pk]},
        follow=True,
    )
    shown = [str(m) for m in response.context["messages"]]
    assert f"{user.email}: invoice sync queued" in shown
    assert not BillingHistory.objects.exists()  # nothing from Stripe inside the request

    run_queued_jobs()
    assert sorted(BillingHistory.objects.values_list("status", "amount")) == [
        ("paid", D("9.99")),
        ("pending", D("1.00")),
    ]


def test_the_stripe_admin_pages_open(operator_client, fake_stripe, deliver):
    user = UserFactory()
    customer = customer_ensure(user=user)
    deliver(make_event("invoice.paid", fake_stripe.add_invoice(customer=customer, amount_due=5)))
    for url in [
        "/admin/billing/billinghistory/",
        "/admin/billing/stripeevent/",
        "/admin/billing/stripecatalogentry/",
        "/admin/billing/stripeusagereport/",
        "/admin/billing/stripeusageadjustment/",
        f"/admin/accounts/user/{user.pk}/change/",
    ]:
        page = operator_client.get(url)
        assert page.status_code == 200, url
    history = operator_client.get("/admin/billing/billinghistory/").content.decode()
    assert "https://dashboard.stripe.com/test/invoices/" in history


# Invoice states and amounts from webhooks ------------------------------------------------


def invoice_of(fake_stripe, **fields):
    user = UserFactory()
    customer = customer_ensure(user=user)
    return user, fake_stripe.add_invoice(customer=customer, **fields)


def test_an_invoice_marked_uncollectible_shows_as_failed_with_stripes_status(
    fake_stripe, deliver, operator_client
):
    _, invoice = invoice_of(fake_stripe, status="uncollectible", amount_due=4200)
    now = int(time.time())
    deliver(make_event("invoice.finalized", {**invoice, "status": "open"}, created=now - 10))

    deliver(make_event("invoice.marked_uncollectible", invoice, created=now))

    row = BillingHistory.objects.get()
    assert (row.status, row.stripe_status, row.amount) == ("failed", "uncollectible", D("42.00"))
    page = operator_client.get("/admin/billing/billinghistory/").content.decode()
    assert "uncollectible" in page


def test_a_voided_invoice_keeps_its_amount_and_shows_void(fake_stripe, deliver):
    _, invoice = invoice_of(fake_stripe, status="void", amount_due=1500)
    now = int(time.time())
    deliver(make_event("invoice.marked_uncollectible", {**invoice, "status": "uncollectible"}))

    deliver(make_event("invoice.voided", invoice, created=now + 5))

    row = BillingHistory.objects.get()
    assert (row.status, row.stripe_status, row.amount) == ("void", "void", D("15.00"))
    assert row.amount_refunded == row.amount_credited == 0


def test_a_credit_note_on_an_invoice_shows_its_amount_until_it_is_voided(fake_stripe, deliver):
    _, invoice = invoice_of(fake_stripe, status="paid", amount_due=10000)
    deliver(make_event("invoice.paid", invoice))
    first = fake_stripe.add_credit_note(invoice_id=invoice["id"], amount=2500)
    second = fake_stripe.add_credit_note(invoice_id=invoice["id"], amount=1000)

    deliver(make_event("credit_note.created", first))
    deliver(make_event("credit_note.created", second))
    deliver(make_event("credit_note.created", first))  # a redelivery counts once
    row = BillingHistory.objects.get()
    assert (row.amount, row.amount_credited, row.status) == (D("100.00"), D("35.00"), "paid")

    deliver(make_event("credit_note.voided", fake_stripe.void_credit_note(first["id"])))
    row.refresh_from_db()
    assert (row.amount, row.amount_credited) == (D("100.00"), D("10.00"))


def test_a_refund_of_an_invoice_payment_shows_the_refunded_amount(fake_stripe, deliver):
    _, invoice = invoice_of(fake_stripe, status="open", amount_due=8000)
    charge = fake_stripe.pay_invoice(invoice["id"])
    deliver(make_event("invoice.paid", fake_stripe.invoices[invoice["id"]]))

    deliver(make_event("charge.refunded", fake_stripe.refund_charge(charge["id"], 3000)))
    deliver(make_event("charge.refunded", fake_stripe.refund_charge(charge["id"], 5000)))

    row = BillingHistory.objects.get()
    assert (row.status, row.amount, row.amount_refunded) == ("paid", D("80.00"), D("80.00"))


def test_a_refund_of_a_charge_that_paid_no_invoice_changes_no_invoice(fake_stripe, deliver):
    _, invoice = invoice_of(fake_stripe, status="paid", amount_due=500)
    deliver(make_event("invoice.paid", invoice))
    charge = fake_stripe.add_charge(customer=invoice["customer"], amount=700)

    deliver(make_event("charge.refunded", fake_stripe.refund_charge(charge["id"], 700)))

    assert BillingHistory.objects.get().amount_refunded == 0
    assert StripeEvent.objects.filter(type="charge.refunded", status="processed").exists()


@pytest.mark.parametrize(
    "order",
    [
        ("invoice.finalized", "invoice.payment_failed"),
        ("invoice.payment_failed", "invoice.finalized"),
    ],
)
def test_invoice_events_of_one_second_end_as_stripe_has_the_invoice(fake_stripe, deliver, order):
    _, invoice = invoice_of(fake_stripe, status="open", amount_due=900)
    fake_stripe.invoices[invoice["id"]].update(attempted=True, attempt_count=1)  # it failed
    now = int(time.time())

    for event_type in order:
        deliver(make_event(event_type, invoice, created=now))

    row = BillingHistory.objects.get()
    assert (row.status, row.stripe_status) == ("failed", "open")


def test_an_invoice_is_noted_finalized_once_stripe_moves_it_past_draft(fake_stripe, deliver):
    user = UserFactory()
    customer = customer_ensure(user=user)
    draft = fake_stripe.add_invoice(customer=customer, status="draft", amount_due=100)
    deliver(make_event("invoice.created", draft))
    assert BillingHistory.objects.get().finalized_at is None

    finalized = {**draft, "status": "open", "status_transitions": {"finalized_at": 1796083200}}
    deliver(make_event("invoice.finalized", finalized, created=draft["created"] + 5))
    deliver(make_event("invoice.created", draft, created=draft["created"] + 1))  # late, older

    row = BillingHistory.objects.get()
    assert row.finalized_at is not None
    assert int(row.finalized_at.timestamp()) == 1796083200
