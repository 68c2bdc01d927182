"""Running out is enforced: a user who is no longer eligible (prepaid balance below the
floor, postpaid over the cap or without a live subscription, a failed invoice payment) is
stopped after the grace period (their Hopsworks account deactivated on the cluster, their
assignment kept), and resumed as soon as they are eligible again, or when an operator lifts
the stop. Through the usage API, signed Stripe webhooks and the fake Hopsworks; time moves
by passing `now=`."""

import datetime as dt
import json
import threading
import time
from decimal import Decimal

import pytest
from django.core import mail
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.checkout import customer_ensure
from billing.credits import Kind, credits_add
from billing.gate import access_blocker
from billing.models import BillingProfile, ServiceStop
from billing.standing import (
    StandingError,
    ineligibility,
    service_stop_lift,
    standing_evaluate,
)
from billing.usage import UsageRecord, usage_upsert
from clusters import services
from clusters.models import UserHopsworksAssignment as Assignment
from tests.billing.stripe_helpers import buy, login, prepaid_user
from tests.concurrency import run_at_once
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.stripe import make_event
from tests.jobs import run_jobs, run_queued_jobs

pytestmark = pytest.mark.django_db
D = Decimal
ACTIVE, DEACTIVATED = 2, 3


def on_cluster(fake, cluster_on, user):
    """The user placed on a cluster of the fake Hopsworks; returns their remote account."""
    with run_jobs():
        services.assignment_create(user=user, cluster=cluster_on(fake), actor=None)
    return fake.user_by_email(user.email)


