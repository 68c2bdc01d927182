"""The Hopsworks admin client against a local Hopsworks over TLS (verification on, the test
CA given as the cluster's CA bundle). We assert on what the client sent, not only on what
it returned."""

from __future__ import annotations

import logging
import os
import socket
import time
from urllib.parse import urlsplit

import pytest

from clusters.hopsworks import (
    ConnectionReport,
    HopsworksClient,
    HopsworksError,
    HopsworksProject,
    validate_api_url,
)
from clusters.models import HopsworksCluster
from plumbing import outbound
from tests.fakes.hopsworks import CREATE_PARAMS, OAUTH_CLIENT_ID, reset
from tests.fakes.raw_servers import DripServer, http_response
from tests.fakes.server import local_server

SUBJECT = "auth0|65f1c0ffee"


@pytest.fixture(scope="module")
def hopsworks_server(test_ca):
    with local_server(test_ca) as server:
        yield server


@pytest.fixture
def fake_hopsworks(hopsworks_server):
    fake = reset(hopsworks_server)
    yield fake
    fake.release()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(fake_hopsworks, test_ca, sleeps):
    """A client for the fake cluster; keyword arguments override the defaults."""
    clients = []

    def make(**overrides) -> HopsworksClient:
        options = {
            "api_url": fake_hopsworks.api_url,
            "api_key": fake_hopsworks.api_key,
            "ca_bundle_pem": test_ca.ca_path.read_text(),
            "connect_timeout": 2.0,
            "read_timeout": 2.0,
            "sleep": sleeps.append,
        }
        options.update(overrides)
        client = HopsworksClient(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def hopsworks(make_client) -> HopsworksClient:
    return make_client()


def create_alice(client: HopsworksClient, **overrides):
    values = {
        "email": "alice@example.com",
        "given_name": "Alice",
        "surname": "Liddell",
        "subject": SUBJECT,
        "client_id": OAUTH_CLIENT_ID,
        "max_num_projects": 5,
    }
    values.update(overrides)
    return client.create_oauth_user(**values)


def ensure_alice(client: HopsworksClient):
    return client.ensure_oauth_user(
        email="alice@example.com",
        given_name="Alice",
        surname="Liddell",
        subject=SUBJECT,
        client_id=OAUTH_CLIENT_ID,
        max_num_projects=5,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Users


def test_creating_a_user_sends_query_parameters_only_then_pages_to_find_its_id(
    fake_hopsworks, make_client
):
    for n in range(5):
        fake_hopsworks.add_user(email=f"user{n}@example.com")
    fake_hopsworks.add_user(email="admin@example.com", remote=False)
    client = make_client(page_size=2)

    user = create_alice(client)

    [post] = fake_hopsworks.requests_to("POST", "/admin/users")
    assert post.body == b""
    assert post.headers["Authorization"] == f"ApiKey {fake_hopsworks.api_key}"
    assert sorted(post.args.keys()) == sorted(CREATE_PARAMS)
    assert all(len(post.args.getlist(name)) == 1 for name in CREATE_PARAMS)
    assert post.args.to_dict() == {
        "accountType": "REMOTE_ACCOUNT_TYPE",
        "type": "OAUTH2",
        "email": "alice@example.com",
        "givenName": "Alice",
        "surname": "Liddell",
        "maxNumProjects": "5",
        "subject": SUBJECT,
        "clientId": OAUTH_CLIENT_ID,
    }
    lookups = fake_hopsworks.requests_to("GET", "/admin/users")
    assert [r.args["offset"] for r in lookups] == ["0", "2", "4"]
    assert {r.args["limit"] for r in lookups} == {"2"}
    assert all(r.args.getlist("filter_by") == ["type:REMOTE_ACCOUNT_TYPE"] for r in lookups)
    assert all(r.headers["Authorization"] == post.headers["Authorization"] for r in lookups)

    stored = fake_hopsworks.user_by_email("alice@example.com")
    assert stored.uuid == f"{OAUTH_CLIENT_ID}.{SUBJECT}"
    assert user.id == stored.id
    assert user.username == stored.username
    assert (user.email, user.firstname, user.lastname) == ("alice@example.com", "Alice", "Liddell")
    assert user.is_active


def test_finding_a_user_matches_the_email_case_insensitively(fake_hopsworks, make_client):
    for n in range(4):
        fake_hopsworks.add_user(email=f"user{n}@example.com")
    bob = fake_hopsworks.add_user(email="Bob@Example.COM", firstname="Bob", status=3)

    user = make_client(page_size=3).find_user(email="bob@example.com")

    assert user.id == bob.id
    assert user.status == 3
    assert not user.is_active


def test_finding_a_user_ignores_password_accounts_with_the_same_email(fake_hopsworks, hopsworks):
    fake_hopsworks.add_user(email="carol@example.com", remote=False)

    assert hopsworks.find_user(email="carol@example.com") is None


def test_finding_a_user_on_an_empty_cluster_returns_none(fake_hopsworks, hopsworks):
    # The fake, like Hopsworks, leaves "items" out of an empty list.
    assert hopsworks.find_user(email="nobody@example.com") is None
    assert len(fake_hopsworks.requests) == 1


def test_ensuring_a_user_twice_creates_it_once(fake_hopsworks, hopsworks):
    first = ensure_alice(hopsworks)
    second = ensure_alice(hopsworks)

    assert len(fake_hopsworks.requests_to("POST", "/admin/users")) == 1
    assert first == second
    assert len(fake_hopsworks.users) == 1


def test_ensuring_a_user_another_worker_just_created_returns_it_without_a_second_create(
    fake_hopsworks, hopsworks
):
    existing = fake_hopsworks.add_user(email="alice@example.com", subject=SUBJECT)
    # Our first lookup sees the list from before the other worker's create.
    fake_hopsworks.answer_next(200, {"count": 0}, method="GET", path="/admin/users")

    user = ensure_alice(hopsworks)

    assert user.id == existing.id
    assert len(fake_hopsworks.requests_to("POST", "/admin/users")) == 1
    assert len(fake_hopsworks.users) == 1


def test_ensuring_a_user_raises_the_create_error_when_the_account_is_still_missing(
    fake_hopsworks, hopsworks, caplog
):
    fake_hopsworks.answer_next(
        400,
        {"errorCode": 160004, "usrMsg": "Invalid email format", "errorMsg": "INVALID_EMAIL"},
        method="POST",
        path="/admin/users",
    )

    with pytest.raises(HopsworksError) as caught:
        ensure_alice(hopsworks)

    assert caught.value.status == 400
    assert caught.value.error_code == 160004
    assert not caught.value.retriable
    # The code, not the server's words, is in the message; its words are in the log.
    assert "HTTP 400 Bad Request, Hopsworks error code 160004" in str(caught.value)
    assert "Invalid email format" not in str(caught.value)
    assert "Invalid email format" in caplog.text
    assert len(fake_hopsworks.requests_to("POST", "/admin/users")) == 1
    assert len(fake_hopsworks.requests_to("GET", "/admin/users")) == 2


def test_a_failed_create_is_not_retried(fake_hopsworks, hopsworks, sleeps):
    fake_hopsworks.fail_next(status=502, method="POST", path="/admin/users")

    with pytest.raises(HopsworksError) as caught:
        create_alice(hopsworks)

    assert caught.value.status == 502
    assert caught.value.retriable
    assert "tried once" in str(caught.value)
    assert len(fake_hopsworks.requests) == 1
    assert sleeps == []


def test_getting_a_user_reads_it_by_numeric_id(fake_hopsworks, hopsworks):
    dora = fake_hopsworks.add_user(email="dora@example.com", firstname="Dora", lastname="Maar")

    user = hopsworks.get_user(user_id=dora.id)

    assert [r.path for r in fake_hopsworks.requests] == [f"/admin/users/{dora.id}"]
    assert (user.id, user.email, user.username) == (dora.id, dora.email, dora.username)
    assert (user.firstname, user.lastname) == ("Dora", "Maar")


def test_an_unknown_user_is_a_404_that_is_not_retried(fake_hopsworks, hopsworks, sleeps):
    with pytest.raises(HopsworksError) as caught:
        hopsworks.get_user(user_id=999)

    assert caught.value.status == 404
    assert not caught.value.retriable
    assert "HTTP 404 Not Found, Hopsworks error code 160002" in str(caught.value)
    assert len(fake_hopsworks.requests) == 1
    assert sleeps == []


def test_deactivating_then_activating_a_user_sends_put_with_the_status(fake_hopsworks, hopsworks):
    erin = fake_hopsworks.add_user(email="erin@example.com")

    deactivated = hopsworks.set_user_active(user_id=erin.id, active=False)
    assert erin.status == 3
    activated = hopsworks.set_user_active(user_id=erin.id, active=True)
    assert erin.status == 2

    puts = fake_hopsworks.requests_to("PUT", f"/admin/users/{erin.id}")
    assert [r.json() for r in puts] == [{"status": 3}, {"status": 2}]
    assert all(r.headers["Content-Type"] == "application/json" for r in puts)
    assert all(r.args.to_dict() == {} for r in puts)
    # The PUT's answer has no username, so each change is read back.
    assert [r.method for r in fake_hopsworks.requests] == ["PUT", "GET", "PUT", "GET"]
    assert (deactivated.id, deactivated.status, deactivated.is_active) == (erin.id, 3, False)
    assert (activated.email, activated.username, activated.is_active) == (
        "erin@example.com",
        erin.username,
        True,
    )


def test_a_status_change_is_retried_on_5xx_because_it_is_idempotent(
    fake_hopsworks, hopsworks, sleeps
):
    erin = fake_hopsworks.add_user(email="erin@example.com")
    fake_hopsworks.fail_next(status=504, method="PUT", path=f"/admin/users/{erin.id}")

    user = hopsworks.set_user_active(user_id=erin.id, active=False)

    assert not user.is_active
    assert len(fake_hopsworks.requests_to("PUT", f"/admin/users/{erin.id}")) == 2
    assert sleeps == [0.5]


# Projects and connection


def test_listing_projects_pages_with_creators_and_maps_namespaces(fake_hopsworks, make_client):
    fake_hopsworks.add_user(email="frank@example.com")
    frank = fake_hopsworks.user_by_email("frank@example.com")
    fake_hopsworks.add_project("fraud_Detection", "frank@example.com")
    fake_hopsworks.add_project("churn", "frank@example.com", namespace="churn-ns-7")
    fake_hopsworks.add_project("Orphan_Project", "gone@example.com")

    projects = make_client(page_size=2).list_projects()

    lists = fake_hopsworks.requests_to("GET", "/admin/projects")
    assert [(r.args["offset"], r.args["limit"]) for r in lists] == [("0", "2"), ("2", "2")]
    assert all(r.args.getlist("expand") == ["creator"] for r in lists)
    first_id = fake_hopsworks.projects[0].id
    assert projects == [
        HopsworksProject(
            id=first_id,
            name="fraud_Detection",
            namespace="fraud-detection",
            creator_email="frank@example.com",
            creator_username=frank.username,
        ),
        HopsworksProject(
            id=first_id + 1,
            name="churn",
            namespace="churn-ns-7",
            creator_email="frank@example.com",
            creator_username=frank.username,
        ),
        HopsworksProject(
            id=first_id + 2,
            name="Orphan_Project",
            namespace="orphan-project",
            creator_email="gone@example.com",
            creator_username=None,
        ),
    ]


def test_the_pages_of_a_listing_and_the_calls_of_one_client_share_one_connection(
    fake_hopsworks, make_client
):
    # Real Hopsworks keeps connections alive: a collection reads 100 pages of projects per
    # cluster, and a TLS handshake per page was most of its time.
    for n in range(5):
        fake_hopsworks.add_project(f"project_{n}", f"owner{n}@example.com")
    client = make_client(page_size=2)

    assert len(client.list_projects()) == 5
    assert len(client.list_projects()) == 5

    lists = fake_hopsworks.requests_to("GET", "/admin/projects")
    assert len(lists) == 6
    assert len({r.peer for r in lists}) == 1


def test_listing_projects_on_an_empty_cluster_returns_nothing(fake_hopsworks, hopsworks):
    assert hopsworks.list_projects() == []


def test_checking_the_connection_counts_users_and_projects_with_one_item_pages(
    fake_hopsworks, hopsworks
):
    for n in range(3):
        fake_hopsworks.add_user(email=f"user{n}@example.com")
    fake_hopsworks.add_user(email="admin@example.com", remote=False)
    fake_hopsworks.add_project("demo", "user0@example.com")

    report = hopsworks.check_connection()

    assert report == ConnectionReport(users=4, projects=1)
    assert [(r.path, r.args["limit"]) for r in fake_hopsworks.requests] == [
        ("/admin/users", "1"),
        ("/admin/projects", "1"),
    ]


# Failures


def test_a_5xx_twice_then_success_is_retried_with_exponential_backoff(
    fake_hopsworks, make_client, sleeps, caplog
):
    fake_hopsworks.add_user(email="gina@example.com")
    fake_hopsworks.fail_next(2, status=503)
    client = make_client(backoff=0.5)

    with caplog.at_level(logging.WARNING, logger="clusters.hopsworks"):
        user = client.find_user(email="gina@example.com")

    assert user.email == "gina@example.com"
    assert len(fake_hopsworks.requests) == 3
    assert sleeps == [0.5, 1.0]
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    assert all(r.levelno == logging.WARNING for r in retries)
    assert all(fake_hopsworks.api_key not in r.getMessage() for r in retries)


def test_a_5xx_every_time_is_a_retriable_error_after_max_attempts(
    fake_hopsworks, make_client, sleeps
):
    fake_hopsworks.fail_next(10, status=500)
    client = make_client(max_attempts=4, backoff=0.25)

    with pytest.raises(HopsworksError) as caught:
        client.list_projects()

    assert caught.value.status == 500
    assert caught.value.retriable
    message = str(caught.value)
    assert fake_hopsworks.api_url in message
    assert "list projects" in message
    assert "Hopsworks failed" in message
    assert "HTTP 500 Internal Server Error, Hopsworks error code 120000" in message
    assert "Service unavailable" not in message
    assert "tried 4 times" in message
    assert len(fake_hopsworks.requests) == 4
    assert sleeps == [0.25, 0.5, 1.0]


def test_a_wrong_api_key_is_not_retried_and_the_message_says_to_check_the_key(
    fake_hopsworks, make_client, sleeps
):
    wrong_key = "wrong-key-that-must-stay-secret"
    client = make_client(api_key=wrong_key)

    with pytest.raises(HopsworksError) as caught:
        client.get_user(user_id=1)

    message = str(caught.value)
    assert caught.value.status == 401
    assert not caught.value.retriable
    assert "API key" in message
    assert "admin scope" in message
    assert fake_hopsworks.api_url in message
    assert wrong_key not in message
    assert fake_hopsworks.api_key not in message
    assert len(fake_hopsworks.requests) == 1
    assert fake_hopsworks.requests[0].headers["Authorization"] == f"ApiKey {wrong_key}"
    assert sleeps == []


def test_a_key_echoed_back_by_the_server_is_kept_out_of_messages_and_logs(
    fake_hopsworks, hopsworks, caplog
):
    key = fake_hopsworks.api_key
    fake_hopsworks.answer_next(500, {"usrMsg": f"bad token {key}"}, count=3)

    with (
        caplog.at_level(logging.DEBUG, logger="clusters.hopsworks"),
        pytest.raises(HopsworksError) as caught,
    ):
        hopsworks.check_connection()

    assert key not in str(caught.value)
    assert "bad token" not in str(caught.value)
    assert "bad token [API key]" in caplog.text
    assert caplog.records
    assert all(key not in record.getMessage() for record in caplog.records)


def test_a_slow_answer_times_out_is_retried_and_then_reported(fake_hopsworks, make_client, sleeps):
    fake_hopsworks.slow_next(2, seconds=5)
    client = make_client(read_timeout=0.2, max_attempts=2)

    with pytest.raises(HopsworksError) as caught:
        client.check_connection()

    message = str(caught.value)
    assert caught.value.status is None
    assert caught.value.retriable
    assert "read timeout" in message
    assert "0.2s" in message
    assert f"could not reach the cluster at {fake_hopsworks.api_url}" in message
    assert len(fake_hopsworks.requests) == 2
    assert sleeps == [0.5]


def test_a_refused_connection_names_the_url_and_is_retried(make_client, sleeps):
    url = f"https://127.0.0.1:{free_port()}"
    client = make_client(api_url=url, max_attempts=2)

    with pytest.raises(HopsworksError) as caught:
        client.find_user(email="someone@example.com")

    message = str(caught.value)
    assert caught.value.status is None
    assert caught.value.retriable
    assert f"could not reach the cluster at {url}" in message
    assert "refused" in message.lower()
    assert "tried 2 times" in message
    assert sleeps == [0.5]


def test_a_success_answer_that_is_not_json_is_a_hopsworks_error(fake_hopsworks, hopsworks):
    fake_hopsworks.answer_next(200, "<html>Please log in</html>", content_type="text/html")

    with pytest.raises(HopsworksError) as caught:
        hopsworks.list_projects()

    assert caught.value.status == 200
    assert not caught.value.retriable
    assert "not with JSON" in str(caught.value)


def test_a_redirect_is_not_followed(fake_hopsworks, hopsworks):
    fake_hopsworks.answer_next(302, "", content_type="text/plain")

    with pytest.raises(HopsworksError) as caught:
        hopsworks.get_user(user_id=1)

    assert caught.value.status == 302
    assert len(fake_hopsworks.requests) == 1


def test_bad_arguments_raise_hopsworks_errors_without_sending_anything(fake_hopsworks, hopsworks):
    with pytest.raises(HopsworksError):
        hopsworks.get_user(user_id="abc")
    with pytest.raises(HopsworksError):
        hopsworks.set_user_active(user_id=None, active=True)
    with pytest.raises(HopsworksError):
        hopsworks.find_user(email="not-an-email")
    with pytest.raises(HopsworksError):
        create_alice(hopsworks, max_num_projects=-1)
    with pytest.raises(HopsworksError):
        create_alice(hopsworks, subject="")
    with pytest.raises(HopsworksError):
        hopsworks.ensure_oauth_user(
            email=None,
            given_name="X",
            surname="Y",
            subject=SUBJECT,
            client_id=OAUTH_CLIENT_ID,
            max_num_projects=0,
        )

    assert fake_hopsworks.requests == []


def test_a_malformed_list_answer_is_a_hopsworks_error(fake_hopsworks, hopsworks):
    fake_hopsworks.answer_next(200, {"items": [{"id": "seven", "email": "x@example.com"}]})

    with pytest.raises(HopsworksError, match="unexpected answer"):
        hopsworks.find_user(email="x@example.com")


# TLS and configuration


def test_tls_verification_is_on_without_the_cluster_ca(fake_hopsworks, make_client, sleeps):
    client = make_client(ca_bundle_pem=None)

    with pytest.raises(HopsworksError) as caught:
        client.check_connection()

    assert "TLS verification failed" in str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert not caught.value.retriable
    assert fake_hopsworks.requests == []
    assert sleeps == []


def test_the_cluster_ca_file_lives_as_long_as_the_client(test_ca, fake_hopsworks):
    client = HopsworksClient(
        api_url=fake_hopsworks.api_url,
        api_key=fake_hopsworks.api_key,
        ca_bundle_pem=test_ca.ca_path.read_text(),
    )
    bundle = client._verify
    assert os.path.exists(bundle)

    client.close()

    assert not os.path.exists(bundle)


def test_an_invalid_ca_bundle_is_refused_when_the_client_is_made(fake_hopsworks):
    with pytest.raises(ValueError, match="CA bundle"):
        HopsworksClient(
            api_url=fake_hopsworks.api_url,
            api_key="some-admin-key",
            ca_bundle_pem="not a certificate",
        )


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://x", True),
        ("https://hopsworks.example.com:8181/", True),
        ("http://localhost:8181", True),
        ("http://127.0.0.1:8181", True),
        ("http://[::1]:8181", True),
        ("http://example.com", False),
        ("http://localhost.example.com", False),
        ("ftp://example.com", False),
        ("https://", False),
        ("example.com", False),
        ("https://admin:secret@example.com", False),
        ("https://example.com/?key=1", False),
        ("https://example.com:port", False),
        ("", False),
    ],
)
def test_validating_api_urls_requires_https_except_for_localhost(url, accepted):
    assert (validate_api_url(url) is None) is accepted


