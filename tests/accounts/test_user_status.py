"""Suspending and reactivating users (accounts.services): nobody locks themselves or the
last superuser out of the console."""

import pytest

from accounts import services
from accounts.models import User
from tests.concurrency import run_at_once
from tests.factories import AdminFactory, StaffFactory, UserFactory

pytestmark = pytest.mark.django_db


def status(user):
    return User.objects.get(pk=user.pk).status


def test_suspending_and_reactivating_a_user_changes_their_status_once():
    operator, user = AdminFactory(), UserFactory()

    assert services.user_suspend(user=user, actor=operator) is True
    assert services.user_suspend(user=user, actor=operator) is False
    assert status(user) == User.Status.SUSPENDED
    assert services.user_reactivate(user=user, actor=operator) is True
    assert status(user) == User.Status.ACTIVE


@pytest.mark.parametrize("new_status", [User.Status.SUSPENDED, User.Status.DELETED])
def test_an_operator_cannot_lock_themselves_out(new_status):
    AdminFactory()  # another superuser: being the last one is not the reason here
    operator = StaffFactory(permissions=["accounts.suspend_user"])

    with pytest.raises(services.StatusChangeRefused, match="your own account"):
        services.user_set_status(user=operator, status=new_status, actor=operator)

    assert status(operator) == User.Status.ACTIVE


def test_the_last_active_superuser_cannot_be_suspended():
    root = AdminFactory(email="root@example.com")
    AdminFactory(status=User.Status.SUSPENDED)  # a suspended superuser does not count
    support = StaffFactory(permissions=["accounts.suspend_user"])

    with pytest.raises(services.StatusChangeRefused) as refused:
        services.user_suspend(user=root, actor=support)

    assert "root@example.com is the last active superuser" in str(refused.value)
    assert status(root) == User.Status.ACTIVE


def test_a_superuser_may_be_suspended_while_another_stays_active():
    root, other = AdminFactory(), AdminFactory()
    assert services.user_suspend(user=root, actor=other) is True
    with pytest.raises(services.StatusChangeRefused):
        services.user_suspend(user=other, actor=None)
    assert status(other) == User.Status.ACTIVE


@pytest.mark.django_db(transaction=True)
def test_suspending_the_last_two_superusers_at_once_leaves_one():
    pair = [AdminFactory(), AdminFactory()]
    refusals = []

    def suspend(user):
        try:
            services.user_suspend(user=user, actor=None)
        except services.StatusChangeRefused as error:
            refusals.append(error)

    run_at_once(suspend, pair)

    assert len(refusals) == 1
    assert User.objects.filter(is_superuser=True, status=User.Status.ACTIVE).count() == 1


def test_every_status_change_is_recorded_with_who_and_why_and_a_no_op_is_not():
    from accounts.models import UserStatusChange

    operator, user = AdminFactory(), UserFactory()

    services.user_suspend(user=user, actor=operator, reason="chargeback")
    services.user_suspend(user=user, actor=operator, reason="again")  # already suspended
    services.user_reactivate(user=user, actor=None)

    changes = list(UserStatusChange.objects.filter(user=user).order_by("id"))
    assert [(c.from_status, c.to_status, c.actor, c.reason) for c in changes] == [
        ("active", "suspended", operator.email, "chargeback"),
        ("suspended", "active", "system", ""),
    ]


def test_a_refused_status_change_records_nothing():
    from accounts.models import UserStatusChange

    operator = AdminFactory()
    AdminFactory()
    with pytest.raises(services.StatusChangeRefused):
        services.user_suspend(user=operator, actor=operator)

    assert not UserStatusChange.objects.exists()
