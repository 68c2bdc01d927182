"""Closing an account, end to end: the close day collected from the fake OpenCost, postpaid
usage reported to and invoiced by the fake Stripe, the Hopsworks account deactivated on the
fake cluster, the user row kept and its deletion refused while money is open."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import ProtectedError
from django.utils import timezone

from accounts.models import User
from billing.checkout import customer_ensure
from billing.closing import AccountCloseRefused, account_close, money_open_reasons
from billing.credits import credits_grant
from billing.models import (
    AccountClosure,
    BillingHistory,
    BillingProfile,
    StripeCatalogEntry,
    UsageDaily,
)
from billing.pricing import quantize, storage_gb_months
from billing.tasks import advance_account_closures
from clusters import services
from clusters.account_sync import hopsworks_accounts_sync
from clusters.hopsworks import DEACTIVATED
from clusters.models import HopsworksCluster, UserHopsworksAssignment
from tests.factories import UserFactory
from tests.fakes.kubernetes import kubeconfig_for
from tests.fakes.stripe import make_event
from tests.jobs import run_queued_jobs

pytestmark = pytest.mark.django_db
D = Decimal
GIB_DAY = D(24) * D(2) ** 30  # byte-hours of 1 GiB held for a whole day
TODAY = timezone.now().date()
CLOSE_DAY = TODAY - dt.timedelta(days=1)
CLOSED_AT = dt.datetime.combine(CLOSE_DAY, dt.time(12), tzinfo=dt.UTC)  # half the day


@pytest.fixture
def world(fake_hopsworks, fake_kubernetes, cluster_on, test_ca):
    hopsworks, _ = fake_hopsworks
    k8s, _ = fake_kubernetes
    cluster = cluster_on(hopsworks, name="east", kubeconfig=kubeconfig_for(k8s, test_ca))
    return {"cluster": cluster, "hopsworks": hopsworks, "k8s": k8s}


def placed_user(world, email, *, prepaid: bool):
    user = UserFactory(email=email, name="Ada Lovelace")
    if prepaid:
        BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    services.assignment_create(user=user, cluster=world["cluster"], actor=None)
    hopsworks_accounts_sync()
    namespace = email.split("@")[0]
    world["hopsworks"].add_project(namespace, email, namespace=namespace)
    figures = {"cpuCoreHours": D("10"), "pvByteHours": D(30) * GIB_DAY}
    for day in (CLOSE_DAY, TODAY):  # usage on the close day and after it
        world["k8s"].set_allocations(day, {namespace: figures})
    return user


def subscribe(fake_stripe, user):
    call_command("setup_stripe_billing")
    customer = customer_ensure(user=user)
    month_start = dt.datetime.combine(CLOSE_DAY.replace(day=1), dt.time(), tzinfo=dt.UTC)
    prices = [entry.price_id for entry in StripeCatalogEntry.objects.order_by("resource")]
    sub = fake_stripe.add_subscription(
        customer=customer, price_ids=prices, start_date=int(month_start.timestamp())
    )
    for item in sub["items"]["data"]:  # the period began with the month
        item["current_period_start"] = int(month_start.timestamp())
    BillingProfile.objects.update_or_create(
        user=user, defaults={"stripe_subscription_id": sub["id"], "subscription_status": "active"}
    )
    return customer, sub


def hopsworks_status(world, user):
    return world["hopsworks"].user_by_email(user.email).status


def close_day_row(user):
    return UsageDaily.objects.get(user=user, date=CLOSE_DAY)


def test_closing_a_prepaid_user_bills_up_to_the_close_deactivates_them_and_keeps_the_row(
    world, operator
):
    user = placed_user(world, "ada@example.com", prepaid=True)
    credits_grant(user=user, amount=D("100"), reason="start", actor=operator, reference="g1")

    closure = account_close(user=user, actor=operator, reason="asked to leave", closed_at=CLOSED_AT)
    run_queued_jobs()

    closure.refresh_from_db()
    row = close_day_row(user)
    full_day_storage = storage_gb_months(gb_held=D(30), day=CLOSE_DAY)
    assert row.storage_gb_months == quantize(full_day_storage / 2)  # billed up to 12:00 only
    assert row.cpu_hours == D("10")
    assert not UsageDaily.objects.filter(user=user, date=TODAY).exists()
    assert closure.usage_collected_at is not None
    assert closure.prepaid_balance == D("100") - row.total_cost
    assert closure.slot_released_at is not None and closure.account_deactivated_at is not None
    assert closure.finished_at is not None and closure.last_error == ""
    assert not UserHopsworksAssignment.objects.filter(user=user).exists()
    assert HopsworksCluster.objects.get(pk=world["cluster"].pk).current_users == 0
    assert hopsworks_status(world, user) == DEACTIVATED
    user.refresh_from_db()
    assert user.status == User.Status.DELETED

    # Days after the close are never billed, whoever collects them, and the close day
    # keeps its figures when collected again.
    call_command("collect_usage", "--date", CLOSE_DAY.isoformat())
    assert close_day_row(user).storage_gb_months == quantize(full_day_storage / 2)

    # The balance is open: the user cannot be deleted, by any path; the row stays.
    reasons = money_open_reasons(user)
    assert any("balance" in reason for reason in reasons)
    with pytest.raises(ProtectedError):
        user.delete()
    assert User.objects.filter(pk=user.pk).exists()


def test_the_admin_refuses_to_delete_a_user_with_money_open_and_says_why(world, client, persona):
    user = placed_user(world, "ada@example.com", prepaid=True)
    credits_grant(user=user, amount=D("5"), reason="start", actor=None, reference="g1")
    superuser = persona("superuser")
    client.force_login(superuser, backend="django.contrib.auth.backends.ModelBackend")

    response = client.post(
        "/admin/accounts/user/", {"action": "delete_selected", "_selected_action": [user.pk]}
    )
    page = response.content.decode()
    assert "open balance" in page, page[page.find('id="content"') :][:3000]
    response = client.post(f"/admin/accounts/user/{user.pk}/delete/", {"post": "yes"})
    assert "open balance" in response.content.decode()
    assert User.objects.filter(pk=user.pk).exists()


def test_closing_a_postpaid_user_reports_everything_and_cancels_with_a_final_invoice(
    world, fake_stripe, deliver, operator
):
    user = placed_user(world, "grace@example.com", prepaid=False)
    customer, sub = subscribe(fake_stripe, user)

    account_close(user=user, actor=operator, reason="leaving", closed_at=CLOSED_AT)
    run_queued_jobs()

    closure = AccountClosure.objects.get(user=user)
    cents = int(close_day_row(user).total_cost.quantize(D("0.01")) * 100)
    counted = sum(
        fake_stripe.meter_event_totals(e.event_name, customer)
        for e in StripeCatalogEntry.objects.all()
    )
    assert counted == cents > 0
    [cancel] = fake_stripe.requests_to("DELETE", f"/v1/subscriptions/{sub['id']}")
    assert (cancel.form["invoice_now"], cancel.form["prorate"]) == ("true", "false")
    final = fake_stripe.invoices[closure.final_invoice_id]
    assert final["amount_due"] == cents and final["subscription"] == sub["id"]
    assert closure.subscription_canceled_at is not None and closure.finished_at is not None
    assert hopsworks_status(world, user) == DEACTIVATED

    # Stripe's webhooks: the final invoice lands in billing history; the subscription's
    # deletion (ours) makes no further invoice.
    deliver(make_event("invoice.finalized", final))
    deliver(make_event("customer.subscription.deleted", fake_stripe.subscriptions[sub["id"]]))
    row = BillingHistory.objects.get(stripe_invoice_id=final["id"])
    assert row.amount == D(cents) / 100 and row.user == user
    assert not fake_stripe.requests_to("POST", "/v1/invoices")
    # The final invoice is open (not paid yet): money is open.
    assert any("invoice" in reason for reason in money_open_reasons(user))


def test_stripe_down_during_the_close_is_recorded_and_a_retry_finishes_it(
    world, fake_stripe, operator
):
    user = placed_user(world, "grace@example.com", prepaid=False)
    _, sub = subscribe(fake_stripe, user)
    fake_stripe.fail_next(20, status=503, method="DELETE")

    account_close(user=user, actor=operator, reason="leaving", closed_at=CLOSED_AT)
    ran = run_queued_jobs()

    assert ("billing.close_account", "failed") in ran
    closure = AccountClosure.objects.get(user=user)
    assert closure.usage_reported_at is not None  # what was done stays done
    assert closure.subscription_canceled_at is None and closure.finished_at is None
    assert "cancel subscription" in closure.last_error
    assert fake_stripe.subscriptions[sub["id"]]["status"] == "active"

    fake_stripe.clear_failures()
    advance_account_closures.func(timestamp=0)  # the hourly sweep queues it again
    assert ("billing.close_account", "succeeded") in run_queued_jobs()

    closure.refresh_from_db()
    assert closure.subscription_canceled_at is not None and closure.finished_at is not None
    assert closure.final_invoice_id in fake_stripe.invoices
    assert fake_stripe.subscriptions[sub["id"]]["status"] == "canceled"
    sent = fake_stripe.streamed_identifiers()
    assert len(sent) == len(set(sent))
    advance_account_closures.func(timestamp=0)  # the hourly sweep finds nothing left
    assert not run_queued_jobs()


def test_closing_twice_is_refused_with_the_reason_and_changes_nothing(world, operator):
    user = placed_user(world, "ada@example.com", prepaid=True)
    account_close(user=user, actor=operator, reason="leaving", closed_at=CLOSED_AT)

    with pytest.raises(AccountCloseRefused, match="already closed"):
        account_close(user=user, actor=operator, reason="again")
    with pytest.raises(AccountCloseRefused, match="reason"):
        account_close(user=UserFactory(), actor=operator, reason="  ")
    with pytest.raises(AccountCloseRefused, match="future"):
        account_close(
            user=UserFactory(),
            actor=operator,
            reason="x",
            closed_at=timezone.now() + dt.timedelta(hours=1),
        )
    assert AccountClosure.objects.count() == 1


def test_the_close_action_shows_what_is_open_requires_a_reason_and_closes(world, client, persona):
    user = placed_user(world, "ada@example.com", prepaid=True)
    credits_grant(user=user, amount=D("7.5"), reason="start", actor=None, reference="g1")
    BillingHistory.objects.create(user=user, amount=D("3"), status="pending")
    finance = persona("finance_staff")
    client.force_login(finance, backend="django.contrib.auth.backends.ModelBackend")
    url = "/admin/accounts/user/"
    form = {"action": "close_accounts", "_selected_action": [user.pk]}

    page = client.post(url, form).content.decode()
    assert "Prepaid (credits), balance $7.50" in page and "1 open invoice(s)" in page
    refused = client.post(url, {**form, "confirmed": "yes", "reason": ""})
    assert refused.status_code == 200 and not AccountClosure.objects.exists()

    client.post(url, {**form, "confirmed": "yes", "reason": "asked by email"})
    closure = AccountClosure.objects.get(user=user)
    assert closure.reason == "asked by email" and closure.actor == finance.email


def test_the_subscription_is_canceled_only_once_stripe_counted_what_was_reported(
    world, fake_stripe, operator
):
    user = placed_user(world, "grace@example.com", prepaid=False)
    _, sub = subscribe(fake_stripe, user)
    fake_stripe.hold_meter_summaries()  # Stripe aggregates meter events later

    account_close(user=user, actor=operator, reason="leaving", closed_at=CLOSED_AT)
    run_queued_jobs()

    closure = AccountClosure.objects.get(user=user)
    assert closure.usage_reported_at is not None and closure.subscription_canceled_at is None
    assert "waiting for Stripe's meters" in closure.last_error
    assert not fake_stripe.requests_to("DELETE", f"/v1/subscriptions/{sub['id']}")

    fake_stripe.release_meter_summaries()
    advance_account_closures.func(timestamp=0)
    run_queued_jobs()
    closure.refresh_from_db()
    cents = int(close_day_row(user).total_cost.quantize(D("0.01")) * 100)
    assert fake_stripe.invoices[closure.final_invoice_id]["amount_due"] == cents


def test_a_closed_account_stays_deactivated_on_hopsworks_even_if_reactivated(world, operator):
    from accounts.services import user_reactivate

    user = placed_user(world, "ada@example.com", prepaid=True)
    account_close(user=user, actor=operator, reason="leaving", closed_at=CLOSED_AT)
    run_queued_jobs()

    user_reactivate(user=user, actor=operator, reason="by mistake")
    services.assignment_create(user=user, cluster=world["cluster"], actor=operator)
    run_queued_jobs()

    assert hopsworks_status(world, user) == DEACTIVATED


def test_the_users_page_says_the_account_is_closed(world, operator_client, operator):
    user = placed_user(world, "ada@example.com", prepaid=True)
    account_close(user=user, actor=operator, reason="asked to leave", closed_at=CLOSED_AT)

    page = operator_client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert "Account closed" in page and "asked to leave" in page
    run_queued_jobs()
    closure_page = operator_client.get(f"/admin/billing/accountclosure/{user.pk}/change/")
    assert closure_page.status_code == 200


def test_a_close_day_collected_before_it_ended_is_collected_again_for_everyone_else(
    world, operator
):
    from billing.tasks import days_to_collect

    leaving = placed_user(world, "ada@example.com", prepaid=True)
    account_close(user=leaving, actor=operator, reason="leaving")  # now: today is not over
    run_queued_jobs()
    assert UsageDaily.objects.filter(user=leaving, date=TODAY).exists()

    tomorrow = TODAY + dt.timedelta(days=1)
    assert TODAY in days_to_collect(world["cluster"], today=tomorrow)


def test_usage_collected_for_days_after_a_backdated_close_is_taken_back(world, operator):
    from billing.collection import usage_collect_day

    user = placed_user(world, "ada@example.com", prepaid=True)
    credits_grant(user=user, amount=D("100"), reason="start", actor=operator, reference="g1")
    for day in (CLOSE_DAY, TODAY):
        usage_collect_day(cluster=world["cluster"], day=day)
    assert UsageDaily.objects.get(user=user, date=TODAY).total_cost > 0

    # Auth0 reports the deletion late: the close is from yesterday noon.
    closure = account_close(user=user, actor="auth0", reason="deleted", closed_at=CLOSED_AT)
    run_queued_jobs()

    closure.refresh_from_db()
    assert UsageDaily.objects.get(user=user, date=TODAY).total_cost == 0
    close_day_cost = close_day_row(user).total_cost
    assert close_day_row(user).storage_gb_months == quantize(
        storage_gb_months(gb_held=D(30), day=CLOSE_DAY) / 2
    )
    assert closure.prepaid_balance == D("100") - close_day_cost
