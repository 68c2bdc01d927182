"""`StripeBilledUser`: every user with Stripe-billed usage, and whether their subscription
is live, kept by the database's triggers whoever writes usage or profiles; the unbilled
usage read from it is what an anti-join over every user's Stripe-billed months gives."""

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from billing import selectors
from billing.models import BillingProfile, StripeBilledUser, StripeUsageReport
from billing.usage import UsageRecord, usage_upsert
from tests.factories import UserFactory

D = Decimal
TODAY = timezone.now().date()
LAST_MONTH = (TODAY.replace(day=1) - dt.timedelta(days=1)).replace(day=1)


def use(*users, day=TODAY, cpu="2"):
    usage_upsert(
        records=[UsageRecord(user_id=u.pk, date=day, cpu_hours=D(cpu)) for u in users],
        actor="test",
    )


def marks() -> dict[str, bool]:
    return dict(StripeBilledUser.objects.values_list("user_id", "subscription_live"))


def unbilled_by_anti_join() -> dict[str, Decimal]:
    """The unbilled usage as it was computed before `StripeBilledUser`: every Stripe-billed
    month of every user, less those of users with a live subscription."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH months AS (
                SELECT u.user_id, u.month, ROUND(SUM(u.total_cost), 2) AS total
                FROM usage_monthly u
                WHERE u.billed_via = 'stripe' AND NOT EXISTS (
                    SELECT 1 FROM billing_account p
                    WHERE p.user_id = u.user_id AND p.subscription_status = ANY(%s))
                GROUP BY 1, 2
            ), reported AS (
                SELECT user_id, month, SUM(reported_cents) AS cents
                FROM billing_stripe_usage_report GROUP BY 1, 2
            )
            SELECT m.user_id, SUM(m.total - COALESCE(r.cents, 0) / 100.0)
            FROM months m
            LEFT JOIN reported r ON r.user_id = m.user_id AND r.month = m.month
            GROUP BY 1 HAVING SUM(m.total - COALESCE(r.cents, 0) / 100.0) <> 0
            """,
            [list(BillingProfile.ACTIVE_SUBSCRIPTION)],
        )
        return {user_id: D(amount).quantize(D("0.01")) for user_id, amount in cursor}


@pytest.mark.django_db
def test_a_user_with_stripe_billed_usage_is_marked_live_only_with_a_live_subscription():
    bare, active, canceled, prepaid = UserFactory.create_batch(4)
    BillingProfile.objects.create(user=active, subscription_status="active")
    BillingProfile.objects.create(user=canceled, subscription_status="canceled")
    BillingProfile.objects.create(user=prepaid, mode=BillingProfile.Mode.PREPAID)

    use(bare, active, canceled, prepaid)

    assert marks() == {bare.pk: False, active.pk: True, canceled.pk: False}


@pytest.mark.django_db
@pytest.mark.parametrize("status", BillingProfile.ACTIVE_SUBSCRIPTION)
def test_each_live_status_marks_the_user_live_and_its_end_marks_them_not(status):
    user = UserFactory()
    use(user)
    assert marks() == {user.pk: False}

    profile = BillingProfile.objects.create(user=user, subscription_status=status)
    assert marks() == {user.pk: True}

    profile.subscription_status = "unpaid"
    profile.save()
    assert marks() == {user.pk: False}

    with connection.cursor() as cursor:  # an operator's SQL
        cursor.execute(
            "UPDATE billing_account SET subscription_status = %s WHERE user_id = %s",
            [status, user.pk],
        )
    assert marks() == {user.pk: True}

    profile.delete()
    assert marks() == {user.pk: False}


@pytest.mark.django_db
def test_usage_written_by_sql_and_profiles_truncated_keep_the_marks():
    user, other = UserFactory.create_batch(2)
    BillingProfile.objects.create(user=user, subscription_status="active")
    BillingProfile.objects.create(user=other, subscription_status="active")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_daily (user_id, date, cpu_hours, gpu_hours, storage_gb_months,"
            " api_calls, total_cost, credits_debited, billed_via, created_at, updated_at)"
            " VALUES (%s, %s, 1, 0, 0, 0, 0.1, 0, 'stripe', now(), now())",
            [user.pk, TODAY],
        )
    assert marks() == {user.pk: True}

    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred checks pending
        cursor.execute("TRUNCATE billing_account")
    assert marks() == {user.pk: False}
    assert selectors.unbilled_usage() == {user.pk: D("0.10")}


@pytest.mark.django_db
def test_unbilled_usage_is_what_an_anti_join_over_every_stripe_month_gives():
    users = UserFactory.create_batch(6)
    BillingProfile.objects.create(user=users[0], subscription_status="active")
    BillingProfile.objects.create(user=users[1], subscription_status="past_due")
    BillingProfile.objects.create(user=users[2], subscription_status="canceled")
    BillingProfile.objects.create(user=users[3], mode=BillingProfile.Mode.PREPAID)
    use(*users, day=LAST_MONTH)
    use(*users, cpu="3")
    StripeUsageReport.objects.create(
        user=users[4], month=LAST_MONTH, resource="cpu_hour", reported_cents=10
    )
    # The subscription of one ends after their usage, another's begins.
    BillingProfile.objects.filter(user=users[0]).update(subscription_status="canceled")
    BillingProfile.objects.create(user=users[5], subscription_status="trialing")

    held = selectors.unbilled_usage()

    assert held == unbilled_by_anti_join()
    assert set(held) == {users[0].pk, users[2].pk, users[4].pk}  # prepaid: on credits
    assert selectors.unbilled_usage(user_ids=[users[0].pk, users[1].pk]) == {
        users[0].pk: held[users[0].pk]
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_a_subscription_ending_while_new_usage_is_written_leaves_the_user_not_live():
    user = UserFactory()
    BillingProfile.objects.create(user=user, subscription_status="active")
    writing = threading.Event()
    done = threading.Event()

    def end_subscription():
        writing.wait(10)
        try:
            with transaction.atomic():
                BillingProfile.objects.filter(user=user).update(subscription_status="canceled")
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=end_subscription)
    thread.start()
    with transaction.atomic():
        use(user)  # marks the user live, holding their profile until commit
        writing.set()
        assert not done.wait(0.5)  # the status change waits for this transaction
    thread.join(10)

    assert done.is_set()
    assert marks() == {user.pk: False}
    assert set(selectors.unbilled_usage()) == {user.pk}
