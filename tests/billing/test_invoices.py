"""Invoices in billing history, repaired from Stripe's own list; the Stripe admin pages.

The real stripe SDK talks to a local fake Stripe; webhooks are signed with Stripe's scheme.
"""

from decimal import Decimal

import pytest

from billing.checkout import customer_ensure
from billing.models import BillingHistory
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
    assert "1 invoice sync job(s) queued" in response.content.decode()
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
