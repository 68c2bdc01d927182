"""The lists over big tables (usage, ledger, invoices, Stripe events, users, clusters):
counted from the planner's estimate when big, searched by resolving the user first, ordered
by an index named after the list. (Timings at scale: bench/scale.py.)"""

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from accounts import selectors
from billing import selectors as billing_selectors
from billing.admin.credits import CreditLedgerAdmin
from billing.credits import Kind, credits_add
from billing.models import BillingHistory, CreditLedgerEntry, StripeEvent, UsageDaily
from billing.usage import UsageRecord, usage_upsert
from clusters import services
from clusters.models import HopsworksAccount
from plumbing.admin_lists import EstimatedCountPaginator
from tests.factories import ClusterFactory, UserFactory
from tests.plans import analyze, get_capturing, list_statement, plan

pytestmark = pytest.mark.django_db
D = Decimal
USAGE = "/admin/billing/usagedaily/"
LEDGER = "/admin/billing/creditledgerentry/"
INVOICES = "/admin/billing/billinghistory/"
EVENTS = "/admin/billing/stripeevent/"
USERS = "/admin/accounts/user/"
CLUSTERS = "/admin/clusters/hopsworkscluster/"
DAY = dt.timedelta(days=1)


def add_usage(users, cluster, days):
    today = timezone.now().date()
    usage_upsert(
        records=[
            UsageRecord(
                user_id=u.pk,
                cluster_id=cluster.pk,
                date=today - dt.timedelta(days=d),
                cpu_hours=D("1"),
                api_calls=10,
            )
            for u in users
            for d in range(1, days + 1)
        ],
        actor="test",
    )


@pytest.fixture
def people():
    ada = UserFactory(email="ada@example.com", name="Ada Lovelace", stripe_customer_id="cus_ada")
    alan = UserFactory(email="alan@example.com", name="Alan Turing")
    grace = UserFactory(email="grace@example.com", name="Grace Hopper")
    cluster = ClusterFactory()
    add_usage([ada], cluster, 3)
    add_usage([alan, grace], cluster, 2)
    return ada, alan, grace


@pytest.fixture
def small_threshold(monkeypatch):
    """Lists count as big from 5 rows, so a test's few rows show what millions do."""
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_over", 5)


def counted(statements, table):
    return [s for s in statements if "COUNT(" in s and f'FROM "{table}"' in s]


# Counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "table"),
    [
        (USAGE, "usage_daily"),
        (LEDGER, "billing_credit_ledger"),
        (INVOICES, "billing_history"),
        (EVENTS, "billing_stripe_event"),
        (USERS, "users"),
    ],
)
def test_an_unfiltered_big_list_is_counted_from_the_planners_estimate(
    operator_client, small_threshold, people, url, table
):
    ada = people[0]
    for n, user in enumerate(people):
        credits_add(user=user, kind=Kind.PURCHASE, amount=D("5"), reference=f"p{n}", actor="t")
        BillingHistory.objects.create(user=user, amount=D("1"), stripe_invoice_id=f"in_{n}")
    for n in range(8):
        StripeEvent.objects.create(
            id=f"evt_{n}", type="invoice.paid", created=timezone.now(), payload={}
        )
    # Enough rows to be "big" for this test.
    for n in range(3, 8):
        credits_add(user=ada, kind=Kind.PURCHASE, amount=D("1"), reference=f"p{n}", actor="t")
        BillingHistory.objects.create(user=ada, amount=D("1"), stripe_invoice_id=f"in_{n}")
    UserFactory.create_batch(4)
    analyze(table)

    with connection.cursor() as cursor:
        cursor.execute(f'SELECT COUNT(*) FROM "{table}"')
        rows = cursor.fetchone()[0]

    page, statements = get_capturing(operator_client, url)

    assert not counted(statements, table)
    assert page.context["cl"].result_count == rows and page.context["cl"].paginator.estimated


def test_a_narrowed_usage_list_is_counted_and_totalled_exactly(
    operator_client, small_threshold, people
):
    analyze("usage_daily")
    page, statements = get_capturing(operator_client, USAGE, {"q": "ada@example.com"})

    assert counted(statements, "usage_daily")
    assert page.context["cl"].result_count == 3
    assert page.context["usage_totals"]["api_calls"] == 30


def test_a_big_filtered_usage_list_is_not_totalled_and_says_why(
    operator_client, small_threshold, people
):
    analyze("usage_daily")
    page, statements = get_capturing(operator_client, USAGE)

    assert "usage_totals" not in page.context
    assert "totals are given once the list is narrowed" in page.content.decode()
    assert not [s for s in statements if "SUM(" in s]


@pytest.mark.parametrize(
    "months",
    [
        lambda first, following: {"date__gte": first},
        lambda first, following: {"date__range__gte": first, "date__range__lte": following - DAY},
        lambda first, following: {"date__gte": first, "date__lt": following},
    ],
)
def test_a_big_list_of_whole_months_is_totalled_from_the_monthly_rollup(
    operator_client, small_threshold, people, months
):
    cluster = UsageDaily.objects.first().hopsworks_cluster
    first = timezone.now().date().replace(day=1) - dt.timedelta(days=1)
    first = first.replace(day=1)  # last month: whole, and the fixture's days may reach it
    following = (first + dt.timedelta(days=32)).replace(day=1)
    add_usage(people, cluster, 40)
    analyze("usage_daily")
    query = {k: v.isoformat() for k, v in months(first, following).items()}
    query["hopsworks_cluster__id__exact"] = str(cluster.pk)

    page, statements = get_capturing(operator_client, USAGE, query)

    assert page.context["cl"].paginator.estimated
    days = UsageDaily.objects.filter(date__gte=first, hopsworks_cluster=cluster)
    if "date__lt" in query or "date__range__lte" in query:
        days = days.filter(date__lt=following)
    expected = billing_selectors.usage_totals(days)
    totals = page.context["usage_totals"]
    assert {k: totals[k] for k in expected} == expected
    assert not [s for s in statements if "SUM(" in s and 'FROM "usage_daily"' in s]
    assert [s for s in statements if "SUM(" in s and 'FROM "usage_monthly"' in s]