def test_a_client_refuses_a_key_too_short_to_be_real(fake_hopsworks):
    with pytest.raises(ValueError, match="too short"):
        HopsworksClient(api_url=fake_hopsworks.api_url, api_key="k")


def test_a_client_refuses_plain_http_to_a_remote_cluster():
    with pytest.raises(ValueError, match="https"):
        HopsworksClient(api_url="http://example.com", api_key="some-admin-key")


def test_an_api_url_pasted_with_the_api_path_is_not_doubled(fake_hopsworks, make_client):
    client = make_client(api_url=f"{fake_hopsworks.api_url}/hopsworks-api/api/")

    client.check_connection()

    assert client.api_url == fake_hopsworks.api_url
    assert all(r.path.startswith("/admin/") for r in fake_hopsworks.requests)
    assert urlsplit(client.api_url).path == ""


# Deadlines and size


def drip_cluster(slow, test_ca):
    return HopsworksCluster(
        name="slow",
        api_url=slow.url,
        api_key="an-admin-key-0123",
        ca_bundle=test_ca.ca_path.read_text(),
    )


@pytest.mark.django_db
def test_a_slow_drip_cluster_is_cut_off_at_the_deadline_with_one_attempt(test_ca, settings):
    settings.OUTBOUND_DEADLINE_SECONDS = 1.0
    answer = http_response(200, b'{"count": 0}' + b" " * 400)
    with DripServer(answer, interval=0.05, tls=test_ca) as slow:
        started = time.monotonic()
        with (
            pytest.raises(HopsworksError) as caught,
            drip_cluster(slow, test_ca).hopsworks_client(quick=True) as client,
        ):
            client.check_connection()
        elapsed = time.monotonic() - started

    assert "no complete answer within 1s (the deadline for one call)" in str(caught.value)
    assert "tried once" in str(caught.value)
    assert caught.value.retriable
    assert elapsed < 1.0 + 1.0
    assert slow.connections == 1


