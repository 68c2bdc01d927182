"""The users admin: who gets in, what operators find, and suspend/reactivate."""

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from tests.factories import AdminFactory, StaffFactory, UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/accounts/user/"


def test_a_non_admin_cannot_enter_the_console(client):
    customer = UserFactory(password="x")
    customer.set_password("customer-password")
    customer.save()

    client.force_login(customer, backend="django.contrib.auth.backends.ModelBackend")
    response = client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert client.get(CHANGELIST).status_code == 302


def test_an_admin_without_a_password_login_cannot_use_the_local_login(client):
    UserFactory(email="nopass@example.com", is_admin=True)
    response = client.post("/admin/login/", {"username": "nopass@example.com", "password": "!"})
    assert response.status_code == 200  # the form again, with an error
    assert "_auth_user_id" not in client.session


def test_the_break_glass_password_login_opens_the_console(client):
    AdminFactory(email="ops@example.com")

    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "OPS@example.com", "password": "operator-password"},
    )

    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200
    assert User.objects.get(email="ops@example.com").login_count == 1


def test_a_suspended_admin_cannot_log_in_locally(client):
    AdminFactory(email="ops@example.com", status=User.Status.SUSPENDED)
    client.post("/admin/login/", {"username": "ops@example.com", "password": "operator-password"})
    assert "_auth_user_id" not in client.session


def test_createsuperuser_makes_a_local_admin(db):
    from django.core.management import call_command

    call_command("createsuperuser", email="Root@Example.com", interactive=False, verbosity=0)

    admin = User.objects.get(email="root@example.com")
    assert admin.id.startswith("local|")
    assert admin.is_admin and admin.is_superuser and admin.is_staff


def test_find_user_by_exact_email_and_filter_admins(operator_client, operator):
    UserFactory(email="needle@example.com")
    UserFactory(email="needle2@example.com")
    UserFactory(email="hay@example.com", is_admin=True)

    found = operator_client.get(CHANGELIST, {"q": "needle@example.com"})
    admins = operator_client.get(CHANGELIST, {"is_admin__exact": "1"})
    suspended = operator_client.get(CHANGELIST, {"status__exact": "suspended"})

    assert [u.email for u in found.context["cl"].result_list] == ["needle@example.com"]
    assert {u.email for u in admins.context["cl"].result_list} == {
        "hay@example.com",
        operator.email,
    }
    assert list(suspended.context["cl"].result_list) == []


def test_the_list_shows_login_count_and_last_login(operator_client):
    from django.utils import timezone

    UserFactory(email="counted@example.com", login_count=42, last_login=timezone.now())
    response = operator_client.get(CHANGELIST)
    body = response.content.decode()
    assert "Last login" in body
    assert "42 logins" in body


