"""Scripts writing and reading usage through the API, and list query counts."""

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import UsageDaily
from clusters import services
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db
DAY = "2026-11-02"


def post(client, key, records):
    return client.post(
        "/api/v1/usage",
        json.dumps({"records": records}),
        content_type="application/json",
        HTTP_AUTHORIZATION=key,
    )


def test_a_batch_with_one_bad_record_writes_nothing_and_names_it(client, make_key):
    user = UserFactory()
    ClusterFactory(name="east")
    records = [
        {"user": user.pk, "cluster": "east", "date": DAY, "cpu_hours": 1.5},
        {"user": user.pk, "cluster": "east", "date": "2026-11-03", "cpu_hours": -1},
        {"user": "auth0|ghost", "date": DAY, "api_calls": 5},
    ]
    response = post(client, make_key("usage:write"), records)

    assert response.status_code == 400
    errors = response.json()["error"]["details"]["records"]
    assert set(errors) == {"1"}  # shape errors first; the unknown user is a service check
    assert "cpu_hours" in " ".join(errors["1"])
    assert not UsageDaily.objects.exists()


def test_unknown_users_and_clusters_are_named_per_record(client, make_key):
    user = UserFactory()
    response = post(
        client,
        make_key("usage:write"),
        [
            {"user": user.pk, "date": DAY, "api_calls": 1},
            {"user": "auth0|ghost", "date": DAY, "api_calls": 5},
            {"user": user.pk, "cluster": "nowhere", "date": "2026-11-01", "api_calls": 5},
        ],
    )
    errors = response.json()["error"]["details"]["records"]
    assert sorted(errors) == ["1", "2"]
    assert "no user" in errors["1"][0] and "no cluster" in errors["2"][0]
    assert not UsageDaily.objects.exists()


def test_the_same_batch_sent_twice_changes_nothing_the_second_time(client, make_key):
    user, cluster = UserFactory(), ClusterFactory(name="east")
    key = make_key("usage:write")
    records = [
        {
            "user": user.pk,
            "cluster": str(cluster.pk),
            "date": DAY,
            "cpu_hours": 0.1,
            "gpu_hours": "0.2",
            "api_calls": 1000,
        }
    ]

    first = post(client, key, records)
    row = UsageDaily.objects.get()
    second = post(client, key, records)

    assert first.status_code == second.status_code == 200
    again = UsageDaily.objects.get()
    assert (again.id, again.updated_at, again.total_cost) == (
        row.id,
        row.updated_at,
        row.total_cost,
    )
    assert again.cpu_hours == Decimal("0.1")  # a JSON number, taken exactly
    assert again.total_cost == Decimal("0.12")


def test_reading_usage_filters_by_user_cluster_and_dates(client, make_key):
    user, other = UserFactory(email="ada@example.com"), UserFactory()
    cluster = ClusterFactory(name="east")
    key_write, key_read = make_key("usage:write"), make_key("usage:read")
    post(
        client,
        key_write,
        [
            {"user": u.pk, "cluster": "east", "date": f"2026-11-0{d}", "api_calls": d}
            for u in (user, other)
            for d in (1, 2, 3)
        ],
    )
    response = client.get(
        "/api/v1/usage",
        {"user": "ADA@example.com", "cluster": "east", "from": "2026-11-02", "to": "2026-11-03"},
        HTTP_AUTHORIZATION=key_read,
    )
    rows = response.json()["results"]
    assert [(r["user"], r["date"]) for r in rows] == [
        (user.pk, "2026-11-03"),
        (user.pk, "2026-11-02"),
    ]
    assert rows[0]["cluster"] == str(cluster.pk)
    bad = client.get(
        "/api/v1/usage", {"from": "2026-11-05", "to": "2026-11-01"}, HTTP_AUTHORIZATION=key_read
    )
    assert bad.status_code == 400 and "after" in json.dumps(bad.json())


def test_my_usage_is_the_month_to_date_and_daily_breakdown(client):
    from billing.usage import UsageRecord, usage_upsert

    user = UserFactory()
    today = dt.date.today()
    usage_upsert(
        records=[UsageRecord(user_id=user.pk, date=today, cpu_hours=Decimal("10"))], actor="t"
    )
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    data = client.get("/api/v1/me/usage").json()
    assert Decimal(data["month_to_date"]) == Decimal("1")
    assert data["days"][0]["date"] == today.isoformat()


def queries(client, url, key):
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url, HTTP_AUTHORIZATION=key).status_code == 200
    return len(captured)