@pytest.mark.parametrize(
    "query",
    [
        {"date__gte": "2026-11-02"},  # not a month's first day
        {"date__range__gte": "2026-11-01", "date__range__lte": "2026-11-29"},
        {"date__gte": "2026-11-01", "q": "ada"},  # a search: not whole months of everyone
    ],
)
def test_a_big_list_not_of_whole_months_is_still_not_totalled(
    operator_client, small_threshold, people, query
):
    add_usage(people, UsageDaily.objects.first().hopsworks_cluster, 40)
    analyze("usage_daily")
    page, statements = get_capturing(operator_client, USAGE, query)
    assert not [s for s in statements if "usage_monthly" in s]
    if page.context["cl"].paginator.estimated:  # (a search narrows it: totalled by its days)
        assert "usage_totals" not in page.context
        assert not [s for s in statements if "SUM(" in s]


def test_an_estimated_count_says_about_in_the_paginator_and_the_select_all_link(
    operator_client, small_threshold, monkeypatch
):
    from billing.admin.stripe import StripeEventAdmin

    monkeypatch.setattr(StripeEventAdmin, "list_per_page", 2)  # "Select all" needs 2 pages
    for n in range(8):
        StripeEvent.objects.create(
            id=f"evt_{n}", type="invoice.paid", created=timezone.now(), payload={}
        )
    analyze("billing_stripe_event")
    page = operator_client.get(EVENTS)
    cl = page.context["cl"]
    assert cl.paginator.estimated
    shown = cl.paginator.shown(cl.result_count)
    plural = str(StripeEvent._meta.verbose_name_plural)

    body = " ".join(page.content.decode().split())
    assert shown.startswith("about ")
    assert f"{shown} {plural}" in body  # the paginator's line
    assert f"Select all {shown} {plural}" in body  # the actions bar
    assert f"All {shown} selected" in body
    assert f"{cl.result_count} {plural}" not in body.replace(shown, "")


def test_an_estimated_filtered_count_says_about_n_results(operator_client, small_threshold, people):
    add_usage(UserFactory.create_batch(3), ClusterFactory(), 1)
    analyze("usage_daily")
    page = operator_client.get(USAGE, {"date__range__gte": "2000-01-01"})
    cl = page.context["cl"]
    assert cl.paginator.estimated

    body = " ".join(page.content.decode().split())
    assert f"{cl.paginator.shown(cl.result_count)} results" in body
    assert "about " in cl.paginator.shown(cl.result_count)


def test_an_exact_count_is_shown_as_it_is_with_separators(operator_client, people):
    page = operator_client.get(USAGE, {"q": "ada@example.com"})
    cl = page.context["cl"]
    assert not cl.paginator.estimated
    body = " ".join(page.content.decode().split())
    assert "3 daily usage" in body and "3 results" in body
    assert "about 3" not in body


@pytest.mark.parametrize(
    ("estimate", "shown"),
    [(8_999_872, "about 9,000,000"), (1_852_311, "about 1,850,000"), (123_456, "about 123,000")],
)
def test_an_estimate_is_shown_rounded_to_three_figures(estimate, shown):
    paginator = EstimatedCountPaginator(None, 100)
    paginator.estimated = True
    assert paginator.shown(estimate) == shown
    paginator.estimated = False
    assert paginator.shown(estimate) == f"{estimate:,}"


# Search -----------------------------------------------------------------------------------


@pytest.mark.parametrize("term", ["ADA@example.com ", "auth0|ada", "cus_ada"])
def test_usage_searched_by_an_exact_email_id_or_stripe_id_is_that_users_rows_by_index(
    operator_client, people, term
):
    ada = people[0]
    if term == "auth0|ada":
        term = ada.pk

    page, statements = get_capturing(operator_client, USAGE, {"q": term})

    assert {row.user_id for row in page.context["cl"].result_list} == {ada.pk}
    assert page.context["cl"].result_count == 3
    assert not [s for s in statements if "LIKE" in s and "usage_daily" in s]
    assert "idx_usage_daily_user_date" in plan(list_statement(statements, "usage_daily"))


def test_usage_searched_by_part_of_an_email_or_name_is_those_users_rows(operator_client, people):
    ada, alan, grace = people
    page = operator_client.get(USAGE, {"q": "LA"})  # alan, and "Ada Lovelace"
    assert {row.user_id for row in page.context["cl"].result_list} == {ada.pk, alan.pk}
    page = operator_client.get(USAGE, {"q": "hopper"})
    assert {row.user_id for row in page.context["cl"].result_list} == {grace.pk}
    assert operator_client.get(USAGE, {"q": "nobody"}).context["cl"].result_count == 0


def test_a_partial_search_matching_too_many_users_says_it_shows_the_first_ones(
    operator_client, people, monkeypatch
):
    monkeypatch.setattr(selectors, "PARTIAL_USERS_MAX", 2)
    page = operator_client.get(USAGE, {"q": "example.com"})

    assert len({row.user_id for row in page.context["cl"].result_list}) == 2
    warning = [str(m) for m in get_messages(page.wsgi_request)]
    assert any("More than 2 users match" in m for m in warning)