def _queries_for_list(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(CHANGELIST).status_code == 200
    return len(queries)


def test_the_users_list_makes_as_many_queries_for_50_users_as_for_5(operator_client):
    UserFactory.create_batch(5)
    few = _queries_for_list(operator_client)
    UserFactory.create_batch(45)
    many = _queries_for_list(operator_client)
    assert few == many


def test_auth0_fields_are_read_only_on_the_change_form(operator_client):
    target = UserFactory(email="target@example.com", name="Original")
    url = f"{CHANGELIST}{target.pk}/change/"

    page = operator_client.get(url)
    assert 'name="email"' not in page.content.decode()

    operator_client.post(url, {"email": "hijack@example.com", "name": "Changed", "is_admin": "on"})
    target.refresh_from_db()
    assert (target.email, target.name) == ("target@example.com", "Original")
    assert target.is_admin


def test_suspending_asks_for_confirmation_first(operator_client):
    target = UserFactory()

    page = operator_client.post(
        CHANGELIST, {"action": "suspend_users", "_selected_action": [target.pk]}
    )

    assert page.status_code == 200
    assert "Yes, suspend them" in page.content.decode()
    target.refresh_from_db()
    assert target.status == User.Status.ACTIVE


def test_confirmed_suspend_and_reactivate_change_status_and_are_logged(operator_client):
    target = UserFactory()
    other = UserFactory(status=User.Status.SUSPENDED)

    response = operator_client.post(
        CHANGELIST,
        {
            "action": "suspend_users",
            "_selected_action": [target.pk, other.pk],
            "confirmed": "yes",
            "reason": "chargeback",
        },
        follow=True,
    )
    target.refresh_from_db()
    assert target.status == User.Status.SUSPENDED
    messages = [str(m) for m in response.context["messages"]]
    assert f"{target.email}: suspended" in messages
    assert f"{other.email}: already suspended" in messages
    assert "1 user done, 1 user unchanged." in messages
    assert LogEntry.objects.filter(object_id=target.pk, change_message__contains="chargeback")

    operator_client.post(
        CHANGELIST,
        {"action": "reactivate_users", "_selected_action": [target.pk], "confirmed": "yes"},
    )
    target.refresh_from_db()
    assert target.status == User.Status.ACTIVE


def test_an_operator_can_add_a_break_glass_login(operator_client):
    response = operator_client.post(
        f"{CHANGELIST}add/",
        {
            "email": "New.Op@example.com",
            "name": "New Op",
            "is_admin": "on",
            "password1": "a-long-enough-passphrase",
            "password2": "a-long-enough-passphrase",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    created = User.objects.get(email="new.op@example.com")
    assert created.id.startswith("local|")
    assert created.check_password("a-long-enough-passphrase")


# Fields that grant power ------------------------------------------------------------

PRIVILEGE_INPUTS = (
    'name="is_superuser"',
    'name="is_admin"',
    'name="groups"',
    'name="user_permissions"',
)


def _escalation_post(group, permission):
    return {
        "is_superuser": "on",
        "is_admin": "on",
        "groups": [group.pk],
        "user_permissions": [permission.pk],
    }


def _grants(user):
    user = User.objects.get(pk=user.pk)
    return (
        user.is_superuser,
        user.is_admin,
        sorted(user.groups.values_list("name", flat=True)),
        sorted(user.user_permissions.values_list("codename", flat=True)),
    )


@pytest.mark.parametrize("whom", ["themselves", "a customer"])
def test_a_change_user_operator_cannot_grant_power_through_the_change_form(client, persona, whom):
    from django.contrib.auth.models import Group, Permission

    operator = persona("change_user_staff")
    target = operator if whom == "themselves" else UserFactory()
    group = Group.objects.create(name="everything")
    group.permissions.set(Permission.objects.all())
    delete_users = Permission.objects.get(codename="delete_user")
    before = _grants(target)
    client.force_login(operator, backend="django.contrib.auth.backends.ModelBackend")
    url = f"{CHANGELIST}{target.pk}/change/"

    page = client.get(url).content.decode()
    response = client.post(url, _escalation_post(group, delete_users))

    assert _grants(target) == before
    assert response.status_code == 302  # saved: with nothing it may change
    assert not any(field in page for field in PRIVILEGE_INPUTS)
    assert not User.objects.get(pk=operator.pk).has_perm("accounts.delete_user")


def test_a_superuser_grants_console_access_groups_and_permissions(operator_client):
    from django.contrib.auth.models import Group, Permission

    target = UserFactory()
    group = Group.objects.create(name="support")
    view_users = Permission.objects.get(codename="view_user")
    url = f"{CHANGELIST}{target.pk}/change/"

    page = operator_client.get(url).content.decode()
    operator_client.post(url, _escalation_post(group, view_users))

    assert all(field in page for field in PRIVILEGE_INPUTS)
    assert _grants(target) == (True, True, ["support"], ["view_user"])


def test_an_operator_who_may_add_users_cannot_add_a_console_login(client):
    adder = StaffFactory(permissions=["accounts.add_user", "accounts.change_user"])
    client.force_login(adder, backend="django.contrib.auth.backends.ModelBackend")

    page = client.get(f"{CHANGELIST}add/").content.decode()
    client.post(
        f"{CHANGELIST}add/",
        {
            "email": "sneaky@example.com",
            "is_admin": "on",
            "password1": "a-long-enough-passphrase",
            "password2": "a-long-enough-passphrase",
        },
    )
    assert not User.objects.get(email="sneaky@example.com").is_admin
    assert 'name="is_admin"' not in page


def test_only_a_superuser_sets_another_operators_password(client, persona, operator):
    support = persona("change_user_staff")
    client.force_login(support, backend="django.contrib.auth.backends.ModelBackend")
    url = f"{CHANGELIST}{operator.pk}/password/"

    page = client.get(f"{CHANGELIST}{operator.pk}/change/").content.decode()
    refused = client.post(
        url, {"password1": "taken-over-passphrase", "password2": "taken-over-passphrase"}
    )

    assert refused.status_code == 403
    assert "password/" not in page
    assert User.objects.get(pk=operator.pk).check_password("operator-password")


def test_suspending_reports_per_user_who_could_not_be_suspended(client, persona):
    operator = persona("support_staff")
    root = AdminFactory(email="root@example.com")  # the only superuser
    customer = UserFactory()
    client.force_login(operator, backend="django.contrib.auth.backends.ModelBackend")

    response = client.post(
        CHANGELIST,
        {
            "action": "suspend_users",
            "_selected_action": [operator.pk, root.pk, customer.pk],
            "confirmed": "yes",
        },
        follow=True,
    )

    messages = [str(m) for m in response.context["messages"]]
    assert f"{operator.email}: not done: you cannot suspend your own account." in " ".join(messages)
    assert any(
        m.startswith("root@example.com: not done: root@example.com is the last") for m in messages
    )
    assert f"{customer.email}: suspended" in messages
    assert messages[-1] == "1 user done, 2 users not done."
    statuses = dict(User.objects.values_list("email", "status"))
    assert statuses[operator.email] == statuses["root@example.com"] == "active"
    assert statuses[customer.email] == "suspended"


def test_only_a_superuser_gives_a_group_permissions(client, operator):
    from django.contrib.auth.models import Group, Permission

    group = Group.objects.create(name="support")
    member = StaffFactory(permissions=["auth.change_group", "auth.view_group"])
    member.groups.add(group)
    everything = list(Permission.objects.values_list("pk", flat=True))
    url = f"/admin/auth/group/{group.pk}/change/"
    client.force_login(member, backend="django.contrib.auth.backends.ModelBackend")

    page = client.get(url).content.decode()
    client.post(url, {"name": "support", "permissions": everything})
    assert not group.permissions.exists()
    assert 'name="permissions"' not in page

    client.force_login(operator, backend="django.contrib.auth.backends.ModelBackend")
    client.post(url, {"name": "support", "permissions": everything[:1]})
    assert group.permissions.count() == 1
