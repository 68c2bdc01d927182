"""Reconciliation: our usage, what we reported, what Stripe's meters counted and what its
invoice charged, side by side; every difference with its cause; the command, the daily
job and the admin page. Stripe is the local fake, driven by the real SDK."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.checkout import customer_ensure
from billing.credits import Kind, credits_add
from billing.models import (
    BillingHistory,
    BillingProfile,
    ReconciliationRun,
    StripeCatalogEntry,
    StripeUsageReport,
    UserCredits,
)
from billing.reconciliation import (
    RepairRefused,
    billing_reconcile,
    ours_by_user,
    reconciliation_resend,
)
from billing.stripe_reporting import month_cents_by_resource, usage_report_to_stripe
from billing.tasks import ReconciliationDifferences, reconcile_billing
from billing.usage import UsageRecord, usage_upsert
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.stripe import make_event

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def catalog(fake_stripe):
    call_command("setup_stripe_billing")
    return fake_stripe


def this_month() -> dt.date:
    return timezone.now().date().replace(day=1)


def month_bounds(month: dt.date) -> tuple[int, int]:
    start = dt.datetime.combine(month, dt.time(), tzinfo=dt.UTC)
    end = dt.datetime.combine((month + dt.timedelta(days=32)).replace(day=1), dt.time(), dt.UTC)
    return int(start.timestamp()), int(end.timestamp())


def subscribed_user(fake_stripe, **fields):
    user = UserFactory(**fields)
    customer = customer_ensure(user=user)
    prices = [entry.price_id for entry in StripeCatalogEntry.objects.order_by("resource")]
    subscription = fake_stripe.add_subscription(customer=customer, price_ids=prices)
    BillingProfile.objects.update_or_create(
        user=user,
        defaults={"stripe_subscription_id": subscription["id"], "subscription_status": "active"},
    )
    return user, subscription


def use(user, **figures):
    today = timezone.now().date()
    usage_upsert(
        records=[
            UsageRecord(user_id=user.pk, cluster_id=ClusterFactory().pk, date=today, **figures)
        ],
        actor="t",
    )


def reported_a_while_ago():
    """Stripe's summaries lag new events by minutes: the tests look after that lag."""
    StripeUsageReport.objects.update(last_reported_at=timezone.now() - dt.timedelta(hours=2))


def invoice_the_month(fake_stripe, deliver, subscription, status="open"):
    start, end = month_bounds(this_month())
    invoice = fake_stripe.add_usage_invoice(
        subscription_id=subscription["id"], period_start=start, period_end=end, status=status
    )
    deliver(make_event("invoice.finalized", invoice))
    return invoice


def reconcile(capsys, *args):
    """The command's output and whether it exited 0."""
    try:
        call_command("reconcile_billing", *args)
    except CommandError as error:
        return capsys.readouterr().out, error.returncode
    return capsys.readouterr().out, 0


# The figures


def test_our_figures_are_the_reporters_figures_for_every_user_from_one_month_query(
    catalog, django_assert_max_num_queries
):
    users = [subscribed_user(catalog)[0] for _ in range(3)]
    for n, user in enumerate(users):
        use(user, cpu_hours=D("10.123") * (n + 1), gpu_hours=D("1.5"), api_calls=1234)

    with django_assert_max_num_queries(2):  # the month's rows and the rate card
        ours = ours_by_user(this_month())

    assert ours == {u.pk: month_cents_by_resource(u.pk, this_month()) for u in users}


def test_a_month_reported_counted_and_invoiced_in_full_reconciles_cleanly(catalog, deliver, capsys):
    user, subscription = subscribed_user(catalog, email="ada@example.com")
    use(user, cpu_hours=D("10.123"), gpu_hours=D("1.5"), storage_gb_months=D("2"))
    usage_report_to_stripe()
    invoice_the_month(catalog, deliver, subscription)
    reported_a_while_ago()

    result = billing_reconcile(months=[this_month()])

    [line] = result.lines
    assert line.invoice_id and not line.differences and result.ok
    ours = month_cents_by_resource(user.pk, this_month())
    for resource, figures in line.figures.items():
        assert figures.ours == figures.reported == figures.stripe == figures.invoiced
        assert figures.ours == ours[resource]
    out, code = reconcile(capsys, "--month", f"{this_month():%Y-%m}", "--user", "ada@example.com")
    assert code == 0
    assert "ada@example.com" in out and "0 unexplained" in out
    assert ReconciliationRun.objects.get(actor="reconcile_billing").unexplained == 0


