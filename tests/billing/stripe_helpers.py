"""What the Stripe payment tests share: a logged-in user, a prepaid user, a top-up."""

from billing.models import BillingProfile
from tests.factories import UserFactory


def login(client, user):
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")


def prepaid_user(**fields):
    user = UserFactory(**fields)
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    return user


def balance(user):
    from billing.selectors import credit_balance

    return credit_balance(user)


def buy(client, fake_stripe, user, amount="25"):
    login(client, user)
    response = client.post("/billing/credits/", {"amount": amount, "request_key": "k1"})
    [request] = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    [session_id] = fake_stripe.checkout_sessions
    return response, request, session_id
