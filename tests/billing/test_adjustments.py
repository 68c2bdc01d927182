"""Operators' credits and debits, with a reason, where each user's money is: the prepaid
ledger, or Stripe (the customer's balance, an invoice item, a credit note) for postpaid.
Driven through the admin actions, against the fake Stripe."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages

from billing.checkout import customer_ensure
from billing.credits import Kind, credits_add
from billing.models import (
    BillingAdjustment,
    BillingHistory,
    BillingProfile,
    CreditLedgerEntry,
    UserCredits,
)
from tests.factories import UserFactory
from tests.jobs import run_queued_jobs

pytestmark = pytest.mark.django_db

D = Decimal
USERS = "/admin/accounts/user/"
BALANCE = "/v1/customers/{}/balance_transactions"


def prepaid_user(balance: Decimal = Decimal(0)):
    user = UserFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    if balance:
        credits_add(
            user=user, kind=Kind.PURCHASE, amount=balance, reference=f"p-{user.pk}", actor="t"
        )
    return user


def postpaid_user(fake_stripe, *, subscribed: bool = False):
    user = UserFactory()
    customer = customer_ensure(user=user)
    profile = BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.POSTPAID)
    if subscribed:
        sub = fake_stripe.add_subscription(customer=customer, status="active")
        profile.stripe_subscription_id, profile.subscription_status = sub["id"], "active"
        profile.save()
    return user, customer


def act(client, action, users, **form):
    data = {
        "action": action,
        "_selected_action": [u.pk for u in users],
        "confirmed": "yes",
        "token": "tok-1",
        **form,
    }
    response = client.post(USERS, data, follow=True)  # the list shows (and uses up) messages
    return response, said(response)


def said(response):
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def grant(client, users, amount="12.50", reason="outage apology", **form):
    return act(client, "grant_credits", users, amount=amount, reason=reason, **form)


def debit(client, users, amount="30", reason="support hours in May", **form):
    return act(client, "debit_accounts", users, amount=amount, reason=reason, **form)


# Grants -------------------------------------------------------------------------------


def test_a_grant_to_a_prepaid_user_goes_to_the_ledger_and_is_recorded(
    operator_client, operator, fake_stripe
):
    user = prepaid_user(D("1"))

    _, said = grant(operator_client, [user])

    assert UserCredits.objects.get(user=user).balance == D("13.5")
    entry = CreditLedgerEntry.objects.get(user=user, kind=Kind.GRANT)
    assert (entry.amount, entry.reason) == (D("12.5"), "outage apology")
    adjustment = BillingAdjustment.objects.get()
    assert (adjustment.channel, adjustment.status, adjustment.direction) == (
        "ledger",
        "sent",
        "credit",
    )
    assert adjustment.reference == entry.reference
    assert adjustment.actor == operator.email
    assert fake_stripe.posts() == []  # nothing at Stripe for a prepaid user
    assert said == [
        ("info", f"{user.email}: $12.50 granted to the prepaid balance."),
        ("success", "1 user done."),
    ]


def test_a_grant_to_a_postpaid_user_credits_their_stripe_customer_balance(
    operator_client, fake_stripe
):
    user, customer = postpaid_user(fake_stripe)

    _, said = grant(operator_client, [user])

    [sent] = fake_stripe.posts(BALANCE.format(customer))
    assert sent.form["amount"] == "-1250"
    assert sent.form["currency"] == "usd"
    assert "outage apology" in sent.form["description"]
    adjustment = BillingAdjustment.objects.get()
    assert sent.idempotency_key == adjustment.reference
    assert sent.form["metadata[billing_adjustment]"] == adjustment.reference
    assert fake_stripe.customers[customer]["balance"] == -1250
    assert (adjustment.channel, adjustment.status, adjustment.attempts) == (
        "stripe_customer_balance",
        "sent",
        1,
    )
    assert adjustment.stripe_object_id.startswith("cbtxn_")
    assert adjustment.amount == D("12.50")
    assert not CreditLedgerEntry.objects.filter(user=user).exists()
    assert said[-1] == ("success", "1 user done.")
    assert "sent to Stripe" in said[0][1] and "customer balance" in said[0][1]


def test_a_resubmitted_grant_form_applies_once(operator_client, fake_stripe):
    user, customer = postpaid_user(fake_stripe)
    prepaid = prepaid_user()

    grant(operator_client, [user, prepaid])
    _, said = grant(operator_client, [user, prepaid])  # the same form again

    assert fake_stripe.customers[customer]["balance"] == -1250
    assert len(fake_stripe.posts(BALANCE.format(customer))) == 1
    assert UserCredits.objects.get(user=prepaid).balance == D("12.5")
    assert BillingAdjustment.objects.count() == 2
    assert all("already applied" in text for _, text in said[:-1])
    assert said[-1] == ("success", "2 users unchanged.")


def test_when_stripe_is_down_the_credit_is_queued_and_a_job_sends_it_once(
    operator_client, fake_stripe
):
    user, customer = postpaid_user(fake_stripe)
    fake_stripe.fail_next(1, status=503, path=BALANCE.format(customer))

    _, said = grant(operator_client, [user])

    adjustment = BillingAdjustment.objects.get()
    assert (adjustment.status, adjustment.attempts) == ("pending", 1)
    assert "Stripe" in adjustment.error
    assert said[-1][0] == "info" and said[-1][1].startswith("1 user queued.")
    assert "queued" in said[0][1] and "Stripe is unavailable" in said[0][1]
    assert fake_stripe.customers[customer]["balance"] == 0

    assert ("billing.send_billing_adjustment", "succeeded") in run_queued_jobs()

    adjustment.refresh_from_db()
    assert (adjustment.status, adjustment.attempts, adjustment.error) == ("sent", 2, "")
    assert fake_stripe.customers[customer]["balance"] == -1250
    assert len(fake_stripe.balance_transactions_of(customer)) == 1


def test_a_credit_whose_answer_was_lost_is_found_at_stripe_not_sent_again(
    operator_client, fake_stripe
):
    user, customer = postpaid_user(fake_stripe)
    # Stripe did it, the answer was lost; a day later the idempotency key is forgotten.
    fake_stripe.fail_next(1, status=500, path=BALANCE.format(customer), processed=True)
    grant(operator_client, [user])
    fake_stripe.forget_idempotency_keys()

    run_queued_jobs()

    adjustment = BillingAdjustment.objects.get()
    [transaction] = fake_stripe.balance_transactions_of(customer)
    assert (adjustment.status, adjustment.stripe_object_id) == ("sent", transaction["id"])
    assert fake_stripe.customers[customer]["balance"] == -1250


def test_a_credit_stripe_refuses_is_failed_with_the_reason_and_not_retried(
    operator_client, fake_stripe
):
    user, customer = postpaid_user(fake_stripe)
    fake_stripe.fail_next(1, status=400, path=BALANCE.format(customer))

    _, said = grant(operator_client, [user])

    adjustment = BillingAdjustment.objects.get()
    assert adjustment.status == "failed"
    assert "Injected failure" in adjustment.error
    assert said[0][0] == "warning" and "not done" in said[0][1]
    assert said[-1] == ("warning", "1 user not done.")
    assert run_queued_jobs() == []


def test_a_postpaid_user_without_a_stripe_customer_is_told_and_nothing_is_written(
    operator_client, fake_stripe
):
    user = UserFactory()  # postpaid (no profile), never went through checkout

    _, said = grant(operator_client, [user])

    assert not BillingAdjustment.objects.exists()
    assert not CreditLedgerEntry.objects.exists()
    assert fake_stripe.posts() == []
    assert said[0][0] == "warning" and said[-1] == ("warning", "1 user not done.")
    assert "not done" in said[0][1] and "no Stripe customer" in said[0][1]


@pytest.mark.parametrize(
    "amount", ["1e3", "-5", "0", "0.00", "0.001", "12.345", "1000000", "NaN", "5$", "5,00", ""]
)
@pytest.mark.parametrize("action", [grant, debit])
def test_a_bad_amount_is_refused_on_the_form_and_nothing_is_written(
    operator_client, fake_stripe, amount, action
):
    user = prepaid_user()

    response, _said = action(operator_client, [user], amount=amount)

    assert response.status_code == 200
    assert "amount" in response.context["form"].errors
    assert not BillingAdjustment.objects.exists()
    assert not CreditLedgerEntry.objects.exists()


@pytest.mark.parametrize("action", [grant, debit])
def test_a_reason_is_required(operator_client, fake_stripe, action):
    user = prepaid_user()

    response, _ = action(operator_client, [user], reason="   ")

    assert "reason" in response.context["form"].errors
    assert not BillingAdjustment.objects.exists()


@pytest.mark.parametrize("amount", ["25", "25.00", "0.01", "10000"])
def test_plain_dollar_amounts_are_taken(operator_client, amount):
    user = prepaid_user()

    grant(operator_client, [user], amount=amount)

    assert UserCredits.objects.get(user=user).balance == D(amount)


def test_a_grant_as_a_credit_note_on_an_open_invoice(operator_client, fake_stripe):
    user, customer = postpaid_user(fake_stripe)
    invoice = fake_stripe.add_invoice(customer=customer, status="open", amount_due=5000)
    BillingHistory.objects.create(
        user=user, amount=D("50"), stripe_invoice_id=invoice["id"], stripe_status="open"
    )

    _, said = grant(operator_client, [user], invoice=invoice["id"])

    [sent] = fake_stripe.posts("/v1/credit_notes")
    adjustment = BillingAdjustment.objects.get()
    assert sent.form["invoice"] == invoice["id"]
    assert sent.form["amount"] == "1250"
    assert "outage apology" in sent.form["memo"]
    assert sent.idempotency_key == adjustment.reference
    assert (adjustment.channel, adjustment.status) == ("stripe_credit_note", "sent")
    assert adjustment.stripe_object_id.startswith("cn_")
    assert fake_stripe.invoices[invoice["id"]]["amount_remaining"] == 3750
    assert fake_stripe.posts(BALANCE.format(customer)) == []
    assert "credit note" in said[0][1]


def test_a_credit_note_needs_an_open_invoice_of_that_user(operator_client, fake_stripe):
    user, customer = postpaid_user(fake_stripe)
    other, other_customer = postpaid_user(fake_stripe)
    paid = fake_stripe.add_invoice(customer=customer, status="paid", amount_due=5000)
    theirs = fake_stripe.add_invoice(customer=other_customer, status="open", amount_due=5000)
    BillingHistory.objects.create(
        user=user, amount=D("50"), stripe_invoice_id=paid["id"], stripe_status="paid"
    )
    BillingHistory.objects.create(
        user=other, amount=D("50"), stripe_invoice_id=theirs["id"], stripe_status="open"
    )

    _, said_paid = grant(operator_client, [user], invoice=paid["id"])
    _, said_theirs = grant(operator_client, [user], invoice=theirs["id"], token="tok-2")

    assert not BillingAdjustment.objects.exists()
    assert fake_stripe.posts("/v1/credit_notes") == []
    assert "not done" in said_paid[0][1] and "open" in said_paid[0][1]
    assert "not done" in said_theirs[0][1]


# Debits -------------------------------------------------------------------------------


def test_a_debit_of_a_prepaid_user_is_a_negative_ledger_adjustment_and_may_go_below_zero(
    operator_client, fake_stripe
):
    user = prepaid_user(D("10"))

    _, said = debit(operator_client, [user])

    entry = CreditLedgerEntry.objects.get(user=user, kind=Kind.ADJUSTMENT)
    assert (entry.amount, entry.reason) == (D("-30"), "support hours in May")
    assert UserCredits.objects.get(user=user).balance == D("-20")
    adjustment = BillingAdjustment.objects.get()
    assert (adjustment.direction, adjustment.channel, adjustment.amount) == (
        "debit",
        "ledger",
        D("30"),
    )
    assert said == [
        ("info", f"{user.email}: $30.00 debited from the prepaid balance."),
        ("success", "1 user done."),
    ]
    assert fake_stripe.posts() == []


def test_a_debit_of_a_postpaid_user_is_an_invoice_item_on_their_next_invoice(
    operator_client, fake_stripe
):
    user, _customer = postpaid_user(fake_stripe, subscribed=True)

    _, said = debit(operator_client, [user])
    debit(operator_client, [user])  # resubmitted

    [sent] = fake_stripe.posts("/v1/invoiceitems")
    adjustment = BillingAdjustment.objects.get()
    assert sent.form["amount"] == "3000"
    assert sent.form["currency"] == "usd"
    assert "support hours in May" in sent.form["description"]
    assert sent.form["subscription"] == BillingProfile.objects.get(user=user).stripe_subscription_id
    assert sent.idempotency_key == adjustment.reference
    assert (adjustment.channel, adjustment.status) == ("stripe_invoice_item", "sent")
    assert adjustment.stripe_object_id.startswith("ii_")
    assert "invoice item" in said[0][1] and "next invoice" in said[0][1]
    assert not CreditLedgerEntry.objects.exists()


def test_a_debit_of_a_postpaid_user_without_a_customer_is_not_done(operator_client, fake_stripe):
    user = UserFactory()

    _, said = debit(operator_client, [user])

    assert not BillingAdjustment.objects.exists()
    assert said[0][0] == "warning" and "no Stripe customer" in said[0][1]
    assert said[-1] == ("warning", "1 user not done.")


def test_one_message_per_user_and_a_warning_when_anything_was_not_done(
    operator_client, fake_stripe
):
    prepaid = prepaid_user()
    no_customer = UserFactory()
    user, _customer = postpaid_user(fake_stripe)

    _, said = grant(operator_client, [prepaid, no_customer, user])

    texts = " | ".join(text for _, text in said)
    assert prepaid.email in texts and no_customer.email in texts and user.email in texts
    assert said[-1][0] == "warning"
    assert said[-1][1] == "2 users done, 1 user not done."


# The user's page ----------------------------------------------------------------------


def test_the_users_page_lists_their_adjustments_with_reason_and_status(
    operator_client, fake_stripe
):
    user, customer = postpaid_user(fake_stripe)
    fake_stripe.fail_next(1, status=503, path=BALANCE.format(customer))
    grant(operator_client, [user])

    page = operator_client.get(f"{USERS}{user.pk}/change/").content.decode()

    assert "Adjustments" in page
    assert "outage apology" in page
    assert "Pending" in page
    assert "$12.50" in page


# Switching modes ----------------------------------------------------------------------


def switch(client, action, users):
    response = client.post(
        USERS,
        {"action": action, "_selected_action": [u.pk for u in users], "confirmed": "yes"},
        follow=True,
    )
    return said(response)


def test_switching_a_prepaid_user_in_debt_to_postpaid_bills_the_debt_once(
    operator_client, fake_stripe
):
    user = prepaid_user(D("5"))
    customer = customer_ensure(user=user)
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-17.3456"), reference="u", actor="t")

    said = switch(operator_client, "make_postpaid", [user])
    run_queued_jobs()

    # The ledger is back to zero, by an adjustment naming what took the debt over ...
    assert UserCredits.objects.get(user=user).balance == 0
    entry = CreditLedgerEntry.objects.get(user=user, reference__startswith="switch:")
    assert (entry.kind, entry.amount) == (Kind.ADJUSTMENT, D("12.3456"))
    # ... an invoice item on the first postpaid invoice, for the debt in cents.
    adjustment = BillingAdjustment.objects.get()
    assert adjustment.reference == entry.reference
    assert (adjustment.direction, adjustment.channel, adjustment.amount, adjustment.status) == (
        "debit",
        "stripe_invoice_item",
        D("12.35"),
        "sent",
    )
    [item] = fake_stripe.invoice_items_of(customer)
    assert item["amount"] == 1235
    assert "prepaid balance" in item["description"]
    assert item["metadata"]["billing_adjustment"] == adjustment.reference
    assert any("$12.35" in text and "first postpaid invoice" in text for _, text in said)

    # Switching back and forth again bills nothing more: the debt was carried once.
    switch(operator_client, "make_prepaid", [user])
    switch(operator_client, "make_postpaid", [user])
    run_queued_jobs()
    assert BillingAdjustment.objects.count() == 1
    assert len(fake_stripe.invoice_items_of(customer)) == 1


def test_a_debt_carried_for_a_user_without_a_stripe_customer_waits_for_one(
    operator_client, fake_stripe
):
    user = prepaid_user()
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-4"), reference="u", actor="t")

    switch(operator_client, "make_postpaid", [user])
    run_queued_jobs()

    user.refresh_from_db()
    adjustment = BillingAdjustment.objects.get()
    assert adjustment.status == "sent"  # a customer was made for the invoice item to wait on
    [item] = fake_stripe.invoice_items_of(user.stripe_customer_id)
    assert item["amount"] == 400


def test_prepaid_usage_settled_after_the_switch_is_carried_by_the_daily_job(
    operator_client, fake_stripe
):
    from billing.tasks import carry_prepaid_debts
    from plumbing.jobs import defer

    user = prepaid_user(D("1"))
    customer = customer_ensure(user=user)
    switch(operator_client, "make_postpaid", [user])
    # The switch day was still prepaid: collected after the switch, it takes $3.
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-3"), reference="late", actor="t")

    defer(carry_prepaid_debts, timestamp=0)
    run_queued_jobs()
    defer(carry_prepaid_debts, timestamp=0)
    run_queued_jobs()

    assert UserCredits.objects.get(user=user).balance == 0
    [item] = fake_stripe.invoice_items_of(customer)
    assert item["amount"] == 200


def test_a_carry_numbers_its_entry_from_the_users_own_ledger_rows_through_an_index(
    operator_client, fake_stripe
):
    """The carry counts the user's earlier carries of the same switch to number its
    reference: a prefix match on `reference` alone is served by no index (the ledger keeps
    only the unique one, and a LIKE prefix cannot use it outside the C collation), so it
    read the whole ledger, 1.85 million rows at scale, inside the locks the carry holds."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from billing.adjustments import prepaid_debt_carry
    from tests.plans import plan

    user = prepaid_user(D("1"))
    customer_ensure(user=user)
    switch(operator_client, "make_postpaid", [user])
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-3"), reference="late", actor="t")
    first = prepaid_debt_carry(user=user, actor="t")
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-1"), reference="later", actor="t")

    with CaptureQueriesContext(connection) as captured:
        second = prepaid_debt_carry(user=user, actor="t")

    assert first.reference.endswith(":debt:1")
    assert second.reference == first.reference.replace(":debt:1", ":debt:2")
    [numbering] = [
        q["sql"]
        for q in captured.captured_queries
        if "billing_credit_ledger" in q["sql"] and "LIKE" in q["sql"]
    ]
    # An index that bounds the read (without one, a whole index read with the prefix as a
    # mere filter looks cheapest to a planner told to avoid sequential scans).
    assert "Index Cond" in plan(numbering)