def test_the_ledger_and_invoices_are_searched_by_user_and_by_their_own_references(
    operator_client, people
):
    ada, alan, _ = people
    credits_add(user=ada, kind=Kind.PURCHASE, amount=D("5"), reference="pay-1", actor="t")
    credits_add(user=alan, kind=Kind.PURCHASE, amount=D("5"), reference="pay-2", actor="t")
    BillingHistory.objects.create(user=ada, amount=D("1"), stripe_invoice_id="in_ada")
    BillingHistory.objects.create(user=alan, amount=D("1"), stripe_invoice_id="in_alan")

    def users(url, term):
        page, statements = get_capturing(operator_client, url, {"q": term})
        return {row.user_id for row in page.context["cl"].result_list}, statements

    assert users(LEDGER, "pay-2")[0] == {alan.pk}
    assert users(INVOICES, "in_ada")[0] == {ada.pk}
    found, statements = users(INVOICES, "cus_ada")
    assert found == {ada.pk}
    assert "Seq Scan" not in plan(list_statement(statements, "billing_history"))
    found, statements = users(LEDGER, "Alan@Example.com")
    assert found == {alan.pk}
    assert "Seq Scan" not in plan(list_statement(statements, "billing_credit_ledger"))


# Indexes named after the list they serve ---------------------------------------------------


def test_the_ledger_invoices_and_events_lists_read_newest_first_by_their_index(
    operator_client, people
):
    ada = people[0]
    credits_add(user=ada, kind=Kind.PURCHASE, amount=D("5"), reference="p", actor="t")
    BillingHistory.objects.create(user=ada, amount=D("1"))
    StripeEvent.objects.create(id="evt_1", type="invoice.paid", created=timezone.now(), payload={})

    for url, table, index in [
        (LEDGER, "billing_credit_ledger", "credit_ledger_newest"),
        (INVOICES, "billing_history", "billing_history_newest"),
        (EVENTS, "billing_stripe_event", "stripe_event_newest"),
    ]:
        _, statements = get_capturing(operator_client, url)
        # A list of one page is read whole; the first page of a big one has a LIMIT.
        statement = list_statement(statements, table)
        if "LIMIT" not in statement:
            statement += " LIMIT 100"
        assert index in plan(statement, off=("seqscan", "sort")), (
            url
        )  # few rows: a sort looks cheap


def test_the_usage_list_reads_its_first_page_in_index_order(operator_client, people):
    _, statements = get_capturing(operator_client, USAGE)

    statement = list_statement(statements, "usage_daily")
    if "LIMIT" not in statement:
        statement += " LIMIT 100"
    explained = plan(statement, off=("seqscan", "sort"))  # few rows: sorting looks cheap
    assert "usage_daily_date" in explained and "Sort" not in explained


def test_the_invoice_and_event_filters_read_their_values_through_an_index(operator_client):
    user = UserFactory()
    for n, (currency, status) in enumerate([("USD", "paid"), ("EUR", "open"), ("USD", "")]):
        BillingHistory.objects.create(
            user=user, amount=D("1"), currency=currency, stripe_status=status
        )
        StripeEvent.objects.create(
            id=f"evt_{n}", type=["a.b", "c.d", "a.b"][n], created=timezone.now(), payload={}
        )

    invoices, statements = get_capturing(operator_client, INVOICES)
    events, more = get_capturing(operator_client, EVENTS)

    assert not [s for s in statements + more if "DISTINCT" in s]
    specs = {spec.field_path: spec for spec in invoices.context["cl"].filter_specs}
    assert specs["currency"].lookup_choices == ["EUR", "USD"]
    assert specs["stripe_status"].lookup_choices == ["", "open", "paid"]
    specs = {spec.field_path: spec for spec in events.context["cl"].filter_specs}
    assert specs["type"].lookup_choices == ["a.b", "c.d"]


def test_stripe_events_are_searched_by_their_exact_id(operator_client):
    StripeEvent.objects.create(id="evt_1", type="invoice.paid", created=timezone.now(), payload={})
    StripeEvent.objects.create(id="evt_2", type="invoice.paid", created=timezone.now(), payload={})

    page, statements = get_capturing(operator_client, EVENTS, {"q": "evt_2"})

    assert [e.pk for e in page.context["cl"].result_list] == ["evt_2"]
    assert "Seq Scan" not in plan(list_statement(statements, "billing_stripe_event"))
    assert operator_client.get(EVENTS, {"q": "invoice"}).context["cl"].result_count == 0


@pytest.mark.parametrize(
    ("term", "index"),
    [("lovelace", "users_name_trgm_search"), ("da@exam", "users_email_trgm_search")],
)
def test_users_searched_by_part_of_an_email_or_name_use_the_trigram_indexes(
    operator_client, people, term, index
):
    page, statements = get_capturing(operator_client, USERS, {"q": term})

    assert [u.email for u in page.context["cl"].result_list] == [people[0].email]
    assert index in plan(list_statement(statements, "users"), off=("seqscan", "indexscan"))


def test_users_searched_by_an_exact_id_are_that_user_alone(operator_client, people):
    ada = people[0]
    UserFactory(email="lada@example.com")  # contains "ada@example.com"
    for term in ("ada@example.com", ada.pk, "cus_ada"):
        page = operator_client.get(USERS, {"q": term})
        assert [u.pk for u in page.context["cl"].result_list] == [ada.pk], term


# Clusters -----------------------------------------------------------------------------------


def test_the_clusters_list_counts_each_relation_in_its_own_subquery(operator_client):
    east = ClusterFactory(name="east", max_users=10)
    ClusterFactory(name="west")
    users = UserFactory.create_batch(3)
    for user in users:
        services.assignment_create(user=user, cluster=east, actor=None)
    pending = HopsworksAccount.objects.pending()

    page, statements = get_capturing(operator_client, CLUSTERS)

    counts = {c.name: (c.assigned, c.pending) for c in page.context["cl"].result_list}
    assert counts == {
        "east": (3, pending.filter(cluster=east).count()),
        "west": (0, 0),
    }
    statement = list_statement(statements, "hopsworks_clusters")
    assert "COUNT(DISTINCT" not in statement
    assert 'JOIN "user_hopsworks_assignments"' not in statement
    assert 'JOIN "clusters_hopsworksaccount"' not in statement


# The users list: sorted and filtered by index ------------------------------------------------


