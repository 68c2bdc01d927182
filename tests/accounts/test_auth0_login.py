"""Auth0 login end to end through social-auth's real pipeline, against a local Auth0 over
TLS whose id_tokens are RS256-signed with a key made for the test."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from accounts.models import User
from tests.factories import UserFactory
from tests.fakes.auth0 import CLIENT_ID, CLIENT_SECRET, OMIT, new_signing_key

SUB = "google-oauth2|115161017478488946656"


def start_login(client: Client) -> str:
    """Press "Log in": returns the `state` Auth0 would send back."""
    response = client.post("/auth/login/auth0/")
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.scheme == "https"
    assert location.path == "/authorize"
    query = parse_qs(location.query)
    assert query["client_id"] == [CLIENT_ID]
    assert query["response_type"] == ["code"]
    assert "openid" in query["scope"][0].split()
    return query["state"][0]


def log_in(client: Client, fake_auth0, id_token: str):
    state = start_login(client)
    fake_auth0.next_id_token = id_token
    return client.get("/auth/complete/auth0/", {"code": "the-code", "state": state})


def session_user_id(client: Client):
    return client.session.get("_auth_user_id")


def test_login_page_offers_a_post_button(client, fake_auth0, db):
    response = client.get("/login/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'method="post" action="/auth/login/auth0/"' in body
    assert ">Log in</button>" in body


def test_starting_a_login_by_get_is_refused(client, fake_auth0, db):
    assert client.get("/auth/login/auth0/").status_code == 405


def test_first_login_creates_the_user_keyed_by_the_auth0_sub(client, fake_auth0, db):
    token = fake_auth0.id_token(sub=SUB, email="Grace@Example.com", name="Grace Hopper")

    response = log_in(client, fake_auth0, token)

    assert response.status_code == 302
    assert response["Location"] == "/"
    user = User.objects.get(pk=SUB)
    assert user.email == "grace@example.com"
    assert user.name == "Grace Hopper"
    assert user.login_count == 1
    assert user.last_login is not None
    assert not user.has_usable_password()
    assert session_user_id(client) == SUB
    # What our code sent to Auth0's token endpoint: the code and our client credentials.
    sent = fake_auth0.token_requests[-1]
    assert sent["code"] == "the-code"
    assert sent["grant_type"] == "authorization_code"
    assert sent["client_id"] == CLIENT_ID
    assert sent["client_secret"] == CLIENT_SECRET
    assert sent["redirect_uri"].endswith("/auth/complete/auth0/")


def test_each_login_counts_once_and_email_and_name_follow_the_token(client, fake_auth0, db):
    log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="old@example.com", name="Old"))
    client.logout()
    first_login_at = User.objects.get(pk=SUB).last_login

    log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="new@example.com", name="New"))
    # Page loads after login are not logins.
    client.get("/")
    client.get("/")

    user = User.objects.get(pk=SUB)
    assert user.login_count == 2
    assert user.last_login >= first_login_at
    assert (user.email, user.name) == ("new@example.com", "New")
    assert User.objects.count() == 1


def test_an_email_owned_by_another_auth0_id_is_refused_not_merged(client, fake_auth0, db):
    owner = UserFactory(id="auth0|original", email="shared@example.com")

    response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="shared@example.com"))

    assert response.status_code == 409
    assert "already used by another account" in response.content.decode()
    assert not User.objects.filter(pk=SUB).exists()
    owner.refresh_from_db()
    assert owner.login_count == 0
    assert session_user_id(client) is None


def test_a_suspended_user_is_refused_with_a_clear_page_and_no_session(client, fake_auth0, db):
    UserFactory(id=SUB, email="grace@example.com", status=User.Status.SUSPENDED, login_count=3)

    response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="grace@example.com"))

    assert response.status_code == 403
    assert "suspended" in response.content.decode()
    user = User.objects.get(pk=SUB)
    assert user.login_count == 3
    assert user.last_login is None
    assert session_user_id(client) is None


def test_a_deleted_user_is_refused(client, fake_auth0, db):
    UserFactory(id=SUB, email="grace@example.com", status=User.Status.DELETED)

    response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="grace@example.com"))

    assert response.status_code == 403
    assert "deleted" in response.content.decode()
    assert session_user_id(client) is None


def test_a_token_without_email_is_refused(client, fake_auth0, db):
    response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email=""))
    assert response.status_code == 400
    assert "email address" in response.content.decode()
    assert not User.objects.exists()


@pytest.mark.parametrize(
    "bad_token",
    [
        pytest.param(
            lambda f: f.id_token(sub=SUB, email="g@example.com", aud="someone-else"),
            id="wrong-audience",
        ),
        pytest.param(
            lambda f: f.id_token(sub=SUB, email="g@example.com", iss="https://evil.example.com/"),
            id="wrong-issuer",
        ),
        pytest.param(
            lambda f: f.id_token(sub=SUB, email="g@example.com", key=new_signing_key()),
            id="foreign-signing-key",
        ),
        pytest.param(
            lambda f: f.id_token(
                sub=SUB,
                email="g@example.com",
                exp=int(time.time()) - 600,
                iat=int(time.time()) - 4000,
            ),
            id="expired",
        ),
    ],
)
def test_a_bad_id_token_creates_nothing_counts_nothing_opens_nothing(
    client, fake_auth0, db, bad_token
):
    existing = UserFactory(id=SUB, email="g@example.com", login_count=5)

    response = log_in(client, fake_auth0, bad_token(fake_auth0))

    assert response.status_code == 400
    assert "could not verify your login" in response.content.decode()
    existing.refresh_from_db()
    assert existing.login_count == 5
    assert existing.last_login is None
    assert User.objects.count() == 1
    assert session_user_id(client) is None


def test_a_forged_state_is_refused(client, fake_auth0, db):
    start_login(client)
    fake_auth0.next_id_token = fake_auth0.id_token(sub=SUB, email="g@example.com")

    response = client.get("/auth/complete/auth0/", {"code": "c", "state": "forged"})

    assert response.status_code == 400
    assert not User.objects.exists()


def test_a_user_suspended_while_logged_in_loses_the_session(client, fake_auth0, db):
    log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="g@example.com"))
    User.objects.filter(pk=SUB).update(status=User.Status.SUSPENDED)

    response = client.get("/")

    assert response.status_code == 403
    assert "suspended" in response.content.decode()
    assert session_user_id(client) is None


def test_logout_ends_the_auth0_session_too(client, fake_auth0, db):
    log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="g@example.com"))

    response = client.post("/logout/")

    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert (location.netloc, location.path) == (fake_auth0.domain, "/v2/logout")
    assert parse_qs(location.query)["client_id"] == [CLIENT_ID]
    assert session_user_id(client) is None


def nothing_was_written(client: Client) -> bool:
    from social_django.models import UserSocialAuth

    return (
        not User.objects.exists()
        and not UserSocialAuth.objects.exists()
        and session_user_id(client) is None
    )


@pytest.mark.parametrize(
    "verified",
    [
        pytest.param(False, id="false"),
        pytest.param("true", id="a-string"),
        pytest.param(OMIT, id="absent"),
    ],
)
def test_an_unverified_email_is_refused_with_what_to_do_and_nothing_written(
    client, fake_auth0, db, verified
):
    token = fake_auth0.id_token(sub=SUB, email="victim@example.com", email_verified=verified)

    response = log_in(client, fake_auth0, token)

    assert response.status_code == 403
    body = response.content.decode()
    assert "Verify your email address" in body
    assert "then log in again" in body
    assert "victim@example.com" in body
    assert nothing_was_written(client)


def test_an_unverified_email_cannot_squat_the_address_of_its_real_owner(client, fake_auth0, db):
    log_in(
        client,
        fake_auth0,
        fake_auth0.id_token(sub="auth0|squatter", email="hire@example.com", email_verified=False),
    )
    client.logout()

    response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="hire@example.com"))

    assert response.status_code == 302
    assert User.objects.get(email="hire@example.com").pk == SUB
    assert not User.objects.filter(pk="auth0|squatter").exists()


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("not-an-address", id="not-an-address"),
        pytest.param("two@@example.com", id="two-ats"),
        pytest.param("a" * 250 + "@example.com", id="too-long"),
        pytest.param("space in@example.com", id="space"),
    ],
)
def test_an_email_claim_that_is_not_a_usable_address_is_refused(client, fake_auth0, db, email):
    response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email=email))

    assert response.status_code == 400
    assert "email address" in response.content.decode()
    assert nothing_was_written(client)


def test_a_sub_longer_than_the_social_link_can_hold_is_refused_before_anything_is_written(
    client, fake_auth0, db
):
    response = log_in(
        client, fake_auth0, fake_auth0.id_token(sub="auth0|" + "x" * 300, email="g@example.com")
    )

    assert response.status_code == 400
    assert nothing_was_written(client)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"sub": "auth0|abc\x00def"}, id="sub"),
        pytest.param({"email": "g\x00@example.com"}, id="email"),
        pytest.param({"name": "Grace\x00Hopper"}, id="name"),
        pytest.param({"nickname": "g\x00"}, id="nickname"),
        pytest.param({"picture": "https://example.com/\x00.png"}, id="picture"),
    ],
)
def test_a_nul_byte_in_any_claim_is_refused_before_anything_is_written(
    client, fake_auth0, db, claims
):
    token = fake_auth0.id_token(**{"sub": SUB, "email": "g@example.com", **claims})

    response = log_in(client, fake_auth0, token)

    assert response.status_code == 400
    assert nothing_was_written(client)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"aud": [CLIENT_ID, "another-client"]}, id="several-audiences-no-azp"),
        pytest.param(
            {"aud": [CLIENT_ID, "another-client"], "azp": "another-client"},
            id="several-audiences-azp-another",
        ),
        pytest.param({"azp": "another-client"}, id="azp-another"),
    ],
)
def test_a_token_not_authorized_for_us_is_refused(client, fake_auth0, db, claims):
    token = fake_auth0.id_token(sub=SUB, email="g@example.com", **claims)

    response = log_in(client, fake_auth0, token)

    assert response.status_code == 400
    assert "could not verify your login" in response.content.decode()
    assert nothing_was_written(client)


def test_a_token_for_several_audiences_that_names_us_as_authorized_party_logs_in(
    client, fake_auth0, db
):
    token = fake_auth0.id_token(
        sub=SUB, email="g@example.com", aud=[CLIENT_ID, "https://api.example.com/"], azp=CLIENT_ID
    )

    response = log_in(client, fake_auth0, token)

    assert response.status_code == 302
    assert session_user_id(client) == SUB


def test_a_failure_late_in_the_first_login_leaves_no_half_written_user(client, fake_auth0, db):
    from django.contrib.auth.signals import user_logged_in

    def fail(**kwargs):
        raise RuntimeError("something after the user was created failed")

    user_logged_in.connect(fail, dispatch_uid="test_fail_late")
    try:
        with pytest.raises(RuntimeError):
            log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="g@example.com"))
    finally:
        user_logged_in.disconnect(dispatch_uid="test_fail_late")

    from social_django.models import UserSocialAuth

    assert not User.objects.exists()
    assert not UserSocialAuth.objects.exists()


def test_a_name_claim_longer_than_we_keep_is_truncated_not_refused(client, fake_auth0, db):
    # The name is a display name from Auth0: refusing the login for it would lock a user
    # out for something they may not control, so the stored name is cut to the limit.
    from accounts.models import USER_NAME_MAX_LENGTH

    token = fake_auth0.id_token(sub=SUB, email="long@example.com", name="L" * 5000)

    response = log_in(client, fake_auth0, token)

    assert response.status_code == 302
    assert session_user_id(client) == SUB
    user = User.objects.get(pk=SUB)
    assert user.name == "L" * (USER_NAME_MAX_LENGTH - 1) + "…"


def test_no_auth0_token_is_kept_after_the_login(client, fake_auth0, db):
    from social_django.models import UserSocialAuth

    log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="grace@example.com"))

    link = UserSocialAuth.objects.get(uid=SUB)
    kept = json.dumps(link.extra_data)
    assert not {"access_token", "refresh_token", "id_token"} & set(link.extra_data)
    assert "access-token" not in kept  # what the fake's token endpoint issues