def test_switching_a_postpaid_user_to_prepaid_reports_their_usage_to_stripe_first(
    operator_client, fake_stripe
):
    from django.core.management import call_command
    from procrastinate.contrib.django.models import ProcrastinateJob

    from billing.stripe_reporting import month_cents_by_resource
    from tests.billing.test_stripe_reporting import (
        record_days,
        stripe_cents,
        subscribed_user,
        this_month_days,
    )
    from tests.factories import ClusterFactory

    call_command("setup_stripe_billing")
    user, customer = subscribed_user(fake_stripe)
    days = this_month_days(2)
    record_days(user, ClusterFactory(), days, cpu_hours=D("10"))

    switch(operator_client, "make_prepaid", [user])

    queued = ProcrastinateJob.objects.filter(task_name="billing.report_user_usage", status="todo")
    assert [job.args for job in queued] == [{"user_id": user.pk}]
    run_queued_jobs()
    owed = sum(month_cents_by_resource(user.pk, days[0].replace(day=1)).values())
    assert owed > 0
    assert stripe_cents(fake_stripe, customer) == owed
    assert BillingProfile.objects.get(user=user).mode == "prepaid"


def test_the_users_page_shows_the_switches_with_their_effective_time_and_the_carried_debt(
    operator_client, fake_stripe
):
    user = prepaid_user()
    customer_ensure(user=user)
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-4"), reference="u", actor="t")
    switch(operator_client, "make_postpaid", [user])
    run_queued_jobs()

    page = operator_client.get(f"{USERS}{user.pk}/change/").content.decode()

    assert "Prepaid (credits) → Postpaid (metered)" in page
    assert " UTC" in page
    assert "$4.00" in page and "Sent" in page


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["prepaid", "postpaid"])
def test_the_same_form_submitted_at_once_from_four_tabs_applies_once(fake_stripe, operator, mode):
    from billing.adjustments import adjustment_make
    from tests.concurrency import run_at_once

    if mode == "prepaid":
        user = prepaid_user()
    else:
        user, customer = postpaid_user(fake_stripe)

    run_at_once(
        lambda _: adjustment_make(
            user=user,
            direction="credit",
            amount="12.50",
            reason="outage apology",
            actor=operator,
            reference=f"grant:tok-1:{user.pk}",
        ),
        range(4),
    )

    assert BillingAdjustment.objects.count() == 1
    if mode == "prepaid":
        assert UserCredits.objects.get(user=user).balance == D("12.5")
    else:
        assert len(fake_stripe.balance_transactions_of(customer)) == 1
        assert fake_stripe.customers[customer]["balance"] == -1250
        assert BillingAdjustment.objects.get().status == "sent"