def _users_list():
    from django.contrib import admin as django_admin

    from accounts.models import User

    return django_admin.site._registry[User]


def test_the_users_list_sorts_only_by_columns_an_index_serves(operator_client, people):
    users_admin = _users_list()
    columns = operator_client.get(USERS).context["cl"].list_display  # with the checkbox
    sortable = set(users_admin.get_sortable_by(None))
    # Computed or joined figures cannot be read in order from an index: not sortable.
    assert not sortable & {
        "cluster",
        "billing_mode_column",
        "month_to_date_column",
        "balance_column",
    }
    assert {"user_column", "status", "last_login_column"} <= sortable

    for column in sortable:
        for sign in ("", "-"):
            position = columns.index(column)
            page, statements = get_capturing(operator_client, USERS, {"o": f"{sign}{position}"})
            assert page.context["cl"].result_count == len(people) + 1  # and the operator
            statement = list_statement(statements, "users")
            if "LIMIT" not in statement:
                statement += " LIMIT 100"
            explained = plan(statement, off=("seqscan", "sort"))
            assert "Sort Key" not in explained, (column, sign, explained)


def test_the_placement_filter_for_pending_accounts_reads_the_pending_accounts_first(
    operator_client, people
):
    ada, alan, _ = people
    cluster = ClusterFactory(max_users=10)
    services.assignment_create(user=ada, cluster=cluster, actor=None)
    services.assignment_create(user=alan, cluster=cluster, actor=None)
    HopsworksAccount.objects.filter(user=alan).update(synced="active")

    page, statements = get_capturing(operator_client, USERS, {"placement": "pending"})

    assert [u.pk for u in page.context["cl"].result_list] == [ada.pk]
    statement = list_statement(statements, "users")
    assert "clusters_hopsworks_account" not in statement  # resolved to ids beforehand
    assert "Seq Scan on users" not in plan(statement)
    # The pending accounts' users are read from a partial index of the pending accounts
    # (the planner cannot tell how few `desired <> synced` rows there are: 22 ms of a full
    # scan of 100,000 accounts for 473 pending, against 0.1 ms at scale from
    # hopsworks_account_pending_user, an index-only scan there). On a test's few rows the
    # planner picks either partial index, run to run, so the plan is asked for one of them
    # and the users' index is checked for what makes it answer alone: the user id, under
    # the very condition the statement asks.
    (pending,) = [s for s in statements if 'FROM "clusters_hopsworks_account"' in s]
    assert "using hopsworks_account_pending" in plan(pending, off=("seqscan", "bitmapscan"))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'hopsworks_account_pending_user'"
        )
        (definition,) = cursor.fetchone()
    assert definition.endswith("(user_id) WHERE (NOT (desired = synced))")
    assert "NOT (" in pending and '"desired" = ' in pending  # the index's own condition


@pytest.mark.parametrize(("mode", "expected"), [("prepaid", {0}), ("postpaid", {1, 2, -1})])
def test_the_billing_mode_filter_tests_each_user_by_an_index_probe(
    operator_client, operator, people, mode, expected
):
    from billing.models import BillingProfile

    BillingProfile.objects.create(user=people[0], mode="prepaid")
    BillingProfile.objects.create(user=people[1], mode="postpaid")

    page, statements = get_capturing(operator_client, USERS, {"billing_mode": mode})

    everyone = {**{n: u.pk for n, u in enumerate(people)}, -1: operator.pk}
    assert {u.pk for u in page.context["cl"].result_list} == {everyone[n] for n in expected}
    statement = list_statement(statements, "users")
    assert "EXISTS" in statement
    assert "Seq Scan on billing_account" not in plan(statement)


# Every big list: sorted only where an index gives the order; searched user first ------------

PURCHASES = "/admin/billing/creditpurchase/"
CREDITS = "/admin/billing/usercredits/"
ACCOUNTS = "/admin/clusters/hopsworksaccount/"


@pytest.fixture
def a_row_everywhere(people):
    from billing.models import CreditPurchase

    ada, alan, _ = people
    cluster = ClusterFactory(max_users=10)
    for n, user in enumerate((ada, alan)):
        services.assignment_create(user=user, cluster=cluster, actor=None)
        credits_add(user=user, kind=Kind.PURCHASE, amount=D("5"), reference=f"p{n}", actor="t")
        BillingHistory.objects.create(user=user, amount=D("1"), stripe_invoice_id=f"in_{n}")
        CreditPurchase.objects.create(
            user=user,
            stripe_checkout_session_id=f"cs_{n}",
            stripe_payment_intent_id=f"pi_{n}",
            amount=D("5"),
        )
    StripeEvent.objects.create(id="evt_1", type="invoice.paid", created=timezone.now(), payload={})
    _a_row_in_the_other_lists(people)
    return people