def post_usage(client, make_key, user, cpu_hours):
    """Today's usage through the usage API, as a metering script sends it."""
    response = client.post(
        "/api/v1/usage",
        json.dumps(
            {
                "records": [
                    {
                        "user": user.pk,
                        "date": timezone.now().date().isoformat(),
                        "cpu_hours": str(cpu_hours),
                    }
                ]
            }
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=make_key("usage:write"),
    )
    assert response.status_code == 200, response.content
    run_queued_jobs()


def open_stop(user, reason):
    return ServiceStop.objects.get(user=user, reason=reason, resolved_at__isnull=True)


def test_a_prepaid_user_below_the_floor_is_deactivated_after_the_grace_period_and_reactivated_by_a_top_up(  # noqa: E501
    client, make_key, fake_hopsworks, cluster_on, fake_stripe, deliver
):
    east, _ = fake_hopsworks
    user = prepaid_user()
    credits_add(user=user, kind=Kind.PURCHASE, amount=D("5"), reference="first", actor="t")
    remote = on_cluster(east, cluster_on, user)

    post_usage(client, make_key, user, cpu_hours=100)  # $10 of usage: balance -$5

    stop = open_stop(user, ServiceStop.Reason.BALANCE_BELOW_FLOOR)
    assert stop.enforce_at == stop.detected_at + dt.timedelta(hours=24)
    assert "below the floor" in stop.detail
    assert (stop.stopped_at, east.user_by_id(remote.id).status) == (None, ACTIVE)
    login(client, user)
    assert "Your service will be stopped on" in client.get("/").content.decode()

    with run_jobs():  # a minute before the grace period ends: nothing yet
        standing_evaluate(now=stop.enforce_at - dt.timedelta(minutes=1))
    assert east.user_by_id(remote.id).status == ACTIVE
    with run_jobs():  # the periodic check after it has ended
        standing_evaluate(now=stop.enforce_at + dt.timedelta(minutes=1))

    assert east.user_by_id(remote.id).status == DEACTIVATED
    assert Assignment.objects.filter(user=user).exists()  # kept, with their data
    assert "Buy credits" in access_blocker(user)
    page = client.get("/").content.decode()
    assert "Your service is stopped" in page and "Buy credits" in page
    [mine] = client.get("/api/v1/me").json()["service_stops"]
    assert (mine["reason"], mine["in_force"]) == ("Prepaid balance below the floor", True)

    _, _, session_id = buy(client, fake_stripe, user, "25")
    deliver(make_event("checkout.session.completed", fake_stripe.complete_checkout(session_id)))

    stop.refresh_from_db()
    assert (stop.resolution, stop.resolved_by) == ("eligible", "jobs")
    assert stop.stopped_at is not None  # the stop and the resume are both on record
    assert east.user_by_id(remote.id).status == ACTIVE
    assert access_blocker(user) is None
    puts = [r.json() for r in east.requests_to("PUT", f"/admin/users/{remote.id}")]
    assert puts == [{"status": DEACTIVATED}, {"status": ACTIVE}]


def test_with_no_grace_period_the_user_is_stopped_at_once(
    client, make_key, fake_hopsworks, cluster_on, settings
):
    settings.SERVICE_STOP_GRACE_HOURS = 0
    east, _ = fake_hopsworks
    user = prepaid_user()
    remote = on_cluster(east, cluster_on, user)

    post_usage(client, make_key, user, cpu_hours=1)

    stop = open_stop(user, ServiceStop.Reason.BALANCE_BELOW_FLOOR)
    assert stop.stopped_at == stop.detected_at == stop.enforce_at
    assert east.user_by_id(remote.id).status == DEACTIVATED


def test_a_postpaid_user_over_their_cap_is_stopped_and_resumed_when_the_cap_is_raised(
    client, make_key, fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    user = UserFactory()
    BillingProfile.objects.create(user=user, monthly_spending_cap=D("5"))
    remote = on_cluster(east, cluster_on, user)

    post_usage(client, make_key, user, cpu_hours=40)  # $4: within the cap
    assert not ServiceStop.objects.exists()
    post_usage(client, make_key, user, cpu_hours=60)  # the day now costs $6

    stop = open_stop(user, ServiceStop.Reason.OVER_CAP)
    assert "over the monthly cap $5.00" in stop.detail
    with run_jobs():
        standing_evaluate(now=stop.enforce_at)
    assert east.user_by_id(remote.id).status == DEACTIVATED
    login(client, user)
    assert "Raise your monthly spending cap" in client.get("/").content.decode()

    BillingProfile.objects.filter(user=user).update(monthly_spending_cap=D("50"))
    with run_jobs():
        standing_evaluate(user_ids=[user.pk], now=stop.enforce_at + dt.timedelta(minutes=5))

    stop.refresh_from_db()
    assert stop.resolution == "eligible"
    assert east.user_by_id(remote.id).status == ACTIVE


def test_a_user_stopped_over_their_cap_who_raises_it_on_their_page_is_resumed_at_once(
    client, make_key, fake_hopsworks, cluster_on, settings
):
    settings.SERVICE_STOP_GRACE_HOURS = 0
    east, _ = fake_hopsworks
    user = UserFactory()
    BillingProfile.objects.create(user=user, monthly_spending_cap=D("5"))
    remote = on_cluster(east, cluster_on, user)
    with run_jobs():
        post_usage(client, make_key, user, cpu_hours=60)  # $6 over a $5 cap, no grace
    assert east.user_by_id(remote.id).status == DEACTIVATED

    login(client, user)
    with run_jobs():  # what the worker runs right after the change commits
        client.post("/billing/limits/", {"monthly_spending_cap": "50"})

    stop = ServiceStop.objects.get(user=user)
    assert stop.resolution == "eligible"
    assert east.user_by_id(remote.id).status == ACTIVE


def dunning_user(fake_stripe, fake_hopsworks, cluster_on, deliver):
    east, _ = fake_hopsworks
    user = UserFactory()
    customer = customer_ensure(user=user)
    subscription = fake_stripe.add_subscription(
        customer=customer, status="active", metadata={"user_id": user.pk}
    )
    deliver(make_event("customer.subscription.created", subscription))
    remote = on_cluster(east, cluster_on, user)
    invoice = fake_stripe.add_invoice(customer=customer, status="open", amount_due=4200)
    return user, remote, invoice


def test_a_failed_payment_mails_the_user_stops_them_after_dunning_and_paying_resumes(
    fake_stripe, fake_hopsworks, cluster_on, deliver, settings
):
    settings.PLACEMENT_REQUIRES_BILLING = True  # a live subscription is required too
    east, _ = fake_hopsworks
    user, remote, invoice = dunning_user(fake_stripe, fake_hopsworks, cluster_on, deliver)
    now = int(time.time())
    failed = make_event("invoice.payment_failed", {**invoice, "attempted": True}, created=now)

    deliver(failed)
    deliver(failed)  # redelivered
    deliver(  # Stripe's first retry fails too
        make_event("invoice.payment_failed", {**invoice, "attempted": True}, created=now + 60)
    )

    stop = open_stop(user, ServiceStop.Reason.PAYMENT_FAILED)
    assert ServiceStop.objects.filter(user=user).count() == 1
    assert stop.enforce_at == stop.detected_at + dt.timedelta(hours=72)
    assert "$42.00" in stop.detail
    [notice] = mail.outbox
    assert notice.to == [user.email]
    assert "payment of your invoice failed" in notice.body
    assert f"{stop.enforce_at:%Y-%m-%d %H:%M} UTC" in notice.body
    assert east.user_by_id(remote.id).status == ACTIVE  # Stripe's retries run meanwhile

    with run_jobs():
        standing_evaluate(now=stop.enforce_at + dt.timedelta(minutes=1))
    assert east.user_by_id(remote.id).status == DEACTIVATED

    paid = fake_stripe.pay_invoice(invoice["id"])
    deliver(make_event("invoice.paid", {**invoice, "status": "paid"}, created=now + 120))

    stop.refresh_from_db()
    assert stop.resolution == "eligible"
    assert paid and east.user_by_id(remote.id).status == ACTIVE
    assert not ServiceStop.objects.filter(user=user, resolved_at__isnull=True).exists()


def test_a_paid_event_arriving_before_the_failed_one_leaves_no_stop(
    fake_stripe, fake_hopsworks, cluster_on, deliver
):
    user, _remote, invoice = dunning_user(fake_stripe, fake_hopsworks, cluster_on, deliver)
    now = int(time.time())

    deliver(make_event("invoice.paid", {**invoice, "status": "paid"}, created=now + 60))
    deliver(make_event("invoice.payment_failed", {**invoice, "attempted": True}, created=now))

    assert not ServiceStop.objects.filter(user=user).exists()
    assert mail.outbox == []


def test_dunning_ends_only_when_every_failed_invoice_is_paid(
    fake_stripe, fake_hopsworks, cluster_on, deliver
):
    user, _remote, first = dunning_user(fake_stripe, fake_hopsworks, cluster_on, deliver)
    second = fake_stripe.add_invoice(customer=user.stripe_customer_id, status="open", amount_due=5)
    now = int(time.time())
    for invoice in (first, second):
        deliver(make_event("invoice.payment_failed", {**invoice, "attempted": True}, created=now))

    deliver(make_event("invoice.paid", {**first, "status": "paid"}, created=now + 60))
    assert open_stop(user, ServiceStop.Reason.PAYMENT_FAILED)
    deliver(make_event("invoice.voided", {**second, "status": "void"}, created=now + 60))
    assert not ServiceStop.objects.filter(user=user, resolved_at__isnull=True).exists()


def test_a_postpaid_user_whose_subscription_ends_is_stopped_and_resumed_by_a_new_one(
    fake_stripe, fake_hopsworks, cluster_on, deliver, settings
):
    settings.PLACEMENT_REQUIRES_BILLING = True
    east, _ = fake_hopsworks
    user, remote, _invoice = dunning_user(fake_stripe, fake_hopsworks, cluster_on, deliver)
    profile = BillingProfile.objects.get(user=user)
    canceled = fake_stripe.add_subscription(
        customer=user.stripe_customer_id, status="canceled", metadata={"user_id": user.pk}
    )
    canceled["id"] = profile.stripe_subscription_id
    deliver(make_event("customer.subscription.deleted", canceled, created=int(time.time()) + 5))

    stop = open_stop(user, ServiceStop.Reason.NO_SUBSCRIPTION)
    with run_jobs():
        standing_evaluate(now=stop.enforce_at)
    assert east.user_by_id(remote.id).status == DEACTIVATED

    renewed = fake_stripe.add_subscription(
        customer=user.stripe_customer_id, status="active", metadata={"user_id": user.pk}
    )
    deliver(make_event("customer.subscription.created", renewed, created=int(time.time()) + 10))

    stop.refresh_from_db()
    assert stop.resolution == "eligible"
    assert east.user_by_id(remote.id).status == ACTIVE


def test_without_billing_required_no_one_is_stopped_for_lack_of_a_subscription(cluster_on):
    user = UserFactory()
    services.assignment_create(user=user, cluster=ClusterFactory(), actor=None)
    assert standing_evaluate().opened == []


def test_an_operator_lifts_a_stop_the_user_is_resumed_and_not_stopped_again_until_the_hold_ends(
    client, make_key, fake_hopsworks, cluster_on, operator, settings
):
    settings.SERVICE_STOP_GRACE_HOURS = 0
    east, _ = fake_hopsworks
    user = prepaid_user()
    remote = on_cluster(east, cluster_on, user)
    post_usage(client, make_key, user, cpu_hours=1)
    stop = open_stop(user, ServiceStop.Reason.BALANCE_BELOW_FLOOR)
    now = timezone.now()

    with pytest.raises(StandingError, match="Say why"):
        service_stop_lift(stop=stop, reason="  ", hours=24, actor=operator)
    stop.refresh_from_db()
    assert stop.resolved_at is None  # nothing written
    with run_jobs():
        service_stop_lift(
            stop=stop, reason="paying by wire transfer", hours=24, actor=operator, now=now
        )

    stop.refresh_from_db()
    assert (stop.resolution, stop.resolution_note) == ("lifted", "paying by wire transfer")
    assert stop.resolved_by == operator.email
    assert east.user_by_id(remote.id).status == ACTIVE
    assert standing_evaluate(now=now + dt.timedelta(hours=23)).opened == []
    with pytest.raises(StandingError, match="already resolved"):
        service_stop_lift(stop=stop, reason="again", hours=1, actor=operator)

    with run_jobs():  # the hold is over and the balance still below the floor
        again = standing_evaluate(now=now + dt.timedelta(hours=25))
    [new] = again.opened
    assert new.pk != stop.pk and new.in_force  # grace 0: at once
    assert east.user_by_id(remote.id).status == DEACTIVATED


def test_the_database_refuses_a_second_open_stop_for_the_same_user_and_reason():
    user, now = UserFactory(), timezone.now()
    fields = {"user": user, "reason": "over_cap", "detected_at": now, "enforce_at": now}
    ServiceStop.objects.create(**fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        ServiceStop.objects.create(**fields)
    ServiceStop.objects.create(**fields, resolved_at=now, resolution="eligible")  # history


def test_judging_users_takes_the_same_few_queries_for_three_users_or_thirty():
    cluster = ClusterFactory(max_users=100)

    def users(n):
        made = []
        for _ in range(n):
            user = prepaid_user()
            services.assignment_create(user=user, cluster=cluster, actor=None)
            made.append(user)
        usage_upsert(
            records=[
                UsageRecord(user_id=u.pk, date=timezone.now().date(), cpu_hours=D("1"))
                for u in made
            ],
            actor="t",
        )
        return [u.pk for u in made]

    few, many = users(3), users(30)
    with CaptureQueriesContext(connection) as small:
        assert len(ineligibility(user_ids=few)) == 3
    with CaptureQueriesContext(connection) as large:
        assert len(ineligibility(user_ids=many)) == 30
    assert len(small) == len(large) <= 6
    with CaptureQueriesContext(connection) as opening:
        assert len(standing_evaluate(user_ids=many).opened) == 30
    assert len(opening) <= 12


@pytest.mark.django_db(transaction=True)
def test_two_evaluations_at_once_open_one_stop(default_rate_card):
    user = prepaid_user()
    services.assignment_create(user=user, cluster=ClusterFactory(), actor=None)
    credits_add(user=user, kind=Kind.USAGE, amount=D("-3"), reference="u", actor="t")

    run_at_once(lambda _: standing_evaluate(user_ids=[user.pk]), [1, 2, 3, 4])

    assert ServiceStop.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_evaluation_racing_one_that_has_not_committed_waits_and_opens_nothing(
    default_rate_card,
):
    """Both have judged the user and found no open stop; the second insert waits on the
    first's uncommitted row, then does nothing (no error, no second stop)."""
    user = prepaid_user()
    services.assignment_create(user=user, cluster=ClusterFactory(), actor=None)
    credits_add(user=user, kind=Kind.USAGE, amount=D("-3"), reference="u", actor="t")
    first_inserted, first_may_commit = threading.Event(), threading.Event()
    results, errors = {}, []

    def first():
        try:
            with transaction.atomic():
                results["first"] = standing_evaluate(user_ids=[user.pk])
                first_inserted.set()
                assert first_may_commit.wait(timeout=30)
        except Exception as error:
            errors.append(error)
        finally:
            connection.close()

    def second():
        try:
            results["second"] = standing_evaluate(user_ids=[user.pk])
        except Exception as error:
            errors.append(error)
        finally:
            connection.close()

    one = threading.Thread(target=first)
    one.start()
    assert first_inserted.wait(timeout=30)
    two = threading.Thread(target=second)
    two.start()
    _wait_until_blocked_on_a_lock()
    first_may_commit.set()
    one.join(timeout=30)
    two.join(timeout=30)

    assert errors == []
    assert len(results["first"].opened) == 1 and results["second"].opened == []
    assert ServiceStop.objects.filter(user=user).count() == 1


def _wait_until_blocked_on_a_lock():
    """Until another connection of this test waits on a lock (PostgreSQL says so)."""
    for _ in range(3000):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            if cursor.fetchone()[0]:
                return
        threading.Event().wait(0.01)
    raise AssertionError("the second evaluation never waited on the first")


def test_a_stopped_user_stays_deactivated_when_moved_or_reactivated(
    client, make_key, fake_hopsworks, cluster_on, settings
):
    from accounts.services import user_reactivate, user_suspend

    settings.SERVICE_STOP_GRACE_HOURS = 0
    east, west = fake_hopsworks
    user = prepaid_user()
    on_cluster(east, cluster_on, user)
    post_usage(client, make_key, user, cpu_hours=1)  # stopped at once

    with run_jobs():
        user_suspend(user=user, actor=None)
    with run_jobs():
        user_reactivate(user=user, actor=None)
    assert east.user_by_email(user.email).status == DEACTIVATED
    with run_jobs():
        services.assignment_move(user=user, to_cluster=cluster_on(west), actor=None)

    assert west.user_by_email(user.email) is None  # not made active there either
    assert Assignment.objects.get(user=user).hopsworks_cluster.api_url == west.api_url


def test_a_lift_needs_a_sensible_hold_and_writes_nothing_otherwise(operator):
    now = timezone.now()
    stop = ServiceStop.objects.create(
        user=UserFactory(), reason="over_cap", detected_at=now, enforce_at=now
    )
    for hours in (0, -1, 24 * 365):
        with pytest.raises(StandingError, match="1 to 744 hours"):
            service_stop_lift(stop=stop, reason="why not", hours=hours, actor=operator)
    stop.refresh_from_db()
    assert stop.resolved_at is None and stop.lifted_until is None


def queued_standing_checks():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT args FROM procrastinate_jobs WHERE task_name = 'billing.evaluate_standing'"
            " AND status = 'todo' ORDER BY id"
        )
        return [json.loads(a) if isinstance(a, str) else a for (a,) in cursor]


@pytest.mark.parametrize(
    ("ids", "args"),
    [
        # The users as one string: a batch names thousands, and psycopg escapes every
        # quote of a JSON list of them, character by character (bench/README.md).
        (["auth0|b", "auth0|a"], {"users": "auth0|a auth0|b"}),
        # An id the separator cannot carry goes as a list.
        (["auth0|a", "email|with space"], {"user_ids": ["auth0|a", "email|with space"]}),
    ],
)
def test_usage_queues_one_standing_check_of_its_users_and_it_stops_them(
    ids, args, fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east)
    users = [prepaid_user(id=user_id) for user_id in ids]
    with run_jobs():
        for user in users:
            services.assignment_create(user=user, cluster=cluster, actor=None)

    usage_upsert(
        records=[
            UsageRecord(user_id=u.pk, date=timezone.now().date(), cpu_hours=D("10")) for u in users
        ],
        actor="t",
    )

    assert queued_standing_checks() == [args]
    assert ("billing.evaluate_standing", "succeeded") in run_queued_jobs()
    stopped = ServiceStop.objects.filter(reason=ServiceStop.Reason.BALANCE_BELOW_FLOOR)
    assert sorted(stopped.values_list("user_id", flat=True)) == sorted(ids)


def test_a_standing_check_is_queued_in_one_statement_without_a_savepoint():
    """A savepoint only serves a job with a queueing lock (a duplicate must not break the
    caller's transaction); each usage batch queues a standing check, and each savepoint is
    two more round trips (issue 16)."""
    from billing.standing import standing_check_later

    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        standing_check_later(user_ids=["auth0|a"])
    assert len(captured) == 1 and "procrastinate_defer_jobs" in captured[0]["sql"]
