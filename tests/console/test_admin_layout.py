"""The admin reads well: the users list says where each user is and what they cost without
a query per row, long names are refused, errors keep the admin's navigation, the unused
social-auth lists are gone and there is a favicon."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import pytest
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import USER_NAME_MAX_LENGTH, User
from billing.models import BillingProfile, UsageDaily, UserCredits
from clusters.models import CLUSTER_NAME_MAX_LENGTH, HopsworksCluster
from clusters.models import UserHopsworksAssignment as Assignment
from tests.factories import ClusterFactory, StaffFactory, UserFactory

pytestmark = pytest.mark.django_db

USERS = "/admin/accounts/user/"
CLUSTERS = "/admin/clusters/hopsworkscluster/"


def _customer(cluster, n, *, prepaid: bool):
    user = UserFactory(email=f"customer{n}@example.com")
    Assignment.objects.create(user=user, hopsworks_cluster=cluster)
    BillingProfile.objects.create(
        user=user,
        mode=BillingProfile.Mode.PREPAID if prepaid else BillingProfile.Mode.POSTPAID,
    )
    if prepaid:
        UserCredits.objects.create(user=user, total_purchased=D("100"), total_used=D("12.5"))
    UsageDaily.objects.create(
        user=user, hopsworks_cluster=cluster, date=timezone.now().date(), total_cost=D("3.25")
    )
    # Last month's usage is not this month's cost.
    UsageDaily.objects.create(
        user=user,
        hopsworks_cluster=cluster,
        date=timezone.now().date().replace(day=1) - dt.timedelta(days=1),
        total_cost=D("1000"),
    )
    return user


def test_the_users_list_shows_cluster_billing_mode_month_to_date_and_balance(operator_client):
    west = ClusterFactory(name="demo-west")
    _customer(west, 1, prepaid=True)
    _customer(west, 2, prepaid=False)

    body = operator_client.get(USERS, {"q": "customer"}).content.decode()

    for header in ("Cluster", "Billing", "Month to date", "Balance", "Admin", "Last login"):
        assert f">{header}<" in body.replace("</a>", "<"), header
    assert "demo-west" in body
    assert "Prepaid" in body and "Postpaid" in body
    assert "87.50" in body  # the prepaid user's balance
    assert "3.25" in body  # this month's cost, not last month's
    assert "1,000" not in body and "1000" not in body


def _queries_for_list(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(USERS).status_code == 200
    return len(queries)


def test_the_users_list_makes_as_many_queries_for_20_users_as_for_1(operator_client):
    west = ClusterFactory(name="demo-west")
    _customer(west, 0, prepaid=True)
    one = _queries_for_list(operator_client)
    for n in range(1, 20):
        _customer(west, n, prepaid=n % 2 == 0)
    twenty = _queries_for_list(operator_client)
    assert one == twenty


# Long names: limited in the model, refused on the forms, enforced by the database.


def test_a_user_name_longer_than_the_limit_fails_validation_and_the_database_refuses_it():
    user = UserFactory.build(name="x" * (USER_NAME_MAX_LENGTH + 1))
    with pytest.raises(ValidationError) as error:
        user.full_clean()
    assert "name" in error.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        user.save()
    UserFactory(name="x" * USER_NAME_MAX_LENGTH)  # the limit itself is fine


def test_a_cluster_name_longer_than_the_limit_is_refused_by_the_database():
    with pytest.raises(IntegrityError), transaction.atomic():
        ClusterFactory(name="c" * (CLUSTER_NAME_MAX_LENGTH + 1))


def test_the_cluster_form_refuses_a_5000_character_name_and_writes_nothing(operator_client):
    response = operator_client.post(
        f"{CLUSTERS}add/",
        {
            "name": "n" * 5000,
            "api_url": "https://east.example.com",
            "status": "maintenance",
            "max_users": "10",
            "ca_bundle": "",
            "api_key_input": "the-admin-key",
            "kubeconfig_input": "",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert f"at most {CLUSTER_NAME_MAX_LENGTH} characters" in str(errors["name"])
    assert not HopsworksCluster.objects.exists()


def test_cluster_name_and_api_url_are_single_line_inputs(operator_client):
    body = operator_client.get(f"{CLUSTERS}add/").content.decode()
    assert 'type="text" name="name"' in body
    assert f'maxlength="{CLUSTER_NAME_MAX_LENGTH}"' in body
    assert 'type="text" name="api_url"' in body
    assert '<textarea name="api_url"' not in body and '<textarea name="name"' not in body


def test_a_break_glass_login_with_a_too_long_name_is_refused(operator_client):
    response = operator_client.post(
        f"{USERS}add/",
        {
            "email": "glass@example.com",
            "name": "g" * 5000,
            "password1": "a-long-enough-password-42",
            "password2": "a-long-enough-password-42",
        },
    )
    assert response.status_code == 200
    assert "name" in response.context["adminform"].form.errors
    assert not User.objects.filter(email="glass@example.com").exists()


# Errors inside the admin keep its navigation.


def test_a_page_not_found_under_admin_keeps_the_admin_navigation(operator_client):
    response = operator_client.get("/admin/billing/no-such-list/")
    assert response.status_code == 404
    body = response.content.decode()
    assert 'id="user-tools"' in body
    assert "Hopsworks Platform Console" in body
    assert 'href="/admin/"' in body
    assert "Page not found" in body


def test_a_permission_denied_in_the_admin_keeps_the_admin_navigation(client):
    staff = StaffFactory(permissions=["accounts.view_user"])
    client.force_login(staff, backend="django.contrib.auth.backends.ModelBackend")
    response = client.get("/admin/clusters/hopsworkscluster/add/")
    assert response.status_code == 403
    body = response.content.decode()
    assert 'id="user-tools"' in body
    assert 'href="/admin/"' in body


def test_a_page_not_found_outside_the_admin_stays_plain(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert 'id="user-tools"' not in response.content.decode()


def test_the_admin_403_handler_is_used_for_permission_denied(rf):
    from platform_site import views

    request = rf.get("/admin/x/")
    request.user = StaffFactory()
    response = views.permission_denied(request, PermissionDenied())
    assert response.status_code == 403
    assert 'id="user-tools"' in response.content.decode()


# The unused social-auth lists, and a favicon.


def test_the_social_auth_lists_are_not_in_the_admin(operator_client):
    from social_django.models import Association, Nonce, UserSocialAuth

    for model in (Association, Nonce, UserSocialAuth):
        assert not admin.site.is_registered(model)
    body = operator_client.get("/admin/").content.decode()
    assert "social_django" not in body
    assert "Python Social Auth" not in body


def test_a_favicon_is_served_and_linked_from_the_admin_and_the_users_page(client, operator_client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert b"".join(response.streaming_content)[:4] == b"\x00\x00\x01\x00"  # an ICO file
    admin_page = operator_client.get("/admin/").content.decode()
    assert 'rel="icon"' in admin_page
    from django.test import Client

    login_page = Client().get("/login/").content.decode()
    assert 'rel="icon"' in login_page
