"""Who may run which admin action: every action of every registered admin, against each
persona (tests/conftest.py). "Allowed" means the changelist offers the action and running
it changes what it changes; "refused" means it is not offered and a crafted POST changes
nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from billing.models import (
    AccountClosure,
    Auth0LogEvent,
    BillingAdjustment,
    BillingHistory,
    BillingProfile,
    CreditLedgerEntry,
    Price,
    ReconciliationRun,
    ServiceStop,
    SpendingAlert,
    SpendingLimitChange,
    StripeCatalogEntry,
    StripeEvent,
    StripeUsageAdjustment,
    StripeUsageReport,
    SubscriptionEnd,
    UsageCollectionRun,
    UsageDaily,
    UserCredits,
)
from clusters import services
from clusters.models import CapacityWait, HopsworksAccount, HopsworksCluster
from clusters.models import UserHopsworksAssignment as Assignment
from tests.factories import ClusterFactory, UserFactory
from tests.jobs import job_with_status, run_queued_jobs
from tests.personas import PERSONA_COLUMNS

pytestmark = pytest.mark.django_db

Y, _ = True, False
#                                                     nobody view change_user support finance super
MATRIX = {
    ("accounts.user", "suspend_users"):                  (_, _, _, Y, _, Y),
    ("accounts.user", "reactivate_users"):               (_, _, _, Y, _, Y),
    ("accounts.user", "auto_assign"):                    (_, _, _, Y, _, Y),
    ("accounts.user", "assign_to_cluster"):              (_, _, _, Y, _, Y),
    ("accounts.user", "move_to_cluster"):                (_, _, _, Y, _, Y),
    ("accounts.user", "unassign"):                       (_, _, _, Y, _, Y),
    ("accounts.user", "make_prepaid"):                   (_, _, _, _, Y, Y),
    ("accounts.user", "make_postpaid"):                  (_, _, _, _, Y, Y),
    ("accounts.user", "grant_credits"):                  (_, _, _, _, Y, Y),
    ("accounts.user", "debit_accounts"):                 (_, _, _, _, Y, Y),
    ("accounts.user", "sync_invoices"):                  (_, _, _, _, Y, Y),
    ("accounts.user", "close_accounts"):                 (_, _, _, _, Y, Y),
    ("accounts.user", "set_spending_limits"):            (_, _, _, _, Y, Y),
    ("accounts.user", "delete_selected"):                (_, _, _, _, _, Y),
    ("accounts.apikey", "delete_selected"):              (_, _, _, _, _, Y),
    ("clusters.hopsworkscluster", "test_connection"):    (_, _, _, _, _, Y),
    ("clusters.hopsworkscluster", "put_in_maintenance"): (_, _, _, _, _, Y),
    ("clusters.hopsworkscluster", "make_active"):        (_, _, _, _, _, Y),
    ("clusters.hopsworkscluster", "make_inactive"):      (_, _, _, _, _, Y),
    ("clusters.hopsworkscluster", "collect_now"):        (_, _, _, _, Y, Y),
    ("clusters.hopsworkscluster", "delete_selected"):    (_, _, _, _, _, Y),
    ("clusters.capacitywait", "place_now"):              (_, _, _, Y, _, Y),
    ("clusters.capacitywait", "delete_selected"):        (_, _, _, _, _, Y),
    ("clusters.hopsworksaccount", "sync_now"):           (_, _, _, Y, _, Y),
    ("clusters.hopsworksaccount", "delete_selected"):    (_, _, _, _, _, _),
    ("billing.usercredits", "grant_credits"):            (_, _, _, _, Y, Y),
    ("billing.usercredits", "delete_selected"):          (_, _, _, _, _, _),
    ("billing.creditledgerentry", "delete_selected"):    (_, _, _, _, _, _),
    ("billing.creditpurchase", "refund_purchases"):      (_, _, _, _, Y, Y),
    ("billing.creditpurchase", "delete_selected"):       (_, _, _, _, _, _),
    ("billing.usagecollectionrun", "collect_again"):     (_, _, _, _, Y, Y),
    ("billing.usagecollectionrun", "delete_selected"):   (_, _, _, _, _, _),
    ("billing.usagedaily", "delete_selected"):           (_, _, _, _, _, _),
    ("billing.price", "delete_selected"):                (_, _, _, _, _, _),
    ("billing.stripeevent", "process_again"):            (_, _, _, _, Y, Y),
    ("billing.stripeevent", "delete_selected"):          (_, _, _, _, _, _),
    ("billing.billinghistory", "delete_selected"):       (_, _, _, _, _, _),
    ("billing.stripecatalogentry", "delete_selected"):   (_, _, _, _, _, _),
    ("billing.stripeusagereport", "delete_selected"):    (_, _, _, _, _, _),
    ("billing.reconciliationrun", "delete_selected"):    (_, _, _, _, _, _),
    ("billing.stripeusageadjustment", "delete_selected"): (_, _, _, _, _, _),
    ("billing.servicestop", "lift_stops"):               (_, _, _, _, Y, Y),
    ("billing.servicestop", "delete_selected"):          (_, _, _, _, _, _),
    ("billing.billingadjustment", "delete_selected"):    (_, _, _, _, _, _),
    ("billing.accountclosure", "delete_selected"):       (_, _, _, _, _, _),
    ("billing.subscriptionend", "delete_selected"):      (_, _, _, _, _, _),
    ("billing.auth0logevent", "delete_selected"):        (_, _, _, _, _, _),
    ("billing.spendingalert", "delete_selected"):        (_, _, _, _, _, _),
    ("billing.spendinglimitchange", "delete_selected"):  (_, _, _, _, _, _),
    ("auth.group", "delete_selected"):                   (_, _, _, _, _, Y),
    ("procrastinate.procrastinatejob", "retry_jobs"):    (_, _, _, _, _, Y),
    ("procrastinate.procrastinatejob", "cancel_jobs"):   (_, _, _, _, _, Y),
    ("procrastinate.procrastinatejob", "delete_selected"): (_, _, _, _, _, _),
    ("axes.accessattempt", "delete_selected"):          (_, _, _, _, _, Y),
}  # fmt: skip


def _registered_actions() -> set[tuple[str, str]]:
    return {
        (model._meta.label_lower, name)
        for model, model_admin in admin.site._registry.items()
        for _func, name, _description in model_admin._get_base_actions()
    }


def test_the_matrix_has_a_row_for_every_action_of_every_registered_admin():
    assert set(MATRIX) == _registered_actions()


def test_every_admin_action_declares_the_permissions_it_needs():
    for model, model_admin in admin.site._registry.items():
        for func, name, _description in model_admin._get_base_actions():
            needed = getattr(func, "allowed_permissions", ())
            assert needed, f"{model._meta.label_lower}.{name} declares no permissions"
            for permission in needed:
                assert callable(getattr(model_admin, f"has_{permission}_permission", None)), (
                    f"{model._meta.label_lower}.{name} needs has_{permission}_permission"
                )


# What each action is run on, and what it changes -------------------------------------


@dataclass
class Case:
    selected: list
    observe: Callable[[], Any]  # a snapshot of what the action changes
    data: dict = field(default_factory=dict)


def _status(model, pk):
    return lambda: model.objects.filter(pk=pk).values_list("status", flat=True).first()


def _where(user):
    return lambda: (
        Assignment.objects.filter(user=user)
        .values_list("hopsworks_cluster__name", flat=True)
        .first()
    )


def _exists(obj):
    return lambda: type(obj).objects.filter(pk=obj.pk).exists()


def _deleting(make):
    def case(request):
        obj = make()
        return Case([obj.pk], _exists(obj))

    return case


def suspend_users(request):
    target = UserFactory()
    return Case([target.pk], _status(User, target.pk), {"reason": "test"})


def reactivate_users(request):
    target = UserFactory(status=User.Status.SUSPENDED)
    return Case([target.pk], _status(User, target.pk))


def auto_assign(request):
    ClusterFactory(name="east")
    target = UserFactory()
    return Case([target.pk], _where(target))


def assign_to_cluster(request):
    east = ClusterFactory(name="east")
    target = UserFactory()
    return Case([target.pk], _where(target), {"cluster": east.pk})


def move_to_cluster(request):
    east, west = ClusterFactory(name="east"), ClusterFactory(name="west")
    target = UserFactory()
    services.assignment_create(user=target, cluster=east, actor=None)
    return Case([target.pk], _where(target), {"cluster": west.pk})


def unassign(request):
    target = UserFactory()
    services.assignment_create(user=target, cluster=ClusterFactory(), actor=None)
    return Case([target.pk], _where(target))


def _mode(user):
    return lambda: BillingProfile.objects.filter(user=user).values_list("mode", flat=True).first()


def make_prepaid(request):
    target = UserFactory()
    return Case([target.pk], _mode(target))


def make_postpaid(request):
    target = UserFactory()
    BillingProfile.objects.create(user=target, mode=BillingProfile.Mode.PREPAID)
    return Case([target.pk], _mode(target))


GRANT = {"amount": "5", "reason": "goodwill", "token": "tok"}


def _prepaid_user():
    target = UserFactory()
    BillingProfile.objects.create(user=target, mode=BillingProfile.Mode.PREPAID)
    return target


def grant_credits_to_users(request):
    target = _prepaid_user()
    return Case([target.pk], CreditLedgerEntry.objects.count, GRANT)


def debit_accounts(request):
    target = _prepaid_user()
    return Case([target.pk], CreditLedgerEntry.objects.count, {**GRANT, "reason": "support"})


def grant_credits_from_balances(request):
    from billing.credits import Kind, credits_add

    target = _prepaid_user()
    credits_add(user=target, kind=Kind.PURCHASE, amount=Decimal("1"), reference="p", actor="t")
    return Case([UserCredits.objects.get(user=target).pk], CreditLedgerEntry.objects.count, GRANT)


def _purchase(fake_stripe):
    from billing.purchases import credit_purchase_apply

    target = UserFactory()
    customer = fake_stripe.add_customer(email=target.email) if fake_stripe else {"id": "cus"}
    charge = (
        fake_stripe.add_charge(customer=customer["id"], amount=500)
        if fake_stripe
        else {"payment_intent": "pi_1"}
    )
    session = {"id": f"cs_{target.pk}", "amount_total": 500, "currency": "usd"}
    return credit_purchase_apply(
        user=target, session={**session, "payment_intent": charge["payment_intent"]}
    )


def refund_purchases(request):
    """Allowed: a refund is asked of Stripe (the webhook applies it later)."""
    fake_stripe = request.getfixturevalue("fake_stripe")
    purchase = _purchase(fake_stripe)
    return Case([purchase.pk], lambda: len(fake_stripe.posts("/v1/refunds")))


def set_spending_limits(request):
    target = UserFactory()
    data = {"monthly_spending_cap": "123", "keep_threshold": "on"}
    return Case(
        [target.pk],
        lambda: (
            BillingProfile.objects.filter(user=target)
            .values_list("monthly_spending_cap", flat=True)
            .first()
        ),
        data,
    )


def _queued(task_name):
    """Actions that call an outside system queue a job: what they change is the queue."""
    from procrastinate.contrib.django.models import ProcrastinateJob

    return lambda: ProcrastinateJob.objects.filter(task_name=task_name, status="todo").count()


def close_accounts(request):
    target = UserFactory()
    return Case([target.pk], _status(User, target.pk), {"reason": "leaving"})


def sync_invoices(request):
    from billing.checkout import customer_ensure

    fake_stripe = request.getfixturevalue("fake_stripe")
    target = UserFactory()
    fake_stripe.add_invoice(customer=customer_ensure(user=target), status="paid", amount_due=5)
    return Case([target.pk], _queued("billing.sync_invoices"))


def connect(request):
    east, _west = request.getfixturevalue("fake_hopsworks")
    cluster = request.getfixturevalue("cluster_on")(east, name="east")
    return Case([cluster.pk], lambda: len(east.requests))


def _cluster_status(status):
    def case(request):
        cluster = ClusterFactory(status=status)
        return Case([cluster.pk], _status(HopsworksCluster, cluster.pk))

    return case


def collect_now(request):
    cluster = ClusterFactory()
    return Case([cluster.pk], _queued("billing.collect_cluster_day"))


def collect_again(request):
    run = UsageCollectionRun.objects.create(
        cluster=ClusterFactory(), date=timezone.now().date() - dt.timedelta(days=2), error="x"
    )
    return Case([run.pk], _queued("billing.collect_cluster_day"))


def place_now(request):
    ClusterFactory()
    waiting = UserFactory()
    wait = CapacityWait.objects.create(user=waiting)
    return Case([wait.pk], _queued("clusters.place_waiting_users"))


def sync_now(request):
    east, _west = request.getfixturevalue("fake_hopsworks")
    target = UserFactory()
    services.assignment_create(
        user=target, cluster=request.getfixturevalue("cluster_on")(east), actor=None
    )
    run_queued_jobs()  # the assignment's own sync job has run: the queue is empty again
    account = HopsworksAccount.objects.get(user=target)
    return Case([account.pk], _queued("clusters.sync_user_accounts"))


def process_again(request):
    event = StripeEvent.objects.create(
        id="evt_1", type="nobody.handles.this", created=timezone.now(), payload={}, status="failed"
    )
    return Case([event.pk], _queued("billing.process_stripe_event"))


def _service_stop():
    now = timezone.now()
    return ServiceStop.objects.create(
        user=UserFactory(), reason="over_cap", detected_at=now, enforce_at=now, stopped_at=now
    )


def lift_stops(request):
    stop = _service_stop()
    return Case(
        [stop.pk],
        lambda: ServiceStop.objects.filter(pk=stop.pk).values_list("resolution", flat=True)[0],
        {"reason": "paying by wire", "hours": "24"},
    )


def _ledger_entry():
    from billing.credits import Kind, credits_add

    return credits_add(
        user=UserFactory(), kind=Kind.PURCHASE, amount=Decimal("1"), reference="p", actor="t"
    )


def _usage_row():
    from billing.usage import UsageRecord, usage_upsert

    user = UserFactory()
    usage_upsert(
        records=[UsageRecord(user_id=user.pk, date=timezone.now().date(), api_calls=1)],
        actor="t",
    )
    return UsageDaily.objects.get(user=user)


def _api_key():
    from accounts.api_keys import api_key_create

    return api_key_create(name="script", scopes=["users:read"], actor="t")[0]


def _group():
    from django.contrib.auth.models import Group

    return Group.objects.create(name="support")


def _job_status(job_id):
    from procrastinate.contrib.django.models import ProcrastinateJob

    return lambda: ProcrastinateJob.objects.filter(pk=job_id).values_list("status", flat=True)[0]


def _access_attempt():
    from axes.models import AccessAttempt

    return AccessAttempt.objects.create(
        username="ops@example.com",
        ip_address="127.0.0.1",
        user_agent="test",
        get_data="",
        post_data="",
        failures_since_start=5,
    )


def retry_jobs(request):
    job_id = job_with_status("failed")
    return Case([job_id], _job_status(job_id))


def cancel_jobs(request):
    job_id = job_with_status("todo")
    return Case([job_id], _job_status(job_id))


SCENARIOS = {
    ("accounts.user", "suspend_users"): suspend_users,
    ("accounts.user", "reactivate_users"): reactivate_users,
    ("accounts.user", "auto_assign"): auto_assign,
    ("accounts.user", "assign_to_cluster"): assign_to_cluster,
    ("accounts.user", "move_to_cluster"): move_to_cluster,
    ("accounts.user", "unassign"): unassign,
    ("accounts.user", "make_prepaid"): make_prepaid,
    ("accounts.user", "make_postpaid"): make_postpaid,
    ("accounts.user", "grant_credits"): grant_credits_to_users,
    ("accounts.user", "debit_accounts"): debit_accounts,
    ("accounts.user", "sync_invoices"): sync_invoices,
    ("accounts.user", "close_accounts"): close_accounts,
    ("accounts.user", "set_spending_limits"): set_spending_limits,
    ("accounts.user", "delete_selected"): _deleting(UserFactory),
    ("accounts.apikey", "delete_selected"): _deleting(_api_key),
    ("clusters.hopsworkscluster", "test_connection"): connect,
    ("clusters.hopsworkscluster", "put_in_maintenance"): _cluster_status("active"),
    ("clusters.hopsworkscluster", "make_active"): _cluster_status("inactive"),
    ("clusters.hopsworkscluster", "make_inactive"): _cluster_status("active"),
    ("clusters.hopsworkscluster", "collect_now"): collect_now,
    ("clusters.hopsworkscluster", "delete_selected"): _deleting(ClusterFactory),
    ("clusters.capacitywait", "place_now"): place_now,
    ("clusters.capacitywait", "delete_selected"): _deleting(
        lambda: CapacityWait.objects.create(user=UserFactory())
    ),
    ("clusters.hopsworksaccount", "sync_now"): sync_now,
    ("clusters.hopsworksaccount", "delete_selected"): _deleting(
        lambda: HopsworksAccount.objects.create(
            user=UserFactory(), cluster=ClusterFactory(), desired="active"
        )
    ),
    ("billing.usercredits", "grant_credits"): grant_credits_from_balances,
    ("billing.usercredits", "delete_selected"): _deleting(
        lambda: UserCredits.objects.get(user=_ledger_entry().user)
    ),
    ("billing.creditledgerentry", "delete_selected"): _deleting(_ledger_entry),
    ("billing.creditpurchase", "refund_purchases"): refund_purchases,
    ("billing.creditpurchase", "delete_selected"): _deleting(lambda: _purchase(None)),
    ("billing.usagecollectionrun", "collect_again"): collect_again,
    ("billing.usagecollectionrun", "delete_selected"): _deleting(
        lambda: UsageCollectionRun.objects.create(
            cluster=ClusterFactory(), date=timezone.now().date()
        )
    ),
    ("billing.usagedaily", "delete_selected"): _deleting(_usage_row),
    ("billing.price", "delete_selected"): _deleting(
        lambda: Price.objects.create(
            resource="cpu_hour",
            unit_price=Decimal("1"),
            effective_from=timezone.now().date() + dt.timedelta(days=30),
        )
    ),
    ("billing.stripeevent", "process_again"): process_again,
    ("billing.stripeevent", "delete_selected"): _deleting(
        lambda: StripeEvent.objects.create(id="evt_2", type="x", created=timezone.now(), payload={})
    ),
    ("billing.billinghistory", "delete_selected"): _deleting(
        lambda: BillingHistory.objects.create(user=UserFactory(), amount=Decimal("1"))
    ),
    ("billing.stripecatalogentry", "delete_selected"): _deleting(
        lambda: StripeCatalogEntry.objects.create(
            resource="cpu_hour", event_name="cpu", meter_id="m", product_id="p", price_id="pr"
        )
    ),
    ("billing.stripeusagereport", "delete_selected"): _deleting(
        lambda: StripeUsageReport.objects.create(
            user=UserFactory(), month=timezone.now().date().replace(day=1), resource="cpu_hour"
        )
    ),
    ("billing.reconciliationrun", "delete_selected"): _deleting(
        lambda: ReconciliationRun.objects.create(months="2026-11", actor="test")
    ),
    ("billing.stripeusageadjustment", "delete_selected"): _deleting(
        lambda: StripeUsageAdjustment.objects.create(
            user=UserFactory(),
            month=timezone.now().date().replace(day=1),
            cents=1,
            resources={"cpu_hour": 1},
            description="Usage correction",
            identifier="adjust-1",
        )
    ),
    ("billing.servicestop", "lift_stops"): lift_stops,
    ("billing.servicestop", "delete_selected"): _deleting(_service_stop),
    ("billing.billingadjustment", "delete_selected"): _deleting(
        lambda: BillingAdjustment.objects.create(
            user=UserFactory(),
            direction="credit",
            amount=Decimal("1"),
            channel="ledger",
            reason="goodwill",
            actor="test",
            reference="grant:t:1",
        )
    ),
    ("billing.accountclosure", "delete_selected"): _deleting(
        lambda: AccountClosure.objects.create(
            user=UserFactory(), closed_at=timezone.now(), actor="t", reason="r", mode="prepaid"
        )
    ),
    ("billing.subscriptionend", "delete_selected"): _deleting(
        lambda: SubscriptionEnd.objects.create(
            subscription_id="sub_1", user=UserFactory(), ended_by="stripe"
        )
    ),
    ("billing.auth0logevent", "delete_selected"): _deleting(
        lambda: Auth0LogEvent.objects.create(log_id="1", type="sdu", outcome="unknown_user")
    ),
    ("billing.spendingalert", "delete_selected"): _deleting(
        lambda: SpendingAlert.objects.create(
            user=UserFactory(), kind="cap_80", period="2026-11", amount=1, limit_amount=1
        )
    ),
    ("billing.spendinglimitchange", "delete_selected"): _deleting(
        lambda: SpendingLimitChange.objects.create(
            user=UserFactory(), field="monthly_spending_cap", actor="t", by_user=False
        )
    ),
    ("auth.group", "delete_selected"): _deleting(_group),
    ("procrastinate.procrastinatejob", "retry_jobs"): retry_jobs,
    ("procrastinate.procrastinatejob", "cancel_jobs"): cancel_jobs,
    ("axes.accessattempt", "delete_selected"): _deleting(_access_attempt),
    ("procrastinate.procrastinatejob", "delete_selected"): lambda request: Case(
        [job_id := job_with_status("succeeded")], _job_status(job_id)
    ),
}

CELLS = [
    pytest.param(who, label, action, allowed, id=f"{who}-{label}.{action}")
    for (label, action), row in MATRIX.items()
    for who, allowed in zip(PERSONA_COLUMNS, row, strict=True)
]


def test_every_row_of_the_matrix_has_a_scenario():
    assert set(SCENARIOS) == set(MATRIX)


def _offered(client, url) -> set[str]:
    response = client.get(url)
    if response.status_code != 200:
        return set()
    action_form = response.context["action_form"]
    if action_form is None:
        return set()
    return {name for name, _label in action_form.fields["action"].choices if name}


@pytest.mark.parametrize(("who", "label", "action", "allowed"), CELLS)
def test_an_admin_action_is_offered_and_runs_only_for_those_allowed(
    request, persona_client, who, label, action, allowed
):
    case = SCENARIOS[(label, action)](request)
    client = persona_client(who)
    url = reverse(f"admin:{label.replace('.', '_')}_changelist")
    before = case.observe()

    offered = action in _offered(client, url)
    client.post(
        url,
        {
            "action": action,
            "_selected_action": case.selected,
            "confirmed": "yes",  # past our confirmation page
            "post": "yes",  # past Django's delete confirmation
            **case.data,
        },
    )

    assert offered == allowed
    if allowed:
        assert case.observe() != before, "offered, but running it changed nothing"
    else:
        assert case.observe() == before, "refused, yet a crafted POST changed something"


# Exports (CSV and XLSX of what a list shows) are not actions on selected rows but links
# on the list: the model's view permission plus its own `export_<model>` permission.
#                                   nobody view change_user support finance super
EXPORTS = {
    "billing.usagedaily":         (_, _, _, _, Y, Y),
    "billing.billinghistory":     (_, _, _, _, Y, Y),
    "billing.creditledgerentry":  (_, _, _, _, Y, Y),
    "accounts.user":              (_, _, _, _, Y, Y),
}  # fmt: skip

EXPORT_CELLS = [
    pytest.param(who, label, allowed, id=f"{who}-{label}.export")
    for label, row in EXPORTS.items()
    for who, allowed in zip(PERSONA_COLUMNS, row, strict=True)
]


def test_the_export_matrix_has_a_row_for_every_admin_that_exports():
    from plumbing.admin_export import ExportAdminMixin

    exporting = {
        model._meta.label_lower
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, ExportAdminMixin)
    }
    assert exporting == set(EXPORTS)


@pytest.mark.parametrize(("who", "label", "allowed"), EXPORT_CELLS)
def test_an_export_is_offered_and_served_only_to_those_allowed(persona_client, who, label, allowed):
    UserFactory(email="someone@example.com")
    client = persona_client(who)
    prefix = label.replace(".", "_")
    export_url = reverse(f"admin:{prefix}_export", kwargs={"fmt": "csv"})

    page = client.get(reverse(f"admin:{prefix}_changelist"))
    offered = page.status_code == 200 and export_url in page.content.decode()
    response = client.get(export_url)

    assert offered == allowed
    if allowed:
        assert response.status_code == 200
        assert b"".join(response.streaming_content)
    else:
        assert response.status_code in (302, 403), response.status_code
        assert not getattr(response, "streaming", False)
