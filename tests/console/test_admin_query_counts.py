"""Every admin list and change page makes as many queries for many rows as for few.

One test per registered admin (taken from `admin.site`, so a new admin is covered, or
fails here until it is): rows are made for one user, the list and the first row's change
page are counted, rows are made for four more users (and more rows of their own), and both
are counted again. A list that read a related row per line, or a change page that read
one per related row, would make more queries the second time.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Group
from django.db import connection, models
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from clusters.models import HopsworksCluster
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

_serial = itertools.count(1)


def _api_key(user, cluster, n):
    from accounts.api_keys import api_key_create

    return api_key_create(name=f"script {n}", scopes=["usage:read"], actor="t", expires_at=None)[0]


def _job(user, cluster, n):
    from procrastinate.contrib.django.models import ProcrastinateJob

    from plumbing.jobs import ping

    return ProcrastinateJob.objects.get(pk=ping.defer())


def _catalog_entry(user, cluster, n):
    from billing.models import Price, StripeCatalogEntry

    resources = [value for value, _ in Price.Resource.choices]
    return StripeCatalogEntry.objects.get_or_create(
        resource=resources[(n - 1) % len(resources)],
        defaults={"event_name": f"event-{n}", "meter_id": "m", "product_id": "p", "price_id": "x"},
    )[0]


# Rows the generic maker below cannot guess (or that a service must write).
SPECIAL = {
    "accounts.User": lambda user, cluster, n: user,
    "accounts.ApiKey": _api_key,
    "clusters.HopsworksCluster": lambda user, cluster, n: cluster,
    "auth.Group": lambda user, cluster, n: Group.objects.create(name=f"group {n}"),
    "billing.StripeCatalogEntry": _catalog_entry,
    "procrastinate.ProcrastinateJob": _job,
}


def _value(field, n, user, cluster):
    """A valid value for a required field of row n."""
    if field.choices:
        return field.choices[0][0]
    if isinstance(field, models.ForeignKey | models.OneToOneField):
        target = field.related_model
        if target is User:
            return user
        if target is HopsworksCluster:
            return cluster
        return make(target, n, user, cluster)
    if isinstance(field, models.UUIDField):
        return uuid.uuid4()
    if isinstance(field, models.DecimalField):
        return Decimal("1")
    if isinstance(field, models.BooleanField):
        return False
    if isinstance(field, models.IntegerField | models.FloatField):
        return 1
    if isinstance(field, models.DateTimeField):
        return timezone.now() - dt.timedelta(hours=n)
    if isinstance(field, models.DateField):
        return timezone.now().date() - dt.timedelta(days=n)
    if isinstance(field, models.JSONField):
        return {}
    if isinstance(field, models.GenericIPAddressField):
        return "127.0.0.1"
    if isinstance(field, models.CharField | models.TextField):
        return f"{field.name}-{n}-{next(_serial)}"[: field.max_length or 100]
    raise NotImplementedError(f"{field.model.__name__}.{field.name}: {type(field).__name__}")


def make(model, n, user, cluster):
    """Row n of the model for the user: required fields only, the rest at their defaults."""
    label = model._meta.label
    if label in SPECIAL:
        return SPECIAL[label](user, cluster, n)
    values = {}
    for field in model._meta.concrete_fields:
        if field.has_default() or field.null or getattr(field, "auto_now", False):
            continue
        if getattr(field, "auto_now_add", False) or isinstance(field, models.AutoField):
            continue
        values[field.name] = _value(field, n, user, cluster)
    return model._default_manager.create(**values)


def registered():
    return sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)


def count_queries(client, url) -> tuple[int, int]:
    client.get(url)  # warm caches (content types, session) before counting
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    shown = response.context["cl"].result_count if "cl" in (response.context or {}) else 0
    return len(captured), shown


@pytest.mark.parametrize(
    "label", [model._meta.label for model, _ in registered()], ids=lambda label: label
)
def test_the_list_and_change_page_make_as_many_queries_for_many_rows_as_for_few(
    operator_client, label
):
    model = next(m for m, _ in registered() if m._meta.label == label)
    opts = model._meta
    changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")

    cluster = ClusterFactory(max_users=100)
    first = make(model, 1, UserFactory(), cluster)
    change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(first.pk)])
    few_list, few_shown = count_queries(operator_client, changelist)
    few_change, _ = count_queries(operator_client, change)

    more_users = UserFactory.create_batch(4)
    for n, user in enumerate(more_users, start=2):
        make(model, n, user, ClusterFactory(max_users=100))
        make(model, n + 10, UserFactory(), cluster)  # (one row per user for some)
    many_list, many_shown = count_queries(operator_client, changelist)
    many_change, _ = count_queries(operator_client, change)

    assert many_shown > few_shown  # the list did get longer
    assert many_list == few_list
    assert many_change == few_change


# A user's page is many sections (at a glance, placement, billing, spending, Stripe, the
# cost chart, the timeline) that show the same facts: each is read once per request.
READ_ONCE = (
    "billing_account",
    "usage_monthly",
    "usage_daily",
    "user_credits",
    "user_hopsworks_assignments",
    "clusters_hopsworks_account",
    "billing_account_closure",
    "billing_mode_change",
    "billing_adjustment",
    "accounts_user_status_change",
)
# What the page reads in all (the session, the operator and their permissions, the user,
# each section's own rows once, the form's choices): none of it twice.
USER_PAGE_QUERIES = 29  # 44 before each section read its facts once


def _table_read(sql: str) -> str:
    """The table a statement reads: the ORM's `SELECT "table"."column"`, else (our SQL)
    the first FROM."""
    if sql.startswith('SELECT "'):
        return sql.split('"')[1]
    return sql.split(" FROM ", 1)[1].lstrip().split()[0].strip('"')


def test_a_users_page_reads_each_fact_once(operator_client, operator):
    from billing.credits import credits_grant
    from billing.models import BillingProfile
    from billing.profiles import billing_mode_set
    from billing.usage import UsageRecord, usage_upsert
    from clusters import services as cluster_services

    user = UserFactory()
    cluster_services.assignment_create(user=user, cluster=ClusterFactory(), actor=operator)
    today = timezone.now().date()
    usage_upsert(  # more days than the billing section shows
        records=[
            UsageRecord(user_id=user.pk, date=today - dt.timedelta(days=n), cpu_hours=Decimal(2))
            for n in range(31)
        ],
        actor="t",
    )
    billing_mode_set(user=user, mode="prepaid", actor=operator)
    credits_grant(user=user, amount=Decimal(5), reason="r", actor=operator, reference="once-1")
    billing_mode_set(user=user, mode="postpaid", actor=operator)
    BillingProfile.objects.filter(user=user).update(subscription_status="active")
    url = reverse("admin:accounts_user_change", args=[user.pk])
    operator_client.get(url)  # warm caches (content types, session)

    with CaptureQueriesContext(connection) as captured:
        assert operator_client.get(url).status_code == 200

    tables = [_table_read(q["sql"]) for q in captured.captured_queries if " FROM " in q["sql"]]
    twice = {table: tables.count(table) for table in READ_ONCE if tables.count(table) > 1}
    assert twice == {}
    assert len(captured) <= USER_PAGE_QUERIES