def _a_row_in_the_other_lists(people):
    """A row for Ada and one for Alan in each of the console's other lists of users' rows
    (at 100,000 users: 1.3 M Stripe usage reports, 200,000 Auth0 log events, 150,000 jobs,
    80,000 spending alerts; bench/scale.py's OTHER_TABLES)."""
    from billing.models import (
        AccountClosure,
        Auth0LogEvent,
        BillingAdjustment,
        ServiceStop,
        SpendingAlert,
        SpendingLimitChange,
        StripeUsageAdjustment,
        StripeUsageReport,
        SubscriptionEnd,
    )
    from clusters.models import CapacityWait

    now, month = timezone.now(), dt.date(2026, 11, 1)
    for n, user in enumerate(people[:2]):
        AccountClosure.objects.create(
            user=user, closed_at=now, actor="t", reason="left", mode="postpaid",
            subscription_id=f"sub_c{n}",
        )  # fmt: skip
        SubscriptionEnd.objects.create(subscription_id=f"sub_e{n}", user=user, ended_by="us")
        Auth0LogEvent.objects.create(
            log_id=f"log_{n}", type="sdu", user_id=user.pk, outcome="closed"
        )
        BillingAdjustment.objects.create(
            user=user, direction="credit", amount=D("1"), channel="ledger", reason="goodwill",
            actor="t", reference=f"adjustment:{n}",
        )  # fmt: skip
        SpendingAlert.objects.create(
            user=user, kind="cap_80", period="2026-11", amount=D("80"), limit_amount=D("100")
        )
        SpendingLimitChange.objects.create(
            user=user, field="monthly_spending_cap", new=D("100"), actor=f"actor{n}@example.com",
            by_user=True,
        )  # fmt: skip
        ServiceStop.objects.create(
            user=user, reason="payment_failed", detected_at=now, enforce_at=now
        )
        StripeUsageReport.objects.create(user=user, month=month, resource="cpu_hour")
        StripeUsageAdjustment.objects.create(
            user=user, month=month, cents=100, resources=["cpu_hour"], description="fix",
            identifier=f"adjust:{n}",
        )  # fmt: skip
        CapacityWait.objects.create(user=user)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
            " VALUES ('maintenance', 'plumbing.ping', '{}', 'succeeded'),"
            " ('stripe', 'billing.sync_invoices', '{}', 'failed')"
        )


ADJUSTMENTS = "/admin/billing/billingadjustment/"
ALERTS = "/admin/billing/spendingalert/"
LIMIT_CHANGES = "/admin/billing/spendinglimitchange/"
REPORTS = "/admin/billing/stripeusagereport/"
AUTH0_LOG = "/admin/billing/auth0logevent/"
JOBS = "/admin/procrastinate/procrastinatejob/"

BIG_LISTS = [
    (USERS, "users"),
    (USAGE, "usage_daily"),
    (LEDGER, "billing_credit_ledger"),
    (INVOICES, "billing_history"),
    (EVENTS, "billing_stripe_event"),
    (PURCHASES, "billing_credit_purchase"),
    (CREDITS, "user_credits"),
    (ACCOUNTS, "clusters_hopsworks_account"),
    # The other lists that grow with users and time (tens of thousands to millions of rows).
    (ADJUSTMENTS, "billing_adjustment"),
    (ALERTS, "billing_spending_alert"),
    (LIMIT_CHANGES, "billing_spending_limit_change"),
    (REPORTS, "billing_stripe_usage_report"),
    (AUTH0_LOG, "billing_auth0_log_event"),
    (JOBS, "procrastinate_jobs"),
]

# Lists of users' rows: searched by resolving the user first (accounts/admin_search.py).
USERS_ROWS = [
    (PURCHASES, "billing_credit_purchase"),
    (CREDITS, "user_credits"),
    (ACCOUNTS, "clusters_hopsworks_account"),
    (ADJUSTMENTS, "billing_adjustment"),
    (ALERTS, "billing_spending_alert"),
    (LIMIT_CHANGES, "billing_spending_limit_change"),
    (REPORTS, "billing_stripe_usage_report"),
    ("/admin/billing/accountclosure/", "billing_account_closure"),
    ("/admin/billing/subscriptionend/", "billing_subscription_end"),
    ("/admin/billing/servicestop/", "billing_service_stop"),
    ("/admin/billing/stripeusageadjustment/", "billing_stripe_usage_adjustment"),
    ("/admin/clusters/capacitywait/", "clusters_capacity_wait"),
]


def _admin_for(url):
    from django.contrib import admin as django_admin
    from django.urls import resolve

    return (
        resolve(url).func.model_admin
        if hasattr(resolve(url).func, "model_admin")
        else next(
            a
            for m, a in django_admin.site._registry.items()
            if url.rstrip("/").endswith(f"{m._meta.app_label}/{m._meta.model_name}")
        )
    )


@pytest.mark.parametrize(("url", "table"), BIG_LISTS)
def test_a_big_list_sorts_in_every_offered_order_by_an_index(
    operator_client, a_row_everywhere, url, table
):
    model_admin = _admin_for(url)
    columns = operator_client.get(url).context["cl"].list_display  # with any checkbox
    sortable = model_admin.get_sortable_by(None)
    assert sortable is not None and set(sortable) <= set(columns), "sortable_by is explicit"

    orders = [{}] + [{"o": f"{sign}{columns.index(c)}"} for c in sortable for sign in ("", "-")]
    pk = model_admin.model._meta.pk.column
    for order in orders:
        _, statements = get_capturing(operator_client, url, order)
        statement = list_statement(statements, table)
        # A total order (the primary key last, or the unique email), so pages never
        # overlap or skip a row.
        order_by = statement.rsplit("ORDER BY", 1)[1].split("LIMIT")[0]  # a subquery's first
        assert f'"{table}"."{pk}"' in order_by or '"users"."email"' in order_by, order_by
        if "LIMIT" not in statement:
            statement += " LIMIT 100"
        explained = plan(statement, off=("seqscan", "sort"))
        assert "Sort Key" not in explained, (order, explained)


@pytest.mark.parametrize(("url", "table"), BIG_LISTS)
def test_a_big_list_ignores_a_typed_sort_on_a_column_it_does_not_offer(
    operator_client, a_row_everywhere, url, table
):
    model_admin = _admin_for(url)
    columns = operator_client.get(url).context["cl"].list_display  # with any checkbox
    others = [
        c for c in columns if c not in (*model_admin.get_sortable_by(None), "action_checkbox")
    ]
    plain = list_statement(get_capturing(operator_client, url)[1], table)
    for column in others:
        _, statements = get_capturing(operator_client, url, {"o": columns.index(column)})
        assert list_statement(statements, table) == plain, column


