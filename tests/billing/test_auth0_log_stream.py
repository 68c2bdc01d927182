"""The Auth0 log stream webhook: a user deleted in Auth0 has their account closed (actor
auth0), once, whatever Auth0 redelivers; anything else is refused or ignored and recorded."""

import json

import pytest

from accounts.models import User
from billing.models import AccountClosure, Auth0LogEvent
from tests.factories import UserFactory
from tests.fakes.auth0 import LOG_STREAM_TOKEN, log_event
from tests.jobs import run_queued_jobs

pytestmark = pytest.mark.django_db
URL = "/webhooks/auth0/"


@pytest.fixture(autouse=True)
def token(settings):
    settings.AUTH0_LOG_STREAM_TOKEN = LOG_STREAM_TOKEN


def post(client, body, *, authorization=f"Bearer {LOG_STREAM_TOKEN}"):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    return client.post(URL, payload, content_type="application/json", **headers)


def test_a_user_deleted_in_auth0_has_their_account_closed_once(client):
    user = UserFactory()
    event = log_event("sdu", user.pk, date="2026-12-01T10:00:00.000Z")

    first = post(client, [event, log_event("s", user.pk)])
    again = post(client, [event])  # Auth0 delivers at least once
    assert first.json() == {"queued": 1, "duplicates": 0, "ignored": 1}
    assert again.json() == {"queued": 0, "duplicates": 1, "ignored": 0}
    assert not AccountClosure.objects.exists()  # stored: a job closes it
    assert ("billing.apply_auth0_log_events", "succeeded") in run_queued_jobs()

    assert first.status_code == again.status_code == 200
    closure = AccountClosure.objects.get(user=user)
    assert closure.actor == "auth0" and event["log_id"] in closure.reason
    assert closure.closed_at.isoformat() == "2026-12-01T10:00:00+00:00"
    assert User.objects.get(pk=user.pk).status == User.Status.DELETED
    [record] = Auth0LogEvent.objects.all()  # only deletions are kept
    assert (record.log_id, record.outcome) == (event["log_id"], "closed")


def test_a_deletion_of_a_user_we_do_not_know_is_ignored_and_recorded(client):
    response = post(client, [log_event("sdu", "auth0|nobody")])
    run_queued_jobs()

    assert response.status_code == 200
    record = Auth0LogEvent.objects.get()
    assert (record.user_id, record.outcome) == ("auth0|nobody", "unknown_user")
    assert not AccountClosure.objects.exists()


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", LOG_STREAM_TOKEN, f"Basic {LOG_STREAM_TOKEN}"]
)
def test_a_delivery_without_the_configured_token_is_refused(client, authorization):
    user = UserFactory()
    response = post(client, [log_event("sdu", user.pk)], authorization=authorization)

    assert response.status_code == 401
    assert not Auth0LogEvent.objects.exists() and not AccountClosure.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        {"log_id": "1", "data": {}},  # not an array
        [{"data": {"type": "sdu", "user_id": "auth0|x"}}],  # no log id
        [{"log_id": "1", "data": {"type": "sdu"}}],  # a deletion naming no user
        [{"log_id": "1", "data": "sdu"}],
        [{"log_id": "1", "data": {"type": "sdu", "user_id": "auth0|x", "date": "yesterday"}}],
    ],
)
def test_bad_input_is_a_400_and_nothing_is_written(client, body):
    UserFactory(id="auth0|x")
    response = post(client, body)

    assert response.status_code == 400 and response.json()["error"]
    assert not Auth0LogEvent.objects.exists() and not AccountClosure.objects.exists()


def test_an_oversized_delivery_is_refused_unread(client, settings):
    settings.AUTH0_LOG_STREAM_MAX_BYTES = 1000
    response = post(client, [log_event("s", "auth0|x")] * 20)

    assert response.status_code == 413
    assert not Auth0LogEvent.objects.exists()


def test_the_endpoint_is_off_without_a_token(client, settings):
    settings.AUTH0_LOG_STREAM_TOKEN = ""
    assert post(client, [log_event("sdu", UserFactory().pk)]).status_code == 404


def test_a_large_delivery_is_stored_in_a_constant_number_of_queries_and_applied_by_the_job(
    client, django_assert_max_num_queries
):
    # Auth0 advises queueing: a delivery of thousands of deletions closed one account after
    # another in the request (~38 ms each), past the web worker's timeout.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    users = UserFactory.create_batch(30)
    events = [log_event("sdu", user.pk) for user in users]

    def queries(batch):
        with CaptureQueriesContext(connection) as captured:
            assert post(client, batch).status_code == 200
        return len(captured)

    queries(events[:1])  # queues the job; later deliveries find it queued
    assert queries(events[1:4]) == queries(events[4:])  # 3 deletions or 26: the same
    assert Auth0LogEvent.objects.filter(outcome="pending").count() == 30
    assert not AccountClosure.objects.exists()

    run_queued_jobs()

    assert AccountClosure.objects.count() == 30
    assert not Auth0LogEvent.objects.filter(outcome="pending").exists()
    assert set(
        User.objects.filter(pk__in=[u.pk for u in users]).values_list("status", flat=True)
    ) == {User.Status.DELETED}


def test_a_deletion_that_fails_stays_pending_and_does_not_hold_up_the_others(client, monkeypatch):
    from billing import auth0_log_stream

    stuck, fine = UserFactory(), UserFactory()
    post(client, [log_event("sdu", stuck.pk), log_event("sdu", fine.pk)])
    real = auth0_log_stream.account_close

    def close(*, user, **kwargs):
        if user.pk == stuck.pk:
            raise RuntimeError("the database said no")
        return real(user=user, **kwargs)

    monkeypatch.setattr(auth0_log_stream, "account_close", close)

    with pytest.raises(auth0_log_stream.LogEventsFailed, match="the database said no"):
        auth0_log_stream.log_events_apply()

    assert AccountClosure.objects.get().user_id == fine.pk
    assert Auth0LogEvent.objects.get(user_id=stuck.pk).outcome == "pending"
    monkeypatch.setattr(auth0_log_stream, "account_close", real)
    auth0_log_stream.log_events_apply()  # the next run
    assert AccountClosure.objects.count() == 2