def test_a_lost_meter_event_is_found_and_resent_while_the_month_is_open(catalog, capsys):
    user, _ = subscribed_user(catalog)
    use(user, cpu_hours=D("10"), gpu_hours=D("2"))
    usage_report_to_stripe()
    reported_a_while_ago()
    lost = catalog.meter_events.pop(0)  # Stripe answered, then never counted it

    out, code = reconcile(capsys)

    assert code == 1
    assert "reported but Stripe does not have it: lost event -> resend" in out
    out, code = reconcile(capsys, "--repair")
    assert code == 0 and "repaired" in out
    [resent] = [e for e in catalog.meter_events if e["identifier"].startswith("reconcile-")]
    assert (resent["event_name"], resent["payload"]["value"]) == (
        lost["event_name"],
        lost["payload"]["value"],
    )
    assert billing_reconcile(months=[this_month()]).ok
    out, code = reconcile(capsys, "--repair")  # nothing left: nothing sent
    assert code == 0 and len(catalog.meter_events) == 2


def test_an_event_stripe_counted_twice_is_found_and_taken_back(catalog, capsys):
    user, _ = subscribed_user(catalog)
    use(user, cpu_hours=D("10"))
    usage_report_to_stripe()
    reported_a_while_ago()
    [event] = catalog.meter_events
    catalog.meter_events.append({**event, "identifier": "resent-after-24-hours"})

    out, code = reconcile(capsys, "--repair")

    assert code == 0 and "counted twice" in out
    taken_back = catalog.meter_events[-1]
    assert int(taken_back["payload"]["value"]) == -int(event["payload"]["value"])
    assert billing_reconcile(months=[this_month()]).ok


def test_a_correction_after_the_invoice_was_finalized_is_an_invoice_item_and_reconciles(
    catalog, deliver, capsys
):
    user, subscription = subscribed_user(catalog)
    use(user, cpu_hours=D("10"))
    usage_report_to_stripe()
    invoice_the_month(catalog, deliver, subscription)
    use(user, cpu_hours=D("15"))  # the day corrected upwards after the invoice
    usage_report_to_stripe()
    reported_a_while_ago()

    out, code = reconcile(capsys)

    assert code == 0, out
    [item] = catalog.invoiceitems.values()
    assert item["amount"] == 150
    assert "0 unexplained" in out


def test_a_meter_event_that_reached_stripe_after_the_invoice_was_finalized_is_flagged(
    catalog, deliver, capsys
):
    # What the code before closed periods did: a late correction as a meter event stamped
    # into the month, counted by the meter, never invoiced.
    user, subscription = subscribed_user(catalog)
    use(user, cpu_hours=D("10"))
    usage_report_to_stripe()
    invoice_the_month(catalog, deliver, subscription)
    use(user, cpu_hours=D("15"))
    [event] = [e for e in catalog.meter_events if "cpu_hour" in e["event_name"]]
    catalog.meter_events.append(
        {**event, "identifier": "late-event", "payload": {**event["payload"], "value": "150"}}
    )
    StripeUsageReport.objects.filter(user=user, resource="cpu_hour").update(reported_cents=250)
    reported_a_while_ago()

    out, code = reconcile(capsys)

    assert code == 1
    assert "invoice does not include late events: month closed" in out
    assert "propose: invoice item of 150 cents" in out
    out, code = reconcile(capsys, "--repair")  # a closed month is never resent
    assert code == 1
    assert not [e for e in catalog.meter_events if e["identifier"].startswith("reconcile-")]