@pytest.mark.parametrize(("url", "table"), USERS_ROWS)
def test_lists_of_users_rows_are_searched_user_first(operator_client, a_row_everywhere, url, table):
    ada = a_row_everywhere[0]
    for term in ("ADA@example.com", ada.pk, "cus_ada", "Lovelace"):
        page, statements = get_capturing(operator_client, url, {"q": term})
        assert {row.user_id for row in page.context["cl"].result_list} == {ada.pk}, term
        # The users matched on the users table, not by a LIKE over the list's own rows.
        assert not [s for s in statements if f'FROM "{table}"' in s and "LIKE" in s], term
        assert "Seq Scan" not in plan(list_statement(statements, table))


@pytest.mark.parametrize(("url", "table"), BIG_LISTS)
def test_no_big_list_reads_every_rows_date_for_a_date_hierarchy(
    operator_client, a_row_everywhere, url, table
):
    # `date_hierarchy` runs SELECT DISTINCT over the whole list on every page (80,000
    # spending alerts: 60 ms unfiltered, 700 ms searched); the date range filter narrows.
    _, statements = get_capturing(operator_client, url)

    assert not [s for s in statements if "DISTINCT" in s]


def test_a_purchase_is_found_by_its_exact_stripe_ids(operator_client, a_row_everywhere):
    alan = a_row_everywhere[1]
    for term in ("cs_1", "pi_1"):
        page = operator_client.get(PURCHASES, {"q": term})
        assert [p.user_id for p in page.context["cl"].result_list] == [alan.pk], term


def test_the_purchases_list_reads_its_currencies_through_an_index(
    operator_client, a_row_everywhere
):
    page, statements = get_capturing(operator_client, PURCHASES)

    assert not [s for s in statements if "DISTINCT" in s]  # no date hierarchy, no scan
    specs = {spec.field_path: spec for spec in page.context["cl"].filter_specs}
    assert specs["currency"].lookup_choices == ["USD"]


@pytest.mark.parametrize(
    ("url", "query", "table", "index"),
    [
        (LEDGER, {"kind__exact": "purchase"}, "billing_credit_ledger", "credit_ledger_kind_newest"),
        (INVOICES, {"status__exact": "paid"}, "billing_history", "invoice_status_newest"),
        (INVOICES, {"stripe_status": ""}, "billing_history", "invoice_stripe_status_newest"),
        (INVOICES, {"currency": "USD"}, "billing_history", "invoice_currency_newest"),
        (EVENTS, {"type": "invoice.paid"}, "billing_stripe_event", "stripe_event_type_newest"),
        (EVENTS, {"status__exact": "ignored"}, "billing_stripe_event", "stripe_event_status"),
    ],
)
def test_a_filtered_big_list_reads_its_page_by_an_index_led_by_the_filter(
    operator_client, people, url, query, table, index
):
    # With the list's newest-first index alone, a filter on a rare value read every newer
    # row to find a page (the ledger's purchases: 2.3 s at 1.85 M rows, issue 16).
    ada = people[0]
    credits_add(user=ada, kind=Kind.PURCHASE, amount=D("5"), reference="p", actor="t")
    BillingHistory.objects.create(user=ada, amount=D("1"), currency="USD")
    StripeEvent.objects.create(id="evt_1", type="invoice.paid", created=timezone.now(), payload={})

    _, statements = get_capturing(operator_client, url, query)

    statement = list_statement(statements, table)
    if "LIMIT" not in statement:
        statement += " LIMIT 100"
    found = plan(statement, off=("seqscan", "sort"))
    assert f"Index Scan Backward using {index} " in found or f"Index Scan using {index} " in found
    assert "Sort" not in found, found


def test_the_ledger_searched_by_part_of_a_name_reads_each_users_newest_entries_by_index(
    operator_client, people, monkeypatch
):
    ada, alan, grace = people
    for n in range(3):
        for user in (ada, alan, grace):
            credits_add(
                user=user, kind=Kind.GRANT, amount=D("1"), reference=f"{user.pk}-{n}", actor="t"
            )
    # Another user's entry whose own reference is the term: found too.
    credits_add(user=grace, kind=Kind.GRANT, amount=D("1"), reference="lovelace", actor="t")
    monkeypatch.setattr(CreditLedgerAdmin, "list_per_page", 3)
    expected = list(
        CreditLedgerEntry.objects.filter(Q(user=ada) | Q(reference="lovelace")).order_by(
            "-created_at", "-id"
        )
    )
    assert len(expected) == 4  # two pages of three

    shown, lateral = [], []
    for page in (1, 2):
        response, statements = get_capturing(operator_client, LEDGER, {"q": "lovelace", "p": page})
        assert response.context["cl"].result_count == len(expected)
        shown += list(response.context["cl"].result_list)
        lateral += [s for s in statements if "LATERAL" in s]

    assert shown == expected
    assert len(lateral) == 2  # each page's ids, read per user
    # Each user's newest entries in index order, not sorted: on a test's few rows the
    # planner may cost `credit_ledger_user_newest` plus a sort lower (which one it picks
    # depends on the statistics earlier tests left), so sorts are discouraged too.
    found = plan(lateral[1], off=("seqscan", "bitmapscan", "sort"))
    assert "credit_ledger_user_created" in found, found


def test_invoices_searched_by_part_of_a_name_read_each_users_invoices_first(
    operator_client, people, monkeypatch
):
    from billing.admin.stripe import BillingHistoryAdmin

    ada, _alan, grace = people
    for n in range(3):
        BillingHistory.objects.create(user=ada, amount=D(n), stripe_invoice_id=f"in_ada{n}")
        BillingHistory.objects.create(user=grace, amount=D(n), stripe_invoice_id=f"in_g{n}")
    BillingHistory.objects.create(user=grace, amount=D(9), stripe_invoice_id="lovelace")
    monkeypatch.setattr(BillingHistoryAdmin, "list_per_page", 3)
    expected = list(
        BillingHistory.objects.filter(Q(user=ada) | Q(stripe_invoice_id="lovelace")).order_by(
            "-created_at", "-pk"
        )
    )

    shown, lateral = [], []
    for page in (1, 2):
        response, statements = get_capturing(
            operator_client, INVOICES, {"q": "lovelace", "p": page}
        )
        assert response.context["cl"].result_count == len(expected) == 4
        shown += list(response.context["cl"].result_list)
        lateral += [s for s in statements if "LATERAL" in s]

    assert shown == expected
    assert len(lateral) == 2


