"""A user's admin page tells their whole story (placement, Hopsworks account, how they pay,
invoices, stops and alerts, every change newest first) with a bounded number of queries,
and offers the actions an operator may run as buttons, each confirmed for that one user
with their current state shown."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts import services as account_services
from billing.credits import credits_grant
from billing.limits import spending_limits_set
from billing.models import BillingHistory, ServiceStop, SpendingAlert
from billing.profiles import billing_mode_set
from clusters import services as cluster_services
from tests.factories import AdminFactory, ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db
counter = itertools.count()


def page(client, user):
    return client.get(reverse("admin:accounts_user_change", args=[user.pk]))


def history_of(user, operator, *, times=1):
    """Every kind of change, `times` times each."""
    for _ in range(times):
        n = next(counter)
        account_services.user_suspend(user=user, actor=operator, reason=f"fraud check {n}")
        account_services.user_reactivate(user=user, actor=operator, reason=f"cleared {n}")
        billing_mode_set(user=user, mode="prepaid", actor=operator)
        credits_grant(
            user=user,
            amount=Decimal("10"),
            reason=f"goodwill {n}",
            actor=operator,
            reference=f"story-{n}",
        )
        billing_mode_set(user=user, mode="postpaid", actor=operator)
        spending_limits_set(
            user=user, monthly_spending_cap=Decimal(100 + n), actor=operator, by_user=False
        )
        BillingHistory.objects.create(
            user=user, amount=Decimal("12.5"), status="paid", description=f"Invoice {n}"
        )
        SpendingAlert.objects.create(
            user=user,
            kind="cap_80",
            period=f"p-{n}",
            amount=Decimal(80),
            limit_amount=Decimal(100),
        )
        now = timezone.now()
        ServiceStop.objects.create(
            user=user,
            reason="over_cap",
            detected_at=now,
            enforce_at=now + dt.timedelta(days=1),
            resolved_at=now,
            resolution="lifted",
            resolution_note="paid by bank transfer",
            resolved_by=operator.email,
        )


def test_the_users_page_tells_their_story_newest_first(operator_client, operator):
    user = UserFactory(email="story@example.com")
    cluster = ClusterFactory(name="story-east")
    cluster_services.assignment_create(user=user, cluster=cluster, actor=operator)
    history_of(user, operator)
    account_services.user_suspend(user=user, actor=operator, reason="chargeback")

    body = page(operator_client, user).content.decode()

    assert "At a glance" in body
    assert "Status: <strong>Suspended</strong>" in body
    assert "On story-east" in body
    # suspended: the account is wanted deactivated (it was never created)
    assert "Hopsworks account on story-east: wanted deactivated, is no account (pending)" in body
    assert "Postpaid: month to date" in body
    assert "Invoice 0" in body or "Invoice " in body
    history = body[body.index('class="story-timeline"') :]
    order = [
        history.index("Active → Suspended"),  # the latest: chargeback
        history.index("Monthly spending cap"),
        history.index("Prepaid (credits) → Postpaid (metered)"),
        history.index("goodwill"),
        history.index("Postpaid (metered) → Prepaid (credits)"),
        history.index("Suspended → Active"),
    ]
    assert order == sorted(order)
    assert "chargeback" in history
    assert "Placed on story-east" in history


def test_the_page_makes_as_many_queries_for_a_long_history_as_for_a_short_one(
    operator_client, operator
):
    short, long = UserFactory(), UserFactory()
    for user in (short, long):
        cluster_services.assignment_create(user=user, cluster=ClusterFactory(), actor=operator)
    history_of(short, operator, times=1)
    history_of(long, operator, times=6)
    page(operator_client, short)  # warm caches (content types, permissions)

    counts = []
    for user in (short, long):
        with CaptureQueriesContext(connection) as queries:
            assert page(operator_client, user).status_code == 200
        counts.append(len(queries))

    assert counts[0] == counts[1]


BUTTONS = {
    "support_staff": {"suspend_users", "reactivate_users", "move_to_cluster"},
    "finance_staff": {
        "grant_credits",
        "make_prepaid",
        "make_postpaid",
        "debit_accounts",
        "set_spending_limits",
    },
    "view_only_staff": set(),
}


@pytest.mark.parametrize("persona_name", BUTTONS)
def test_only_the_actions_an_operator_may_run_are_buttons(persona_client, persona_name):
    user = UserFactory()
    body = page(persona_client(persona_name), user).content.decode()

    shown = {name for name in UserStoryButtons.ALL if f'name="action" value="{name}"' in body}
    assert shown == BUTTONS[persona_name]


class UserStoryButtons:
    ALL = (
        "suspend_users",
        "reactivate_users",
        "move_to_cluster",
        "grant_credits",
        "make_prepaid",
        "make_postpaid",
        "debit_accounts",
        "set_spending_limits",
    )


def test_a_button_confirms_for_that_user_showing_their_state_then_comes_back(
    operator_client, operator
):
    user = UserFactory(email="grant-me@example.com")
    cluster_services.assignment_create(user=user, cluster=ClusterFactory(name="west"), actor=None)
    billing_mode_set(user=user, mode="prepaid", actor=operator)
    credits_grant(user=user, amount=Decimal("5"), reason="start", actor=operator, reference="s1")
    url = reverse("admin:accounts_user_change", args=[user.pk])

    confirm = operator_client.post(url, {"action": "grant_credits", "_object_action": "1"})

    body = confirm.content.decode()
    assert "Grant credits" in body
    assert "grant-me@example.com: Active; prepaid, balance $5.00; on west" in body
    assert f'href="{url}"' in body  # "No, take me back" goes back to the user's page
    token = confirm.context["form"]["token"].value()
    done = operator_client.post(
        url,
        {
            "action": "grant_credits",
            "_object_action": "1",
            "confirmed": "yes",
            "amount": "20",
            "reason": "sorry for the outage",
            "token": token,
        },
        follow=True,
    )
    assert done.redirect_chain[-1][0] == url
    assert "balance <strong>$25.00</strong>" in done.content.decode()
    assert "sorry for the outage" in done.content.decode()


def test_posting_an_action_the_operator_may_not_run_is_refused(persona_client):
    user = UserFactory()
    client = persona_client("support_staff")
    url = reverse("admin:accounts_user_change", args=[user.pk])

    response = client.post(
        url,
        {
            "action": "grant_credits",
            "_object_action": "1",
            "confirmed": "yes",
            "amount": "20",
            "reason": "x",
            "token": "t",
        },
    )

    assert response.status_code == 403
    assert not user.credit_entries.exists()


def test_suspending_from_the_page_is_recorded_in_the_history(operator_client):
    user = UserFactory()
    AdminFactory()
    url = reverse("admin:accounts_user_change", args=[user.pk])

    operator_client.post(
        url,
        {"action": "suspend_users", "_object_action": "1", "confirmed": "yes", "reason": "abuse"},
    )

    body = page(operator_client, user).content.decode()
    history = body[body.index('class="story-timeline"') :]
    assert "Active → Suspended" in history and "abuse" in history