@pytest.mark.django_db
def test_in_the_background_retries_stay_within_the_one_deadline(test_ca, settings):
    settings.OUTBOUND_BACKGROUND_DEADLINE_SECONDS = 1.5
    answer = http_response(200, b'{"count": 0}' + b" " * 400)
    with DripServer(answer, interval=0.05, tls=test_ca) as slow, outbound.background_work():
        started = time.monotonic()
        with (
            pytest.raises(HopsworksError) as caught,
            drip_cluster(slow, test_ca).hopsworks_client() as client,
        ):
            client.check_connection()
        elapsed = time.monotonic() - started

    assert "deadline" in str(caught.value)
    assert elapsed < 1.5 + 1.0


def test_an_answer_larger_than_the_limit_is_refused(test_ca):
    huge = http_response(200, b'{"count": 1, "items": ["' + b"x" * 300_000 + b'"]}')
    with DripServer(huge, interval=0, chunk=65536, tls=test_ca) as big:
        client = HopsworksClient(
            api_url=big.url,
            api_key="an-admin-key-0123",
            ca_bundle_pem=test_ca.ca_path.read_text(),
            max_response_bytes=64 * 1024,
        )
        with pytest.raises(HopsworksError) as caught, client:
            client.check_connection()

    assert "larger than 65536 bytes" in str(caught.value)
    assert not caught.value.retriable


