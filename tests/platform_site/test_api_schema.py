"""Schemathesis over every endpoint of our OpenAPI schema, in process against the WSGI app,
with a key that has every scope: no 5xx, and every response conforms to the schema."""

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from platform_site.wsgi import application
from tests.factories import ClusterFactory, UserFactory

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def keep_test_connection():
    """Django closes the database connection when a request finishes; its test client
    turns that off for the test's transaction, and so must we when calling WSGI directly."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def api_key(make_key, keep_test_connection):
    # Something to find: a cluster and a user, so lookups and writes are not all misses.
    ClusterFactory(name="east")
    UserFactory(id="auth0|known", email="known@example.com")
    return make_key()


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_every_endpoint_answers_within_its_schema(case, api_key):
    case.call_and_validate(headers={"Authorization": api_key}, checks=CHECKS)