def test_a_carried_debt_is_sent_once_when_stripe_fails_and_the_switch_is_recorded_anyway(
    operator_client, fake_stripe
):
    user = prepaid_user()
    customer = customer_ensure(user=user)
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-4"), reference="u", actor="t")
    # Every attempt of the job (the SDK retries twice) arrives, its answer lost.
    fake_stripe.fail_next(3, status=500, path="/v1/invoiceitems", processed=True)

    switch(operator_client, "make_postpaid", [user])
    assert ("billing.send_billing_adjustment", "failed") in run_queued_jobs()
    adjustment = BillingAdjustment.objects.get()
    assert (adjustment.status, adjustment.attempts) == ("pending", 1)
    assert BillingProfile.objects.get(user=user).mode == "postpaid"

    fake_stripe.forget_idempotency_keys()
    from billing.tasks import retry_billing_adjustments
    from plumbing.jobs import defer

    BillingAdjustment.objects.filter(pk=adjustment.pk).update(
        created_at=adjustment.created_at - dt.timedelta(hours=1)
    )
    defer(retry_billing_adjustments, timestamp=0)
    run_queued_jobs()

    adjustment.refresh_from_db()
    assert adjustment.status == "sent"
    assert len(fake_stripe.invoice_items_of(customer)) == 1  # found at Stripe, not resent