def test_auth0_log_events_are_searched_by_their_exact_log_or_user_id(
    operator_client, a_row_everywhere
):
    alan = a_row_everywhere[1]
    for term in ("log_1", alan.pk):
        page, statements = get_capturing(operator_client, AUTH0_LOG, {"q": term})
        assert [e.log_id for e in page.context["cl"].result_list] == ["log_1"], term
        statement = list_statement(statements, "billing_auth0_log_event")
        assert "UPPER(" not in statement  # `column = 'x'`, which an index serves
        assert "Seq Scan" not in plan(statement), term
    assert not operator_client.get(AUTH0_LOG, {"q": "LOG_1"}).context["cl"].result_list


def test_jobs_are_searched_by_exact_task_name_or_id(operator_client, a_row_everywhere):
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM procrastinate_jobs WHERE task_name = 'plumbing.ping'")
        (ping,) = cursor.fetchone()
    for term in ("plumbing.ping", str(ping)):
        page, statements = get_capturing(operator_client, JOBS, {"q": term})
        assert [j.pk for j in page.context["cl"].result_list] == [ping], term
        assert "Seq Scan" not in plan(list_statement(statements, "procrastinate_jobs")), term
    # Part of a name is not a task name (no scan of every job for it), and not an error.
    assert not operator_client.get(JOBS, {"q": "ping"}).context["cl"].result_list


def test_the_jobs_filters_read_queues_and_tasks_through_an_index(operator_client, a_row_everywhere):
    page, statements = get_capturing(operator_client, JOBS)

    specs = {spec.field_path: spec for spec in page.context["cl"].filter_specs}
    for column in ("queue_name", "task_name"):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT DISTINCT {column} FROM procrastinate_jobs ORDER BY 1")
            values = [value for (value,) in cursor.fetchall()]
        assert "plumbing.ping" in values or "maintenance" in values
        assert specs[column].lookup_choices == values
    skip_scans = [s for s in statements if s.startswith("WITH RECURSIVE")]
    assert len(skip_scans) == 2
    for statement in skip_scans:
        assert "Seq Scan" not in plan(statement), statement


@pytest.mark.parametrize(
    ("url", "table"),
    [
        (REPORTS, "billing_stripe_usage_report"),
        (AUTH0_LOG, "billing_auth0_log_event"),
        (JOBS, "procrastinate_jobs"),
        (ALERTS, "billing_spending_alert"),
    ],
)
def test_the_other_big_lists_are_counted_from_the_planners_estimate(
    operator_client, small_threshold, a_row_everywhere, url, table
):
    with connection.cursor() as cursor:
        # Enough rows to be "big" for this test: copies of the fixture's rows.
        for _ in range(3):
            cursor.execute(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
                " SELECT queue_name, task_name, args, status FROM procrastinate_jobs"
            )
    from billing.models import Auth0LogEvent, SpendingAlert, StripeUsageReport

    user = a_row_everywhere[0]
    for n in range(2, 10):
        month = dt.date(2025, n, 1)
        StripeUsageReport.objects.create(user=user, month=month, resource="gpu_hour")
        Auth0LogEvent.objects.create(
            log_id=f"log_{n}", type="s", user_id=user.pk, outcome="ignored"
        )
        SpendingAlert.objects.create(
            user=user, kind="cap_90", period=f"{month:%Y-%m}", amount=D("1"), limit_amount=D("2")
        )
    analyze(table)

    page, statements = get_capturing(operator_client, url)

    assert not counted(statements, table)
    assert page.context["cl"].paginator.estimated


def test_a_jobs_long_list_of_users_is_shown_as_its_first_ids_and_how_many_more(
    operator_client,
):
    # A standing check deferred by a batch of 5,000 records names 5,000 users
    # (billing.standing); every such job on a page of 100 was encoded whole.
    users = [f"auth0|u{n:05d}" for n in range(5000)]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
            " VALUES ('maintenance', 'billing.evaluate_standing', %s, 'todo') RETURNING id",
            [json.dumps({"users": " ".join(users)})],
        )
        (job,) = cursor.fetchone()

    listed = operator_client.get(JOBS).content.decode()
    shown = operator_client.get(f"{JOBS}{job}/change/").content.decode()

    for page in (listed, shown):
        assert "auth0|u00000" in page and "auth0|u00009" in page
        assert "auth0|u00010" not in page and "auth0|u04999" not in page
        assert "4,990 more" in page


def test_stripe_usage_reports_searched_by_part_of_a_name_read_each_users_reports_first(
    operator_client, people, monkeypatch
):
    # Walking the newest months first and filtering on the 200 matching users read 36,000
    # pages of 1.3 M reports (290 ms); each user has a row per resource and month.
    from billing.admin.stripe import StripeUsageReportAdmin
    from billing.models import StripeUsageReport

    ada, alan, _ = people
    for month in (dt.date(2026, 9, 1), dt.date(2026, 10, 1)):
        for resource in ("cpu_hour", "gpu_hour"):
            for user in (ada, alan):
                StripeUsageReport.objects.create(user=user, month=month, resource=resource)
    monkeypatch.setattr(StripeUsageReportAdmin, "list_per_page", 3)
    expected = list(StripeUsageReport.objects.filter(user=ada).order_by("-month", "-id"))

    shown, lateral = [], []
    for page in (1, 2):
        response, statements = get_capturing(operator_client, REPORTS, {"q": "Lovelace", "p": page})
        assert response.context["cl"].result_count == len(expected) == 4
        shown += list(response.context["cl"].result_list)
        lateral += [s for s in statements if "LATERAL" in s]

    assert shown == expected
    assert len(lateral) == 2
    assert "stripe_usage_report_once" in plan(lateral[1], off=("seqscan", "bitmapscan"))


