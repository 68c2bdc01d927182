"""The API's JSON parser: any body is a 200-something or a 400 in the one error format,
never a 500 (nesting, NUL characters, numbers PostgreSQL cannot store)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import UsageDaily
from tests import strategies

pytestmark = pytest.mark.django_db

DAY = "2026-11-02"


def post_raw(client, key, body: str | bytes):
    return client.post(
        "/api/v1/usage", body, content_type="application/json", HTTP_AUTHORIZATION=key
    )


def assert_bad_request(response, words: str):
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["status"] == 400
    assert words in error["message"]


def test_deeply_nested_json_is_a_400_not_a_recursion_error(client, make_key):
    body = '{"records": ' + "[" * 100_000 + "]" * 100_000 + "}"

    assert_bad_request(post_raw(client, make_key("usage:write"), body), "nested too deeply")


@pytest.mark.parametrize(
    "body",
    [
        '{"records": [{"user": "a\\u0000b", "date": "2026-11-02", "api_calls": 1}]}',
        '{"records": [], "\\u0000": 1}',
        '{"records": [{"user": "x", "date": "2026-11-02", "note\\u0000": 1}]}',
    ],
)
def test_a_nul_character_anywhere_in_the_body_is_a_400(client, make_key, body):
    assert_bad_request(post_raw(client, make_key("usage:write"), body), "NUL")
    assert not UsageDaily.objects.exists()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_that_are_not_numbers_are_a_400(client, make_key, constant):
    body = '{"records": [{"user": "x", "date": "2026-11-02", "cpu_hours": ' + constant + "}]}"

    assert_bad_request(post_raw(client, make_key("usage:write"), body), "not valid JSON")


json_values = strategies.json_values(max_leaves=20)
record = st.fixed_dictionaries(
    {},
    optional={
        "user": st.text(max_size=20) | json_values,
        "cluster": st.text(max_size=20) | json_values,
        "date": st.sampled_from([DAY, "2026-02-30", "", "x"]) | st.text(max_size=12),
        "cpu_hours": st.decimals(allow_nan=False).map(str) | json_values,
        "gpu_hours": json_values,
        "storage_gb_months": json_values,
        "api_calls": st.integers() | json_values,
    },
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.one_of(st.binary(max_size=200), json_values.map(json.dumps)))
def test_no_body_is_a_server_error(client, make_key, body):
    response = post_raw(client, make_key("usage:write"), body)

    assert response.status_code < 500


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(records=st.lists(record, max_size=3))
def test_no_usage_batch_is_a_server_error(client, make_key, records):
    response = post_raw(client, make_key("usage:write"), json.dumps({"records": records}))

    assert response.status_code < 500