def test_a_pending_event_and_usage_without_a_live_subscription_are_explained(catalog, capsys):
    pending_user, _ = subscribed_user(catalog)
    use(pending_user, cpu_hours=D("10"))
    catalog.fail_next(1, status=500, path="/v2/billing/meter_event_stream")
    usage_report_to_stripe()  # decided, sent, not confirmed
    unbilled_user, _ = subscribed_user(catalog)
    BillingProfile.objects.filter(user=unbilled_user).update(subscription_status="canceled")
    use(unbilled_user, gpu_hours=D("1"))

    out, code = reconcile(capsys)

    assert code == 0
    assert "pending event unconfirmed" in out
    assert "no live subscription (held as unbilled)" in out


def test_a_balance_that_disagrees_with_its_ledger_is_unexplained(catalog, capsys):
    user = UserFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    credits_add(user=user, kind=Kind.PURCHASE, amount=D("50"), reference="p1", actor="t")
    use(user, cpu_hours=D("10"))
    assert billing_reconcile(months=[this_month()]).ok
    UserCredits.objects.filter(user=user).update(total_used=D("0"))

    out, code = reconcile(capsys)

    assert code == 1
    assert "ledger sum != user_credits" in out
    assert "check_credit_balances --fix" in out


def test_bad_input_is_exit_code_2(catalog, capsys):
    assert reconcile(capsys, "--month", "2026-13")[1] == 2
    assert reconcile(capsys, "--user", "nobody@example.com")[1] == 2
    assert not ReconciliationRun.objects.exists()


# The daily job and the admin page


def test_the_daily_job_fails_on_an_unexplained_difference_and_the_admin_shows_the_run(
    catalog, client, persona
):
    user, _ = subscribed_user(catalog, email="grace@example.com")
    use(user, cpu_hours=D("10"))
    usage_report_to_stripe()
    reported_a_while_ago()
    catalog.meter_events.clear()

    with pytest.raises(ReconciliationDifferences, match="1 unexplained"):
        reconcile_billing(timestamp=int(timezone.now().timestamp()))

    run = ReconciliationRun.objects.get()
    assert (run.actor, run.unexplained) == ("job", 1)
    client.force_login(
        persona("finance_staff"), backend="django.contrib.auth.backends.ModelBackend"
    )
    listing = client.get("/admin/billing/reconciliationrun/")
    page = client.get(f"/admin/billing/reconciliationrun/{run.pk}/change/").content.decode()
    assert listing.status_code == 200
    assert "grace@example.com" in page and "lost event" in page
    client.force_login(
        persona("support_staff"), backend="django.contrib.auth.backends.ModelBackend"
    )
    assert client.get(f"/admin/billing/reconciliationrun/{run.pk}/change/").status_code == 403


def test_the_daily_job_passes_when_everything_agrees(catalog):
    user, _ = subscribed_user(catalog)
    use(user, cpu_hours=D("10"))
    usage_report_to_stripe()
    reported_a_while_ago()

    assert "0 unexplained" in reconcile_billing(timestamp=int(timezone.now().timestamp()))