def test_debit_asks_first_with_an_amount_a_reason_and_a_one_time_token(operator_client):
    user = prepaid_user()

    page = operator_client.post(USERS, {"action": "debit_accounts", "_selected_action": [user.pk]})

    assert page.status_code == 200
    form = page.context["form"]
    assert {"amount", "reason", "token"} <= set(form.fields)
    assert len(form["token"].value()) == 32
    assert user.email in page.content.decode()
    assert not BillingAdjustment.objects.exists()


def test_the_adjustments_list_is_read_only_and_its_queries_do_not_grow_with_rows(
    operator_client,
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def add(n):
        for i in range(n):
            user = prepaid_user()
            grant(operator_client, [user], token=f"t{n}x{i}")

    url = "/admin/billing/billingadjustment/"
    add(1)
    with CaptureQueriesContext(connection) as few:
        assert operator_client.get(url).status_code == 200
    add(5)
    with CaptureQueriesContext(connection) as many:
        page = operator_client.get(url)
    assert len(many) == len(few)
    assert "outage apology" in page.content.decode()
    adjustment = BillingAdjustment.objects.first()
    assert operator_client.get(f"{url}add/").status_code == 403
    assert operator_client.post(f"{url}{adjustment.pk}/delete/", {"post": "yes"}).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_grant_racing_a_switch_to_postpaid_lands_in_one_place_and_the_debt_is_carried_once(
    fake_stripe, operator
):
    from billing.adjustments import adjustment_make
    from billing.profiles import billing_mode_set
    from tests.concurrency import run_at_once

    user = prepaid_user()
    customer = customer_ensure(user=user)
    credits_add(user=user, kind=Kind.ADJUSTMENT, amount=D("-4"), reference="u", actor="t")

    def work(which):
        if which == "switch":
            billing_mode_set(user=user, mode="postpaid", actor=operator)
        else:
            adjustment_make(
                user=user,
                direction="credit",
                amount="10",
                reason="goodwill",
                actor=operator,
                reference=f"grant:race:{user.pk}",
            )

    run_at_once(work, ["switch", "grant"])

    grant_row = BillingAdjustment.objects.get(reference__startswith="grant:")
    carried = BillingAdjustment.objects.filter(reference__startswith="switch:")
    balance = UserCredits.objects.get(user=user).balance
    if grant_row.channel == "ledger":  # the grant came first: no debt left to carry
        assert (balance, carried.count()) == (D("6"), 0)
    else:  # the switch came first: the debt carried, the grant to Stripe
        assert balance == 0
        assert [c.amount for c in carried] == [D("4.00")]
        assert fake_stripe.customers[customer]["balance"] == -1000
