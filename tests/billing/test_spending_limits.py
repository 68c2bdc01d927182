"""Spending caps and low-balance thresholds: set by the user within their limit and by
operators within theirs, every change kept, bad input refused with nothing written."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from billing.limits import low_balance_threshold_of, spending_cap_of, spending_limits_set
from billing.models import BillingProfile, SpendingLimitChange
from tests.billing.stripe_helpers import login, prepaid_user
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
D = Decimal


def profile(user):
    return BillingProfile.objects.filter(user=user).first()


def test_a_user_sets_their_cap_and_the_change_is_kept_with_who_made_it():
    user = UserFactory()
    spending_limits_set(
        user=user,
        monthly_spending_cap=D("250.50"),
        low_balance_threshold=None,
        actor=user,
        by_user=True,
    )
    assert spending_cap_of(profile(user)) == D("250.50")
    [change] = SpendingLimitChange.objects.filter(user=user, field="monthly_spending_cap")
    assert (change.old, change.new, change.by_user) == (None, D("250.50"), True)
    assert user.email in change.actor


def test_none_puts_the_default_back_and_that_is_a_change_too(settings):
    settings.SPENDING_CAP_DEFAULT = "1000"
    user = UserFactory()
    spending_limits_set(
        user=user,
        monthly_spending_cap=D("5"),
        low_balance_threshold=None,
        actor="ops",
        by_user=False,
    )
    spending_limits_set(
        user=user, monthly_spending_cap=None, low_balance_threshold=None, actor="ops", by_user=False
    )
    assert spending_cap_of(profile(user)) == D("1000")
    assert list(
        SpendingLimitChange.objects.filter(user=user).order_by("id").values_list("old", "new")
    ) == [(None, D("5")), (D("5"), None)]


def test_setting_the_same_value_again_records_nothing():
    user = UserFactory()
    for _ in range(2):
        spending_limits_set(
            user=user,
            monthly_spending_cap=D("5"),
            low_balance_threshold=None,
            actor="ops",
            by_user=False,
        )
    assert SpendingLimitChange.objects.filter(user=user).count() == 1


@pytest.mark.parametrize(
    "value, words",
    [
        (D("-1"), "negative"),
        (D("1.005"), "cents"),
        (D("NaN"), "number"),
        (D("Infinity"), "number"),
        (1.5, "decimal"),
        (D("10000.01"), "$0.00 to $10,000.00"),
        (D("1E+400"), "$0.00 to $10,000.00"),
        (D("10000.001"), "$0.00 to $10,000.00"),
    ],
)
def test_bad_or_absurd_caps_from_the_user_are_refused_saying_the_allowed_range(
    settings, value, words
):
    settings.SPENDING_CAP_USER_MAX = "10000"
    user = UserFactory()
    with pytest.raises(ValidationError) as refused:
        spending_limits_set(
            user=user,
            monthly_spending_cap=value,
            low_balance_threshold=None,
            actor=user,
            by_user=True,
        )
    assert words in " ".join(refused.value.messages)
    assert profile(user) is None or profile(user).monthly_spending_cap is None
    assert not SpendingLimitChange.objects.exists()


def test_operators_may_go_up_to_their_own_maximum_only(settings):
    settings.SPENDING_CAP_USER_MAX = "10000"
    settings.SPENDING_CAP_OPERATOR_MAX = "1000000"
    user = UserFactory()
    spending_limits_set(
        user=user,
        monthly_spending_cap=D("50000"),
        low_balance_threshold=None,
        actor="ops",
        by_user=False,
    )
    assert spending_cap_of(profile(user)) == D("50000")
    with pytest.raises(ValidationError, match=r"1,000,000\.00"):
        spending_limits_set(
            user=user,
            monthly_spending_cap=D("1000000.01"),
            low_balance_threshold=None,
            actor="ops",
            by_user=False,
        )
    assert spending_cap_of(profile(user)) == D("50000")


def test_the_user_sets_their_limits_on_their_page(client):
    user = UserFactory()
    login(client, user)
    response = client.post("/billing/limits/", {"monthly_spending_cap": "300"})
    assert response.status_code == 302
    assert spending_cap_of(profile(user)) == D("300")
    page = client.get("/").content.decode()
    assert "$300.00" in page
    assert "Monthly spending cap" in page


def test_a_prepaid_user_sets_their_low_balance_threshold_and_blank_means_the_default(
    client, settings
):
    settings.LOW_BALANCE_THRESHOLD_DEFAULT = "10"
    user = prepaid_user()
    login(client, user)
    client.post("/billing/limits/", {"low_balance_threshold": "25.00"})
    assert low_balance_threshold_of(profile(user)) == D("25.00")
    client.post("/billing/limits/", {"low_balance_threshold": ""})
    assert low_balance_threshold_of(profile(user)) == D("10")
    assert profile(user).low_balance_threshold is None


def test_bad_input_on_the_page_shows_the_error_and_writes_nothing(client, settings):
    settings.SPENDING_CAP_USER_MAX = "10000"
    user = UserFactory()
    login(client, user)
    for raw in ("lots", "-5", "99999999"):
        response = client.post("/billing/limits/", {"monthly_spending_cap": raw})
        assert response.status_code == 400
        page = response.content.decode()
        assert 'class="error"' in page
    assert "$0.00 to $10,000.00" in page
    assert not SpendingLimitChange.objects.exists()
    assert profile(user) is None or profile(user).monthly_spending_cap is None


def test_the_limits_form_needs_a_login_and_a_csrf_token(client):
    from django.test import Client

    user = UserFactory()
    response = client.post("/billing/limits/", {"monthly_spending_cap": "5"})
    assert response.status_code == 302 and "/login/" in response["Location"]
    strict = Client(enforce_csrf_checks=True)
    login(strict, user)
    assert strict.post("/billing/limits/", {"monthly_spending_cap": "5"}).status_code == 403
    assert not SpendingLimitChange.objects.exists()


def test_an_operator_sets_limits_from_the_users_admin_and_sees_the_history(
    persona_client, settings
):
    settings.SPENDING_CAP_USER_MAX = "10000"
    target = UserFactory()
    client = persona_client("finance_staff")
    response = client.post(
        "/admin/accounts/user/",
        {
            "action": "set_spending_limits",
            "_selected_action": [target.pk],
            "confirmed": "yes",
            "monthly_spending_cap": "20000",
            "low_balance_threshold": "",
            "keep_threshold": "on",
        },
        follow=True,
    )
    assert "1 user(s)" in response.content.decode()
    assert spending_cap_of(profile(target)) == D("20000")
    [change] = SpendingLimitChange.objects.filter(user=target)
    assert change.by_user is False and change.field == "monthly_spending_cap"
    page = client.get(f"/admin/accounts/user/{target.pk}/change/").content.decode()
    assert "$20,000.00" in page and "Spending limit changes" in page


def test_an_absurd_cap_in_the_admin_is_refused_on_the_form(persona_client):
    target = UserFactory()
    client = persona_client("finance_staff")
    response = client.post(
        "/admin/accounts/user/",
        {
            "action": "set_spending_limits",
            "_selected_action": [target.pk],
            "confirmed": "yes",
            "monthly_spending_cap": "-3",
            "keep_threshold": "on",
        },
    )
    assert response.status_code == 200
    assert "not an amount in dollars and cents" in response.content.decode()
    assert not SpendingLimitChange.objects.exists()