def test_the_reconciliation_list_makes_as_many_queries_for_many_runs_as_for_one(
    operator_client,
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert operator_client.get("/admin/billing/reconciliationrun/").status_code == 200
        return len(captured)

    ReconciliationRun.objects.create(months="2026-11", actor="job", unexplained=1)
    one = queries()
    for _ in range(5):
        ReconciliationRun.objects.create(months="2026-11, 2026-12", actor="job")

    assert queries() == one


def test_usage_from_before_the_subscription_is_an_invoice_item_and_reconciles(catalog, capsys):
    # The reporter's rule for a closed month is reconciliation's too: last month ended
    # before this subscription began, so its usage goes on an invoice item, not the meter.
    last_month = (this_month() - dt.timedelta(days=1)).replace(day=1)
    user = UserFactory()
    customer = customer_ensure(user=user)
    prices = [entry.price_id for entry in StripeCatalogEntry.objects.order_by("resource")]
    began = int(dt.datetime.combine(this_month(), dt.time(), dt.UTC).timestamp())
    subscription = catalog.add_subscription(customer=customer, price_ids=prices, start_date=began)
    BillingProfile.objects.update_or_create(
        user=user,
        defaults={"stripe_subscription_id": subscription["id"], "subscription_status": "active"},
    )
    usage_upsert(
        records=[
            UsageRecord(
                user_id=user.pk, cluster_id=ClusterFactory().pk, date=last_month, cpu_hours=D(10)
            )
        ],
        actor="t",
    )
    usage_report_to_stripe()
    reported_a_while_ago()

    out, code = reconcile(capsys, "--month", f"{last_month:%Y-%m}")

    assert code == 0, out
    [item] = catalog.invoiceitems.values()
    assert item["amount"] == 100
    assert not catalog.meter_events
    assert "0 unexplained" in out


def test_a_final_invoice_of_a_subscription_ended_in_the_portal_reconciles(catalog, deliver, capsys):
    # Canceled outside our flow: Stripe invoices nothing, we invoice what its meters counted
    # (billing/subscription_end.py) as items with no metered price. That invoice charges the
    # month: reconciliation must not call it "not invoiced" and propose charging it again.
    user, subscription = subscribed_user(catalog)
    use(user, cpu_hours=D("10"), gpu_hours=D("2"))
    usage_report_to_stripe()
    deliver(
        make_event("customer.subscription.deleted", catalog.end_subscription(subscription["id"]))
    )
    [final] = [i for i in catalog.invoices.values() if not i.get("subscription")]
    deliver(make_event("invoice.finalized", final))
    reported_a_while_ago()

    result = billing_reconcile(months=[this_month()])

    [line] = result.lines
    assert (line.invoice_id, line.final_invoice_id) == ("", final["id"])
    assert result.ok, [d for _, d in result.differences]
    for resource, figures in line.figures.items():
        assert figures.invoiced == figures.stripe == figures.reported, resource
    assert sum(f.invoiced for f in line.figures.values()) == final["amount_due"] > 0
    out, code = reconcile(capsys)
    assert code == 0, out
    assert "propose" not in out
    # Made after midnight at the month's end, it still charges the month it covers.
    next_month = (this_month() + dt.timedelta(days=32)).replace(day=1)
    BillingHistory.objects.filter(stripe_invoice_id=final["id"]).update(
        period_start=dt.datetime.combine(next_month, dt.time(), dt.UTC)
    )
    [line] = billing_reconcile(months=[this_month()]).lines
    assert line.final_invoice_id == final["id"] and not line.differences


def test_no_resend_to_the_meter_of_a_month_our_final_invoice_charged(catalog, deliver):
    user, subscription = subscribed_user(catalog)
    use(user, cpu_hours=D("10"))
    usage_report_to_stripe()
    deliver(
        make_event("customer.subscription.deleted", catalog.end_subscription(subscription["id"]))
    )
    catalog.meter_events.clear()  # Stripe's meter lost what it counted: a resend would go on it
    events = len(catalog.meter_events)
    reported_a_while_ago()

    with pytest.raises(RepairRefused, match="the month is closed"):
        reconciliation_resend(user=user, month=this_month(), resource="cpu_hour", actor="t")

    assert len(catalog.meter_events) == events


def test_stripes_own_invoice_of_an_ended_subscription_stays_the_months_invoice(catalog, deliver):
    # Ended in the portal, but Stripe invoiced the period itself ("covered"): that invoice,
    # on our metered prices, is the month's, as any other.
    user, subscription = subscribed_user(catalog)
    use(user, cpu_hours=D("10"))
    usage_report_to_stripe()
    ended = catalog.end_subscription(subscription["id"])
    start, _ = month_bounds(this_month())
    invoice = catalog.add_usage_invoice(
        subscription_id=subscription["id"], period_start=start, period_end=ended["ended_at"]
    )
    deliver(make_event("invoice.finalized", invoice))
    deliver(make_event("customer.subscription.deleted", ended))
    reported_a_while_ago()

    [line] = billing_reconcile(months=[this_month()]).lines

    assert (line.invoice_id, line.final_invoice_id) == (invoice["id"], "")
    assert line.month_closed and not line.differences
    assert line.figures["cpu_hour"].invoiced == line.figures["cpu_hour"].stripe == 100
