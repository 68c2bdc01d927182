"""Admin list rows (plumbing.admin_rows): the same HTML as Django's, with the work that is
the same for every row done once per page."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from django.contrib.admin.templatetags import admin_list as django_list
from django.contrib.admin.templatetags import admin_urls
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils.html import escape

from accounts.models import User
from clusters.models import CapacityWait
from tests.console.test_admin_query_counts import make, registered
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

USERS = reverse("admin:accounts_user_changelist")

# Values that quoting and escaping must treat exactly as Django does: a primary key with
# characters the admin quotes (`/`, `?`, `#`, `%`, `_`), URL-quotes (`|`, space, non-ASCII)
# or leaves alone, and an email and name with markup.
AWKWARD_IDS = ("auth0|a/b?c#d%e_f", "google-oauth2|ü ñ 1", "auth0|plain-1")


def awkward_users():
    return [
        UserFactory(
            id=pk,
            email=f"o'brien+{n}&co\"<b>@example.com",
            name=f"<script>alert({n})</script> Zoë",
        )
        for n, pk in enumerate(AWKWARD_IDS)
    ]


def tbody(response) -> str:
    return re.search(r"<tbody>(.*)</tbody>", response.content.decode(), re.S).group(1)


def djangos_rows(response) -> list[str]:
    """The rows as Django's own `items_for_result` renders them for the page's changelist."""
    cl = response.context["cl"]
    return [
        "<tr>" + "".join(django_list.items_for_result(cl, row, None)) + "</tr>"
        for row in cl.result_list
    ]


def assert_rows_as_djangos(response):
    body = tbody(response)
    rows = djangos_rows(response)
    assert rows, "the list shows rows"
    position = 0
    for row in rows:
        found = body.find(row, position)
        assert found >= 0, f"row not rendered as Django does:\n{row}\n--- page:\n{body}"
        position = found + len(row)


@pytest.mark.parametrize(
    "label", [model._meta.label for model, _ in registered()], ids=lambda label: label
)
def test_every_admin_list_renders_its_rows_as_django_does(operator_client, label):
    model = next(m for m, _ in registered() if m._meta.label == label)
    opts = model._meta
    cluster = ClusterFactory(max_users=100)
    for n, user in enumerate([*awkward_users(), UserFactory()], start=1):
        make(model, n, user, cluster)
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")

    for query in ("", "?o=1"):  # unfiltered, and with a preserved query in the row links
        response = operator_client.get(url + query)
        assert response.status_code == 200
        assert_rows_as_djangos(response)


def test_the_users_list_renders_awkward_users_and_their_placement_as_django_does(
    operator_client,
):
    users = awkward_users()
    cluster = ClusterFactory(max_users=100, name="eu<1>")
    from clusters.models import UserHopsworksAssignment

    UserHopsworksAssignment.objects.create(user=users[0], hopsworks_cluster=cluster)
    CapacityWait.objects.create(user=users[1], reason=CapacityWait.Reason.NO_CAPACITY)
    User.objects.filter(pk=users[2].pk).update(status=User.Status.SUSPENDED)

    for query in ("", "?kind=customers&o=-1", "?q=example.com", "?placement=assigned"):
        response = operator_client.get(USERS + query)
        assert response.status_code == 200
        assert_rows_as_djangos(response)


def test_row_links_keep_the_lists_filters(operator_client):
    users = awkward_users()
    query = {"kind": "customers", "status": "active", "o": "1"}

    response = operator_client.get(USERS, query)

    links = re.findall(r'<th class="field-user_column"><a href="([^"]*)">', tbody(response))
    expected = [
        reverse("admin:accounts_user_change", args=[quote(user.pk)])
        + "?"
        + urlencode({"_changelist_filters": urlencode(query)})
        for user in sorted(users, key=lambda u: u.email)
    ]
    assert links == [escape(url) for url in expected]


def test_row_links_of_an_unfiltered_list_carry_no_filters(operator_client):
    user = UserFactory()

    response = operator_client.get(USERS)

    change = reverse("admin:accounts_user_change", args=[quote(user.pk)])
    assert f'<a href="{change}">' in tbody(response)


def test_a_list_page_renders_no_template_and_resolves_no_url_per_row(operator_client, monkeypatch):
    resolved = []
    real_resolve = admin_urls.resolve
    monkeypatch.setattr(
        admin_urls, "resolve", lambda *a, **k: resolved.append(a) or real_resolve(*a, **k)
    )

    def page():
        resolved.clear()
        response = operator_client.get(USERS, {"kind": "customers", "o": "1"})
        assert response.status_code == 200
        return len(response.context["cl"].result_list), len(response.templates), len(resolved)

    UserFactory.create_batch(2)
    few_rows, few_templates, few_resolved = page()
    UserFactory.create_batch(5)
    many_rows, many_templates, many_resolved = page()

    assert many_rows > few_rows
    assert many_templates == few_templates
    assert many_resolved == few_resolved


# The users list estimates its filtered counts from a lower size than the other lists
# (`estimate_over` on the admin): counting tens of thousands of matching users exactly
# cost more than the rest of the page.


def test_a_filtered_users_list_says_about_n_over_the_users_admins_own_threshold(
    operator_client, monkeypatch
):
    from django.contrib import admin

    from tests.plans import analyze

    monkeypatch.setattr(type(admin.site._registry[User]), "estimate_over", 3)
    UserFactory.create_batch(12)
    analyze("users")

    many = operator_client.get(USERS, {"status": "active"}).context["cl"]

    assert many.paginator.estimated
    assert many.paginator.shown(many.result_count).startswith("about ")


def usage_on_two_days(cluster_rows=3):
    import datetime as dt
    from decimal import Decimal

    from django.utils import timezone

    from billing.usage import UsageRecord, usage_upsert

    today = timezone.now().date()
    usage_upsert(
        records=[
            UsageRecord(
                user_id=user.pk,
                date=today - dt.timedelta(days=days),
                cpu_hours=Decimal("1.5"),
                api_calls=1000 + n,
            )
            for n, user in enumerate([*awkward_users(), *UserFactory.create_batch(cluster_rows)])
            for days in (1, 2)
        ],
        actor="test",
    )


def test_a_usage_list_of_few_days_renders_as_django_does(operator_client):
    usage_on_two_days()
    url = reverse("admin:billing_usagedaily_changelist")
    for query in ("", "?o=-1", "?o=1"):
        response = operator_client.get(url + query)
        assert response.status_code == 200
        assert_rows_as_djangos(response)


def test_a_date_column_formats_each_date_once_per_page(operator_client, monkeypatch):
    from plumbing import admin_rows

    formatted = []
    real = admin_rows.display_for_field
    monkeypatch.setattr(
        admin_rows,
        "display_for_field",
        lambda value, field, *a, **k: (
            formatted.append((field.name, value)) or real(value, field, *a, **k)
        ),
    )
    usage_on_two_days(cluster_rows=5)

    response = operator_client.get(reverse("admin:billing_usagedaily_changelist"))

    assert len(response.context["cl"].result_list) == 16
    assert sorted(formatted) == sorted({("date", value) for _, value in formatted})
    assert len(formatted) == 2
