"""Shared personas and fakes for the whole suite."""

from __future__ import annotations

import pytest

from tests.factories import AdminFactory, StaffFactory, UserFactory
from tests.fakes.auth0 import CLIENT_ID, CLIENT_SECRET, FakeAuth0
from tests.fakes.server import local_server
from tests.fakes.tls import make_test_ca
from tests.personas import PERSONAS, VIEW_EVERYTHING


@pytest.fixture(autouse=True)
def no_billing_gate_unless_asked(settings):
    """Placement tests are about capacity; the billing gate has tests of its own, which
    turn it back on with settings.PLACEMENT_REQUIRES_BILLING = True."""
    settings.PLACEMENT_REQUIRES_BILLING = False


JOB_TABLES = "procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers"


@pytest.fixture(autouse=True)
def empty_job_queue_around_transactional_tests(request, django_db_blocker):
    """Django's flush leaves Procrastinate's tables alone (they are not our models): a job
    committed by one transactional test must not be run by the next test."""
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(
        marker and marker.kwargs.get("transaction")
    )

    def empty():
        from django.db import connection

        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {JOB_TABLES}, procrastinate_workers CASCADE")

    if transactional:
        empty()
    yield
    if transactional:
        empty()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def operator(db):
    return AdminFactory()


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator, backend="django.contrib.auth.backends.ModelBackend")
    return client


# The operators the permission tests ask about, by what they were granted. "view_only"
# holds every view permission there is; "superuser" holds everything without grants.
@pytest.fixture
def persona(db):
    """persona("support_staff") -> a new operator with that persona's permissions."""
    from django.contrib.auth.models import Permission

    def make(name: str):
        granted = PERSONAS[name]
        if granted is None:
            return AdminFactory()
        if granted == VIEW_EVERYTHING:
            granted = [
                f"{p.content_type.app_label}.{p.codename}"
                for p in Permission.objects.filter(codename__startswith="view_").select_related(
                    "content_type"
                )
            ]
        return StaffFactory(permissions=list(granted))

    return make


@pytest.fixture
def persona_client(client, persona):
    """persona_client("view_only_staff") -> the test client, logged in as that persona."""

    def login(name: str):
        client.force_login(persona(name), backend="django.contrib.auth.backends.ModelBackend")
        return client

    return login


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory):
    return make_test_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def auth0_server(test_ca):
    with local_server(test_ca) as server:
        yield server


@pytest.fixture
def fake_auth0(auth0_server, test_ca, settings):
    """An Auth0 tenant on 127.0.0.1 over TLS; our settings point at it, verification on."""
    auth0_server.clear()
    fake = FakeAuth0(server=auth0_server)
    fake.install()
    settings.AUTH0_DOMAIN = settings.SOCIAL_AUTH_AUTH0_DOMAIN = fake.domain
    settings.AUTH0_CLIENT_ID = settings.SOCIAL_AUTH_AUTH0_KEY = CLIENT_ID
    settings.AUTH0_CLIENT_SECRET = settings.SOCIAL_AUTH_AUTH0_SECRET = CLIENT_SECRET
    settings.SOCIAL_AUTH_VERIFY_SSL = str(test_ca.ca_path)
    settings.SOCIAL_AUTH_REDIRECT_IS_HTTPS = False
    return fake


@pytest.fixture(scope="module")
def hopsworks_servers(test_ca):
    """Two local Hopsworks clusters over TLS (two, so moves between clusters are real)."""
    with local_server(test_ca) as east, local_server(test_ca) as west:
        yield east, west


@pytest.fixture
def fake_hopsworks(hopsworks_servers, settings):
    """Fresh fakes on both servers; HOPSWORKS_OAUTH_CLIENT_ID set to what they expect."""
    from tests.fakes.hopsworks import OAUTH_CLIENT_ID, reset

    settings.HOPSWORKS_OAUTH_CLIENT_ID = OAUTH_CLIENT_ID
    fakes = [reset(server) for server in hopsworks_servers]
    yield fakes
    for fake in fakes:
        fake.release()


@pytest.fixture
def cluster_on(test_ca):
    """Make a cluster row that points at a fake Hopsworks, trusting the test CA."""
    from tests.factories import ClusterFactory

    def make(fake, **fields):
        fields.setdefault("api_url", fake.api_url)
        fields.setdefault("api_key", fake.api_key)
        fields.setdefault("ca_bundle", test_ca.ca_path.read_text())
        return ClusterFactory(**fields)

    return make


@pytest.fixture(scope="module")
def kubernetes_servers(test_ca):
    """Local Kubernetes API servers over TLS serving OpenCost through the service proxy."""
    with local_server(test_ca) as first, local_server(test_ca) as second:
        yield first, second


@pytest.fixture
def fake_kubernetes(kubernetes_servers):
    from tests.fakes.kubernetes import FakeKubernetes

    fakes = [FakeKubernetes.on(server) for server in kubernetes_servers]
    yield fakes
    for fake in fakes:
        fake.release()


@pytest.fixture
def default_rate_card(transactional_db):
    """Transactional tests start from an emptied database: put the migration's rate card back."""
    from importlib import import_module

    from django.apps import apps

    import_module("billing.migrations.0002_default_rate_card").add_default_card(apps, None)


@pytest.fixture(scope="module")
def stripe_server():
    with local_server() as server:
        yield server


@pytest.fixture
def fake_stripe(stripe_server, settings):
    """A fresh Stripe account on 127.0.0.1; our settings point at it."""
    from tests.fakes.stripe import WEBHOOK_SECRET, reset

    fake = reset(stripe_server)
    settings.STRIPE_SECRET_KEY = fake.api_key
    settings.STRIPE_API_BASE = fake.api_base
    settings.STRIPE_METER_EVENTS_API_BASE = fake.api_base  # meter-events.stripe.com's part
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return fake


@pytest.fixture
def deliver(client):
    """Deliver a webhook event to /webhooks/stripe/, signed the way Stripe signs; then run
    the jobs it queued, as a worker would (`process=False` leaves them queued)."""
    import json

    from tests.fakes.stripe import WEBHOOK_SECRET, sign_payload

    def send(
        event: dict,
        *,
        secret: str = WEBHOOK_SECRET,
        timestamp: int | None = None,
        signature: str | None = None,
        process: bool = True,
    ):
        from tests.jobs import run_queued_jobs

        payload = json.dumps(event).encode()
        header = signature if signature is not None else sign_payload(payload, secret, timestamp)
        response = client.post(
            "/webhooks/stripe/",
            payload,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        )
        if process:
            run_queued_jobs()
        return response

    return send


ALL_SCOPES = ["users:read", "clusters:read", "usage:read", "usage:write", "assignments:write"]


@pytest.fixture
def make_key(db):
    """An API key with the given scopes; returns the header value to send."""
    from accounts.api_keys import api_key_create

    def make(*scopes, **fields):
        api_key, key = api_key_create(
            name=fields.pop("name", "test script"),
            scopes=list(scopes or ALL_SCOPES),
            actor="test",
            expires_at=fields.pop("expires_at", None),
        )
        for field, value in fields.items():
            setattr(api_key, field, value)
        if fields:
            api_key.save()
        return f"Api-Key {key}"

    return make