def test_a_key_with_a_line_break_is_kept_out_of_the_error_that_quotes_the_header(
    fake_hopsworks, make_client, caplog
):
    # The form refuses such a key now (validate_api_key); one stored before, or in an
    # adopted database, fails in requests with an error quoting the header, key escaped.
    key = "SENTINEL-KEY\r\n-123-abcdefghijkl"
    client = make_client(api_key=key)

    with caplog.at_level(logging.DEBUG), pytest.raises(HopsworksError) as caught:
        client.check_connection()

    for text in (str(caught.value), caplog.text):
        assert "SENTINEL" not in text and "-123-abcdefghijkl" not in text
    assert not fake_hopsworks.requests


@pytest.mark.parametrize("key", ["a-key\r\nwith-a-line-break", "a-key with-a-space-inside"])
def test_a_key_that_cannot_go_in_a_header_is_refused_when_given(key):
    from clusters.hopsworks import validate_api_key

    assert "one unbroken line" in validate_api_key(key)


def test_a_listing_of_many_slow_pages_ends_within_a_few_calls_deadlines(
    fake_hopsworks, make_client
):
    # Each page answers within its own call's deadline, but 12 of them would not end: the
    # whole listing gets LISTING_CALLS deadlines (a job's listing: 5 x 60 s, not 10,000 x).
    from clusters.hopsworks import LISTING_CALLS

    for n in range(12):
        fake_hopsworks.add_project(f"p{n}", "alice@example.com")
    fake_hopsworks.slow_next(12, seconds=0.4)
    client = make_client(deadline=0.5, page_size=1)

    started = time.monotonic()
    with pytest.raises(HopsworksError, match=r"did not finish within 2\.5 s"):
        client.list_projects()
    elapsed = time.monotonic() - started

    assert LISTING_CALLS * 0.5 <= elapsed < LISTING_CALLS * 0.5 + 1.0
    assert 4 <= len(fake_hopsworks.requests) < 12
