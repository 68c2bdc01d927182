"""Malformed requests to the admin are refused with a message or a 4xx, never a 500: what
an audit that sent every admin list, page and action garbage found (each case failed with
an exception before the fix). The clients raise a view's exception, so a 500 fails here."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from procrastinate.contrib.django.models import ProcrastinateJob

from accounts.models import User
from billing.models import ReconciliationRun
from clusters.models import HopsworksCluster
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db
JOBS = "/admin/procrastinate/procrastinatejob/"


def messages_of(response) -> list[str]:
    return [str(m) for m in response.wsgi_request._messages]


@pytest.mark.parametrize("value", ["abc", "", "Failed"])
def test_a_job_status_that_is_not_one_is_a_bad_lookup_not_a_database_error(operator_client, value):
    # The status column is a PostgreSQL enum: Django handed any value to it.
    response = operator_client.get(JOBS, {"status__exact": value})

    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_a_real_job_status_still_filters(operator_client):
    response = operator_client.get(JOBS, {"status__exact": "failed"})

    assert response.status_code == 200


def test_a_usage_range_ending_on_the_last_representable_day_is_a_page(operator_client):
    response = operator_client.get(
        "/admin/billing/usagedaily/",
        {"date__range__gte": "2026-01-01", "date__range__lte": "9999-12-31"},
    )

    assert response.status_code == 200


def test_a_date_hierarchy_year_too_large_for_a_date_is_a_bad_lookup(operator_client):
    ReconciliationRun.objects.create(months="2026-11", actor="t")

    response = operator_client.get(
        "/admin/billing/reconciliationrun/", {"started_at__year": "99999999999999999999"}
    )

    assert response.status_code == 302 and response["Location"].endswith("?e=1")


@pytest.mark.parametrize(
    ("url", "action", "selected"),
    [
        (JOBS, "retry_jobs", ["abc"]),  # an integer key
        (JOBS, "cancel_jobs", ["99999999999999999999"]),  # out of bigint's range
        ("/admin/clusters/hopsworkscluster/", "test_connection", ["abc"]),  # a UUID key
    ],
)
def test_an_action_selection_that_is_not_a_key_is_a_message_and_nothing_done(
    operator_client, url, action, selected
):
    ClusterFactory()
    response = operator_client.post(
        url, {"action": action, "_selected_action": selected, "index": "0"}
    )

    assert response.status_code == 302
    [message] = messages_of(response)
    assert "Nothing was changed" in message


def test_a_good_key_beside_a_bad_one_runs_nothing(operator_client, fake_hopsworks, cluster_on):
    hopsworks = fake_hopsworks[0]
    cluster = cluster_on(hopsworks)
    response = operator_client.post(
        "/admin/clusters/hopsworkscluster/",
        {"action": "test_connection", "_selected_action": [cluster.pk, "abc"], "index": "0"},
    )

    assert response.status_code == 302
    [message] = messages_of(response)
    assert "Nothing was changed" in message
    assert not hopsworks.requests


def test_a_nul_beside_a_good_key_changes_nothing(operator_client):
    user = UserFactory()
    response = operator_client.post(
        "/admin/accounts/user/",
        {"action": "suspend_users", "_selected_action": [user.pk, "x\x00"], "confirmed": "yes"},
    )

    assert response.status_code == 400
    user.refresh_from_db()
    assert user.status == User.Status.ACTIVE


@pytest.mark.parametrize(
    ("url", "data"),
    [
        ("/admin/accounts/user/", {"action": "suspend_users", "_selected_action": "\x00"}),
        ("/admin/billing/price/add/", {"user": "\x00", "resource": "cpu_hour"}),
        ("/admin/clusters/hopsworkscluster/add/", {"name": "a\x00b"}),
    ],
)
def test_a_nul_in_a_form_field_is_a_bad_request(operator_client, url, data):
    response = operator_client.post(url, data)

    assert response.status_code == 400
    assert b"NUL character" in response.content
    assert not HopsworksCluster.objects.exists()


def test_a_nul_in_an_urlencoded_form_is_a_bad_request_too(operator_client):
    # The cases above are multipart (the test client encodes a dict so); browsers send this.
    response = operator_client.post(
        "/admin/accounts/user/",
        "action=suspend_users&_selected_action=%00",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 400


def test_view_on_site_with_an_id_that_is_not_a_key_is_not_found(operator_client):
    kind = ContentType.objects.get_for_model(HopsworksCluster)

    response = operator_client.get(f"/admin/r/{kind.pk}/abc/")

    assert response.status_code == 404


def test_to_field_naming_a_many_to_many_relation_is_refused(operator_client):
    Group.objects.create(name="support")

    response = operator_client.get("/admin/auth/group/", {"_to_field": "user"})

    assert response.status_code == 400


def test_every_registered_admin_checks_its_input():
    from django.contrib import admin

    from plumbing.admin_site import CheckedInputAdminMixin

    assert ProcrastinateJob in admin.site._registry
    unchecked = [
        model._meta.label
        for model, model_admin in admin.site._registry.items()
        if not isinstance(model_admin, CheckedInputAdminMixin)
    ]
    assert unchecked == []


@pytest.mark.parametrize("action", ["suspend_users", "close_accounts", "grant_credits"])
def test_a_selection_larger_than_a_request_can_handle_is_refused_before_anything(
    operator_client, action, monkeypatch
):
    # "Select all" across pages: the confirmation page would list every user and the work
    # take tens of milliseconds each, past the web worker's timeout.
    from plumbing import admin_confirm

    monkeypatch.setattr(admin_confirm, "IN_REQUEST_LIMIT", 3)
    users = UserFactory.create_batch(4)
    url = "/admin/accounts/user/"

    for confirmed in ({}, {"confirmed": "yes", "reason": "bulk", "amount": "5"}):
        response = operator_client.post(
            url,
            {
                "action": action,
                "select_across": "1",
                "index": "0",
                "_selected_action": [users[0].pk],
                **confirmed,
            },
        )
        assert response.status_code == 302
        message = messages_of(response)[-1]
        assert "at most 3 at a time" in message and "Nothing was changed" in message

    assert not User.objects.exclude(status=User.Status.ACTIVE).exists()