@pytest.mark.parametrize("url", ["/api/v1/users", "/api/v1/clusters", "/api/v1/usage"])
def test_list_queries_do_not_grow_with_the_page_size(client, make_key, url):
    from billing.usage import UsageRecord, usage_upsert

    key = make_key()
    cluster = ClusterFactory(max_users=100)
    users = UserFactory.create_batch(60)
    for user in users:
        services.assignment_create(user=user, cluster=cluster, actor=None)
    ClusterFactory.create_batch(10)
    usage_upsert(
        records=[
            UsageRecord(user_id=u.pk, cluster_id=cluster.pk, date=dt.date(2026, 11, 1), api_calls=1)
            for u in users
        ],
        actor="t",
    )
    queries(client, url, key)  # the first use of a key records when it was last used
    small = queries(client, f"{url}?page_size=5", key)
    assert queries(client, f"{url}?page_size=50", key) == small


def test_a_record_without_a_price_is_named_by_its_place_in_the_callers_batch(client, make_key):
    user = UserFactory()
    response = post(
        client,
        make_key("usage:write"),
        [
            {"user": user.pk, "date": DAY, "api_calls": 1000},
            # Before the rate card's first day: no price. Sorted, it would come first.
            {"user": user.pk, "date": "2019-06-01", "api_calls": 1000},
        ],
    )

    assert response.status_code == 400
    errors = response.json()["error"]["details"]["records"]
    assert list(errors) == ["1"]
    assert "The rate card has no cpu_hour price on 2019-06-01" in errors["1"][0]
    assert not UsageDaily.objects.exists()


def test_posting_usage_makes_the_same_number_of_queries_for_10_and_for_200_records(
    client, make_key
):
    key = make_key("usage:write")
    east, west = ClusterFactory(name="east"), ClusterFactory(name="west")
    users = UserFactory.create_batch(20)
    post(client, key, [{"user": users[0].pk, "date": DAY, "api_calls": 1}])  # key first used

    def queries(days, first):
        records = [
            {
                "user": user.pk,
                # By name and by id, as scripts send them.
                "cluster": "east" if n % 2 else str(west.pk),
                "date": (first + dt.timedelta(days=d)).isoformat(),
                "cpu_hours": "1.5",
            }
            for n, user in enumerate(users)
            for d in range(days)
        ]
        with CaptureQueriesContext(connection) as captured:
            response = post(client, key, records)
        assert response.status_code == 200, response.content
        assert response.json()["rows"] == len(records)
        return len(captured)

    # New rows: 20 records, then 200.
    assert queries(1, dt.date(2026, 9, 1)) == queries(10, dt.date(2026, 10, 1))
    assert UsageDaily.objects.filter(hopsworks_cluster=east).count() == 110


def add_days(users, days):
    from billing.usage import UsageRecord, usage_upsert

    usage_upsert(
        records=[
            UsageRecord(user_id=u.pk, date=dt.date(2026, 11, d), api_calls=d)
            for u in users
            for d in range(1, days + 1)
        ],
        actor="t",
    )


@pytest.mark.parametrize("by", ["id", "email"])
def test_usage_by_user_resolves_the_user_first_and_reads_their_rows_by_index(client, make_key, by):
    from tests.plans import get_capturing, list_statement, plan

    ada, other = UserFactory(email="ada@example.com"), UserFactory()
    add_days([ada, other], 3)
    key = make_key("usage:read")
    term = ada.pk if by == "id" else "ADA@example.com"

    response, statements = get_capturing(
        client, "/api/v1/usage", {"user": term}, HTTP_AUTHORIZATION=key
    )

    assert {row["user"] for row in response.json()["results"]} == {ada.pk}
    statement = list_statement(statements, "usage_daily")
    assert " OR " not in statement and 'JOIN "users"' not in statement
    # Read by the user's id through an index leading with it: the seed's (user_id, date) or
    # the key (user_id, cluster, date), whichever the planner costs lower on a test's rows
    # (it depends on what earlier tests left in the table's statistics).
    assert f"Index Cond: (user_id = '{ada.pk}'::text)" in plan(statement)
    unknown = client.get("/api/v1/usage", {"user": "nobody@example.com"}, HTTP_AUTHORIZATION=key)
    assert unknown.status_code == 200 and unknown.json()["results"] == []


def test_the_usage_api_reads_its_first_page_in_index_order(client, make_key):
    from tests.plans import get_capturing, list_statement, plan

    add_days(UserFactory.create_batch(3), 3)
    _, statements = get_capturing(
        client, "/api/v1/usage", HTTP_AUTHORIZATION=make_key("usage:read")
    )

    # Sorting discouraged too: on a test's few rows the planner may sort a handful of rows
    # rather than read an index; a plan that still sorts has no index in the list's order.
    explained = plan(list_statement(statements, "usage_daily"), off=("seqscan", "sort"))
    assert "usage_daily_date" in explained and "Sort" not in explained


