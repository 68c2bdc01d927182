"""Spending alerts: 80, 90 and 100 % of the monthly cap (postpaid) and a balance crossing
below the low-balance threshold (prepaid), each sent once per period by email from a job."""

import datetime as dt
import json
import smtplib
from decimal import Decimal

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.utils import timezone

from billing.credits import Kind, credits_add
from billing.forecast import projected_month_cost
from billing.limits import spending_limits_set
from billing.models import BillingProfile, SpendingAlert
from tests.billing.stripe_helpers import login, prepaid_user
from tests.factories import UserFactory
from tests.jobs import run_queued_jobs

D = Decimal


def today():
    return timezone.now().date()


def post_usage(client, key, user, cpu_hours, *, day=None):
    """A script reports the day's CPU hours ($0.10 an hour on the default rate card)."""
    response = client.post(
        "/api/v1/usage",
        json.dumps(
            {"records": [{"user": user.pk, "date": str(day or today()), "cpu_hours": cpu_hours}]}
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=key,
    )
    assert response.status_code in (200, 201), response.content
    return response


def kinds(user):
    return sorted(SpendingAlert.objects.filter(user=user).values_list("kind", flat=True))


@pytest.mark.django_db
def test_each_cap_level_alerts_once_in_the_month_as_usage_grows(client, make_key):
    key = make_key("usage:write")
    user = UserFactory()
    spending_limits_set(
        user=user,
        monthly_spending_cap=D("100"),
        low_balance_threshold=None,
        actor="ops",
        by_user=False,
    )
    post_usage(client, key, user, "700")  # $70: below 80 %
    assert kinds(user) == []
    post_usage(client, key, user, "850")  # $85
    assert kinds(user) == ["cap_80"]
    post_usage(client, key, user, "850")  # the same again: nothing new
    post_usage(client, key, user, "950")  # $95
    assert kinds(user) == ["cap_80", "cap_90"]
    post_usage(client, key, user, "1200")  # $120
    assert kinds(user) == ["cap_100", "cap_80", "cap_90"]
    assert set(SpendingAlert.objects.values_list("period", flat=True)) == {f"{today():%Y-%m}"}


@pytest.mark.django_db
def test_the_email_goes_out_from_a_job_with_the_figures_in_money_format(client, make_key):
    key = make_key("usage:write")
    user = UserFactory(email="ada@example.com")
    post_usage(client, key, user, "12345.6")  # $1,234.56 against the default $1,000 cap
    assert kinds(user) == ["cap_100", "cap_80", "cap_90"]
    assert mail.outbox == []  # never in the request: a job sends it

    assert ("billing.send_spending_alerts", "succeeded") in run_queued_jobs()

    [email] = mail.outbox  # one email for the three levels reached at once
    assert email.to == ["ada@example.com"]
    assert "$1,000.00" in email.subject
    assert "$1,234.56" in email.body and "Raise your monthly spending cap" in email.body
    assert not SpendingAlert.objects.filter(sent_at__isnull=True).exists()
    run_queued_jobs()
    assert len(mail.outbox) == 1


class BrokenMail(BaseEmailBackend):
    def send_messages(self, messages):
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")


@pytest.mark.django_db
def test_a_failed_email_is_kept_with_its_error_and_sent_by_the_retry(client, make_key, settings):
    from procrastinate.contrib.django.models import ProcrastinateJob

    from billing.tasks import send_spending_alerts

    key = make_key("usage:write")
    user = UserFactory()
    settings.EMAIL_BACKEND = "tests.billing.test_spending_alerts.BrokenMail"
    post_usage(client, key, user, "8500")  # $850 of $1,000
    assert ("billing.send_spending_alerts", "failed") in run_queued_jobs()
    alert = SpendingAlert.objects.get(user=user)
    assert alert.sent_at is None and alert.attempts == 1
    assert "Connection unexpectedly closed" in alert.error

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # What the job's retry runs (the queue's clock is the test transaction's, in the past).
    [job] = ProcrastinateJob.objects.filter(task_name="billing.send_spending_alerts")
    assert job.status == "failed" and job.args == {"alert_ids": [alert.pk]}
    assert send_spending_alerts(**job.args) == "1 email(s) sent"
    alert.refresh_from_db()
    assert alert.sent_at is not None and alert.error == "" and alert.attempts == 2
    assert len(mail.outbox) == 1


@pytest.mark.django_db
def test_a_prepaid_balance_alerts_once_per_crossing_below_the_threshold(client, make_key):
    key = make_key("usage:write")
    user = prepaid_user(email="bo@example.com")
    credits_add(user=user, kind=Kind.PURCHASE, amount=D("50"), reference="buy-1", actor="t")
    spending_limits_set(
        user=user,
        monthly_spending_cap=None,
        low_balance_threshold=D("10"),
        actor="ops",
        by_user=False,
    )
    yesterday = today() - dt.timedelta(days=1)
    post_usage(client, key, user, "450", day=yesterday)  # $45: balance $5
    post_usage(client, key, user, "480", day=yesterday)  # balance $2: the same crossing
    assert kinds(user) == ["low_balance"]
    credits_add(user=user, kind=Kind.GRANT, amount=D("20"), reference="grant-1", actor="t")
    assert kinds(user) == ["low_balance"]  # $22: back above, re-armed
    post_usage(client, key, user, "140")  # $14 more: balance $8
    assert kinds(user) == ["low_balance", "low_balance"]
    run_queued_jobs()
    assert [e.subject for e in mail.outbox] == [  # the balance when it crossed
        "Your credit balance is low: $5.00",
        "Your credit balance is low: $8.00",
    ]
    assert "Buy credits" in mail.outbox[0].body


@pytest.mark.django_db
def test_a_refund_that_takes_the_balance_below_the_threshold_alerts():
    user = prepaid_user()
    credits_add(user=user, kind=Kind.PURCHASE, amount=D("30"), reference="buy", actor="t")
    credits_add(user=user, kind=Kind.REFUND, amount=D("-25"), reference="refund", actor="t")
    assert kinds(user) == ["low_balance"]


@pytest.mark.django_db
def test_a_lower_cap_set_by_the_user_alerts_at_once(client, make_key):
    user = UserFactory()
    post_usage(client, make_key("usage:write"), user, "500")  # $50
    assert kinds(user) == []
    login(client, user)
    client.post("/billing/limits/", {"monthly_spending_cap": "55"})
    assert kinds(user) == ["cap_80", "cap_90"]


@pytest.mark.django_db
def test_postpaid_alerts_are_not_raised_for_prepaid_users_and_vice_versa(client, make_key):
    key = make_key("usage:write")
    prepaid = prepaid_user()
    credits_add(user=prepaid, kind=Kind.PURCHASE, amount=D("5000"), reference="b", actor="t")
    post_usage(client, key, prepaid, "20000", day=today() - dt.timedelta(days=1))
    assert kinds(prepaid) == []
    postpaid = UserFactory()
    BillingProfile.objects.create(user=postpaid, low_balance_threshold=D("100"))
    post_usage(client, key, postpaid, "1")
    assert kinds(postpaid) == []


@pytest.mark.django_db
def test_alerts_are_shown_on_the_users_page_and_listed_read_only_in_the_admin(
    client, make_key, persona_client
):
    user = UserFactory()
    post_usage(client, make_key("usage:write"), user, "8500")
    run_queued_jobs()
    login(client, user)
    page = client.get("/").content.decode()
    assert "80% of the monthly spending cap" in page and "$850.00" in page

    staff = persona_client("finance_staff")
    listing = staff.get("/admin/billing/spendingalert/")
    assert listing.status_code == 200 and user.email in listing.content.decode()
    assert staff.get("/admin/billing/spendingalert/add/").status_code == 403
    alert = SpendingAlert.objects.get(user=user)
    staff.post(f"/admin/billing/spendingalert/{alert.pk}/delete/", {"post": "yes"})
    assert SpendingAlert.objects.filter(pk=alert.pk).exists()


@pytest.mark.parametrize(
    "so_far, day, expected",
    [
        (D("100"), dt.date(2026, 11, 11), D("300.00")),  # 10 complete days of 30
        (D("100"), dt.date(2026, 11, 1), D("100.00")),  # nothing to extrapolate from
        (D("10"), dt.date(2026, 12, 4), D("103.33")),  # 10 / 3 * 31
        (D("0.0000000001"), dt.date(2026, 2, 2), D("0.00")),
    ],
)
def test_the_projection_rule(so_far, day, expected):
    assert projected_month_cost(so_far, today=day) == expected


@pytest.mark.django_db
def test_the_projected_cost_is_on_the_users_page(client, make_key):
    user = UserFactory()
    post_usage(client, make_key("usage:write"), user, "100", day=today().replace(day=1))
    login(client, user)
    page = client.get("/").content.decode()
    expected = projected_month_cost(D("10"), today=today())
    assert "Projected for the whole month" in page and f"${expected:,}" in page


def _queries(work) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        work()
    return len(captured)


@pytest.mark.django_db
def test_evaluating_alerts_takes_the_same_queries_for_one_user_or_many():
    from billing.alerts import cap_alerts_evaluate, low_balance_alerts_evaluate
    from billing.usage import UsageRecord, usage_upsert

    def crowd(count, prepaid):
        users = [prepaid_user() if prepaid else UserFactory() for _ in range(count)]
        for user in users:
            if prepaid:
                credits_add(
                    user=user, kind=Kind.PURCHASE, amount=D("50"), reference=user.pk, actor="t"
                )
        usage_upsert(
            records=[UsageRecord(user_id=u.pk, date=today(), cpu_hours=D("12000")) for u in users],
            actor="t",
        )
        return [u.pk for u in users]

    one, many = crowd(1, False), crowd(12, False)
    SpendingAlert.objects.all().delete()
    assert _queries(lambda: cap_alerts_evaluate(user_ids=one)) == _queries(
        lambda: cap_alerts_evaluate(user_ids=many)
    )
    assert SpendingAlert.objects.filter(user_id__in=many).count() == 36
    one, many = crowd(1, True), crowd(12, True)
    SpendingAlert.objects.all().delete()
    assert _queries(lambda: low_balance_alerts_evaluate(user_ids=one)) == _queries(
        lambda: low_balance_alerts_evaluate(user_ids=many)
    )
    assert SpendingAlert.objects.filter(user_id__in=many, kind="low_balance").count() == 12


@pytest.mark.django_db
def test_the_alerts_list_takes_the_same_queries_for_few_or_many_rows(operator_client):
    def add(count):
        for _ in range(count):
            SpendingAlert.objects.create(
                user=UserFactory(),
                kind="cap_80",
                period="2026-11",
                amount=D("800"),
                limit_amount=D("1000"),
            )
        return _queries(lambda: operator_client.get("/admin/billing/spendingalert/"))

    operator_client.get("/admin/billing/spendingalert/")
    assert add(1) == add(20)


@pytest.mark.django_db
def test_checking_the_caps_of_many_users_holds_a_bounded_number_of_locks():
    # A cluster-day of 20,000 users is one transaction: a lock per user ran PostgreSQL out
    # of shared memory (its lock table holds 64 per connection by default).
    from django.db import connection, transaction

    from billing.alerts import cap_alerts_evaluate

    with transaction.atomic():
        cap_alerts_evaluate(user_ids=[f"auth0|many{n:05d}" for n in range(3000)])
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            held = cursor.fetchone()[0]
    assert 0 < held <= 512
