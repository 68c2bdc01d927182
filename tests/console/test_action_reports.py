"""Admin actions tell the truth: per object done, queued, unchanged or not done with the
reason; green only when everything was done, a warning when anything was not."""

from __future__ import annotations

import pytest
from django.contrib import messages as levels

from billing.models import BillingHistory, StripeEvent
from clusters import services
from clusters.models import HopsworksAccount
from clusters.models import UserHopsworksAssignment as Assignment
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.stripe import make_event

pytestmark = pytest.mark.django_db

USERS = "/admin/accounts/user/"
CLUSTERS = "/admin/clusters/hopsworkscluster/"
EVENTS = "/admin/billing/stripeevent/"


def shown(response) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in response.context["messages"]]


def summary(response) -> tuple[int, str]:
    return shown(response)[-1]


def move(client, users, cluster):
    return client.post(
        USERS,
        {
            "action": "move_to_cluster",
            "_selected_action": [u.pk for u in users],
            "confirmed": "yes",
            "cluster": cluster.pk,
        },
        follow=True,
    )


def test_a_move_says_the_hopsworks_account_is_pending_not_a_green_moved(operator_client):
    east, west = ClusterFactory(name="east"), ClusterFactory(name="demo-west")  # both down
    user = UserFactory()
    services.assignment_create(user=user, cluster=east, actor=None)

    response = move(operator_client, [user], west)

    assert Assignment.objects.get(user=user).hopsworks_cluster == west
    assert HopsworksAccount.objects.get(user=user, cluster=west).pending
    lines = [text for _, text in shown(response)]
    assert any(
        t.startswith(f"{user.email}: moved to demo-west; Hopsworks account pending") for t in lines
    )
    level, text = summary(response)
    assert level != levels.SUCCESS
    assert "1 user queued" in text


def test_moving_a_user_to_the_cluster_they_are_on_says_already_on_it(operator_client):
    east = ClusterFactory(name="east")
    user = UserFactory()
    services.assignment_create(user=user, cluster=east, actor=None)

    response = move(operator_client, [user], east)

    lines = [text for _, text in shown(response)]
    assert f"{user.email}: already on east" in lines
    assert not any("moved" in t for t in lines)


def test_an_action_that_failed_for_everyone_is_a_warning_never_a_green_zero(operator_client):
    full = ClusterFactory(name="full", max_users=0)
    users = UserFactory.create_batch(2)

    response = operator_client.post(
        USERS,
        {
            "action": "assign_to_cluster",
            "_selected_action": [u.pk for u in users],
            "confirmed": "yes",
            "cluster": full.pk,
        },
        follow=True,
    )

    assert all(level != levels.SUCCESS for level, _ in shown(response))
    assert not any(text.startswith("0 ") for _, text in shown(response))
    assert summary(response) == (levels.WARNING, "2 users not done.")
    assert any("not done: Cluster full is full" in text for _, text in shown(response))


def test_a_partly_failed_action_is_a_warning_naming_each_outcome(operator_client):
    ClusterFactory(name="east")
    suspended, active = UserFactory(status="suspended"), UserFactory()

    response = operator_client.post(
        USERS,
        {
            "action": "auto_assign",
            "_selected_action": [suspended.pk, active.pk],
            "confirmed": "yes",
        },
        follow=True,
    )

    level, text = summary(response)
    assert level == levels.WARNING
    assert "1 user not done" in text


def test_suspending_users_who_all_were_suspended_is_not_green_zero(operator_client):
    users = UserFactory.create_batch(2, status="suspended")

    response = operator_client.post(
        USERS,
        {
            "action": "suspend_users",
            "_selected_action": [u.pk for u in users],
            "confirmed": "yes",
            "reason": "abuse",
        },
        follow=True,
    )

    assert summary(response) == (levels.SUCCESS, "2 users unchanged.")
    assert not any(text.startswith("0 ") for _, text in shown(response))


def test_making_a_cluster_active_that_already_is_says_so(operator_client):
    cluster = ClusterFactory(name="east", status="active")

    response = operator_client.post(
        CLUSTERS,
        {"action": "make_active", "_selected_action": [cluster.pk], "confirmed": "yes"},
        follow=True,
    )

    assert ("east: already active") in [t for _, t in shown(response)]
    assert not any(text.startswith("0 ") for _, text in shown(response))


def test_process_again_for_an_unknown_customer_says_not_done_and_writes_nothing(
    fake_stripe, deliver, operator_client
):
    invoice = fake_stripe.add_invoice(customer="cus_nobody", status="paid", amount_due=0)
    deliver(make_event("invoice.paid", invoice))
    event = StripeEvent.objects.get()
    assert event.status == "unmatched"

    response = operator_client.post(
        EVENTS, {"action": "process_again", "_selected_action": [event.pk]}, follow=True
    )

    lines = [text for _, text in shown(response)]
    assert not any("processed" in t for t in lines)
    assert any(f"{event.pk}: not done:" in t and "cus_nobody" in t for t in lines)
    assert summary(response)[0] == levels.WARNING
    assert not BillingHistory.objects.exists()
    assert StripeEvent.objects.get().attempts == 1  # nothing was queued or run


def test_process_again_on_a_processed_event_says_already_processed(
    fake_stripe, deliver, operator_client
):
    deliver(make_event("customer.created", {"id": "cus_x", "object": "customer"}))
    event = StripeEvent.objects.get()

    response = operator_client.post(
        EVENTS, {"action": "process_again", "_selected_action": [event.pk]}, follow=True
    )

    assert f"{event.pk}: already {event.status}; nothing to do" in [t for _, t in shown(response)]


def test_an_invoice_naming_no_user_of_ours_is_never_recorded_without_a_user():
    from django.utils import timezone

    from billing.invoices import invoice_apply

    invoice = {"id": "in_orphan", "customer": "cus_nobody", "amount_due": 0, "currency": "usd"}
    with pytest.raises(LookupError, match="no user of ours"):
        invoice_apply(invoice, status="paid", event_created=timezone.now())
    assert not BillingHistory.objects.exists()


def test_a_grant_submitted_twice_reports_the_second_time_as_already_granted(operator_client):
    from billing.models import BillingProfile

    user = UserFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    data = {
        "action": "grant_credits",
        "_selected_action": [user.pk],
        "confirmed": "yes",
        "amount": "12.50",
        "reason": "outage apology",
        "token": "tok-1",
    }
    first = operator_client.post(USERS, data, follow=True)
    again = operator_client.post(USERS, data, follow=True)

    assert f"{user.email}: $12.50 granted to the prepaid balance." in [t for _, t in shown(first)]
    assert summary(first) == (levels.SUCCESS, "1 user done.")
    assert (
        f"{user.email}: already applied (this form was submitted before): nothing more done."
        in [t for _, t in shown(again)]
    )
    assert summary(again) == (levels.SUCCESS, "1 user unchanged.")