def test_usage_pages_go_a_bounded_depth_and_say_how_to_go_further(client, make_key):
    from billing.api import BoundedPagination

    add_days(UserFactory.create_batch(2), 3)
    key = make_key("usage:read")
    deepest = BoundedPagination.max_depth // 2  # pages of 2 rows

    within = client.get("/api/v1/usage", {"page_size": 2, "page": 2}, HTTP_AUTHORIZATION=key).json()
    assert len(within["results"]) == 2
    too_deep = client.get(
        "/api/v1/usage", {"page_size": 2, "page": deepest + 1}, HTTP_AUTHORIZATION=key
    )
    assert too_deep.status_code == 400
    assert "`to`" in json.dumps(too_deep.json())


def test_an_unfiltered_usage_list_counts_from_the_planners_estimate(client, make_key, monkeypatch):
    from plumbing.admin_lists import EstimatedCountPaginator
    from tests.plans import analyze, get_capturing

    monkeypatch.setattr(EstimatedCountPaginator, "estimate_over", 5)
    add_days(UserFactory.create_batch(3), 3)
    analyze("usage_daily")
    key = make_key("usage:read")

    response, statements = get_capturing(client, "/api/v1/usage", HTTP_AUTHORIZATION=key)

    assert response.json()["count"] == 9
    assert not [s for s in statements if "COUNT(" in s and "usage_daily" in s]


def test_the_clusters_api_counts_each_clusters_users_by_index(client, make_key):
    # A join of every assignment grouped per cluster read all 100,000 of them (issue 16).
    from tests.plans import get_capturing, list_statement, plan

    key = make_key()
    east = ClusterFactory(name="east", max_users=10)
    ClusterFactory(name="west")
    for user in UserFactory.create_batch(3):
        services.assignment_create(user=user, cluster=east, actor=None)

    response, statements = get_capturing(client, "/api/v1/clusters", HTTP_AUTHORIZATION=key)

    counts = {c["name"]: c["assigned_users"] for c in response.json()["results"]}
    assert counts == {"east": 3, "west": 0}
    statement = list_statement(statements, "hopsworks_clusters")
    assert 'JOIN "user_hopsworks_assignments"' not in statement
    assert "Seq Scan on user_hopsworks_assignments" not in plan(statement)


@pytest.mark.parametrize("mode", ["prepaid", "postpaid"])
def test_a_record_costing_over_a_million_dollars_a_day_is_named_and_nothing_written(
    client, make_key, mode
):
    from billing.models import BillingProfile, CreditLedgerEntry

    user = UserFactory()
    BillingProfile.objects.create(user=user, mode=mode)
    response = post(
        client,
        make_key("usage:write"),
        [
            {"user": user.pk, "date": DAY, "api_calls": 10},
            # 30 million CPU hours: within the quantity limit, $3,000,000 at the rate card.
            {"user": user.pk, "date": "2026-11-03", "cpu_hours": "30000000"},
        ],
    )

    assert response.status_code == 400
    errors = response.json()["error"]["details"]["records"]
    assert list(errors) == ["1"]
    assert "$3,000,000.00" in errors["1"][0] and "check the quantities" in errors["1"][0]
    assert not UsageDaily.objects.exists() and not CreditLedgerEntry.objects.exists()


@pytest.mark.parametrize("page", ["\u00b2", "\u2460", "1" + "0" * 4400, "abc", "0"])
def test_a_usage_page_that_is_not_a_number_is_not_found(client, make_key, page):
    response = client.get(
        "/api/v1/usage", {"page": page}, HTTP_AUTHORIZATION=make_key("usage:read")
    )

    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid page."


@pytest.mark.parametrize("body", [{}, {"records": None}, {"records": "x"}])
def test_a_missing_records_list_is_an_error_about_records_not_about_record_0(
    client, make_key, body
):
    response = client.post(
        "/api/v1/usage",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=make_key("usage:write"),
    )

    assert response.status_code == 400
    records = response.json()["error"]["details"]["records"]
    # Messages about the field itself (a list, or DRF's non-field errors), not record "0"'s.
    assert records and "0" not in records
    assert not isinstance(records, dict) or list(records) == ["non_field_errors"]


def test_a_body_over_the_upload_limit_is_a_413_in_the_apis_format(client, make_key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(client, make_key("usage:write"), [{"user": "x" * 2000, "date": DAY}])

    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "too_large" and "fewer records" in error["message"]


@pytest.mark.parametrize("path", ["/api/v1/nowhere", "/api/v1/users/", "/api/v1/users/a%2Fb"])
def test_an_unknown_api_path_is_a_404_in_the_apis_format(client, make_key, path):
    response = client.get(path, HTTP_AUTHORIZATION=make_key("usage:read"))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