def test_auth0_log_events_filtered_by_outcome_read_that_outcomes_newest_first(
    operator_client, a_row_everywhere
):
    # An outcome seen rarely ("already closed": none at all) walked every event newest first.
    _, statements = get_capturing(operator_client, AUTH0_LOG, {"outcome__exact": "closed"})

    statement = list_statement(statements, "billing_auth0_log_event") + " LIMIT 100"
    found = plan(statement, off=("seqscan", "sort"))
    assert "auth0_log_event_outcome_newest" in found and "Sort" not in found, found


def test_a_jobs_summary_reads_as_procrastinates_own(operator_client):
    # Procrastinate renders the summary with a template per row (a quarter of the job
    # list's time at 100 rows); ours builds the same markup directly.
    import re

    from django.template.loader import render_to_string
    from procrastinate.contrib.django.models import ProcrastinateJob

    from console.admin import JobAdmin

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, lock,"
            " queueing_lock, priority, scheduled_at, attempts) VALUES"
            " ('stripe', 'billing.sync_invoices', '{}', 'failed', 'l<1>', 'q&1', 3,"
            "  now() - interval '2 hours', 3),"
            " ('stripe', 'billing.sync_invoices', '{}', 'todo', NULL, NULL, 0,"
            "  now() + interval '3 days', 0),"
            " ('mail', 'billing.send_spending_alerts', '{}', 'succeeded', NULL, NULL, 0,"
            "  NULL, 1)"
        )
        cursor.execute(
            "INSERT INTO procrastinate_events (job_id, type, at)"
            " SELECT id, 'deferred_for_retry'::procrastinate_job_event_type,"
            " now() - interval '5 minutes'"
            " FROM procrastinate_jobs WHERE queue_name = 'stripe'"
            " UNION ALL SELECT id, 'succeeded', now() - interval '1 day'"
            " FROM procrastinate_jobs WHERE queue_name = 'mail'"
        )
    model_admin = JobAdmin(ProcrastinateJob, admin.site)
    jobs = list(model_admin.get_queryset(None).order_by("id"))
    assert len(jobs) == 3

    def words(html):
        # The same markup and text; the whitespace next to tags (the template's indents) aside.
        return re.sub(r"\s*(<[^>]+>)\s*", r"\1", re.sub(r"\s+", " ", str(html))).strip()

    for job in jobs:
        theirs = render_to_string(
            "procrastinate/admin/summary.html",
            {
                "last_event": job.procrastinateevent_set.order_by("-at").first(),
                "job": job,
                "now": timezone.now(),
            },
        )
        assert words(model_admin.summary(job)) == words(theirs), job.status


def test_a_jobs_last_event_is_read_with_the_job_not_by_a_prefetch_of_all_events(
    operator_client,
):
    # Procrastinate prefetched every event of the page's jobs, and Django filtered them
    # per job (a queryset built per row: a third of the list's time at 100 rows).
    from console.admin import JobAdmin

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status) VALUES"
            " ('mail', 'billing.send_spending_alerts', '{}', 'failed'),"
            " ('mail', 'billing.send_spending_alerts', '{}', 'todo') RETURNING id"
        )
        (failed,), (waiting,) = cursor.fetchall()
        cursor.execute(
            "INSERT INTO procrastinate_events (job_id, type, at) VALUES"
            " (%(j)s, 'started', now() - interval '2 minutes'),"
            " (%(j)s, 'failed', now() - interval '1 minute'),"
            " (%(j)s, 'deferred', now() - interval '3 minutes')",
            {"j": failed},
        )

    page, statements = get_capturing(operator_client, JOBS)

    rows = {job.pk: job for job in page.context["cl"].result_list}
    summaries = {pk: JobAdmin.summary(None, job) for pk, job in rows.items()}
    assert summaries[failed].startswith('<ul style="padding: 0; margin: 0;">')
    assert "Failed <strong" in summaries[failed] and "Started" not in summaries[failed]
    assert "Deferred <strong" in summaries[waiting]  # Procrastinate's trigger, on insert
    assert not [s for s in statements if s.startswith('SELECT "procrastinate_events"')]


def test_the_not_placed_filter_shows_users_with_no_cluster_and_no_wait_by_anti_joins(
    operator_client, operator, people
):
    # Left-joining every user's assignment and keeping the NULLs hashed 100,000 assignment
    # rows (95-150 ms of SQL at full size, for no user); an anti-join on the ids only.
    from clusters.models import CapacityWait

    ada, alan, grace = people
    services.assignment_create(user=ada, cluster=ClusterFactory(max_users=5), actor=None)
    CapacityWait.objects.create(user=alan)

    page, statements = get_capturing(operator_client, USERS, {"placement": "none"})

    assert {u.pk for u in page.context["cl"].result_list} == {grace.pk, operator.pk}
    # The anti-joins run once; the page's count and rows read those users by id.
    anti = [s for s in statements if s.count("NOT EXISTS") == 2]
    assert len(anti) == 1, statements
    assert "Anti Join" in plan(anti[0])
    assert "NOT EXISTS" not in list_statement(statements, "users")


def test_many_users_not_placed_are_filtered_by_one_semi_join(
    operator_client, operator, people, monkeypatch
):
    from clusters.admin import users as placement

    monkeypatch.setattr(placement, "UNPLACED_BY_ID", 2)  # four users not placed: "many"

    page, statements = get_capturing(operator_client, USERS, {"placement": "none"})

    assert {u.pk for u in page.context["cl"].result_list} == {
        *(u.pk for u in people),
        operator.pk,
    }
    assert "NOT EXISTS" in list_statement(statements, "users")
