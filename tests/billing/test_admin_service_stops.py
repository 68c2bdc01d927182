"""The admin's Service stops list: filtered by state, in constant queries, with lifting."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import ServiceStop
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
STOPS = "/admin/billing/servicestop/"


def stop(**fields):
    now = timezone.now()
    fields.setdefault("user", UserFactory())
    fields.setdefault("reason", "balance_below_floor")
    return ServiceStop.objects.create(
        detected_at=now, enforce_at=now + dt.timedelta(hours=24), **fields
    )


def shown(client, params=None):
    return {s.pk for s in client.get(STOPS, params or {}).context["cl"].result_list}


def test_the_list_filters_pending_enforced_and_resolved_stops(operator_client):
    now = timezone.now()
    pending = stop()
    enforced = stop(stopped_at=now)
    resolved = stop(stopped_at=now, resolved_at=now, resolution="eligible")

    assert shown(operator_client, {"state": "pending"}) == {pending.pk}
    assert shown(operator_client, {"state": "enforced"}) == {enforced.pk}
    assert shown(operator_client, {"state": "open"}) == {pending.pk, enforced.pk}
    assert shown(operator_client, {"state": "resolved"}) == {resolved.pk}


def test_the_list_makes_as_many_queries_for_many_stops_as_for_few(operator_client):
    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert operator_client.get(STOPS).status_code == 200
        return len(captured)

    stop()
    few = queries()
    for _ in range(10):
        stop()
    assert queries() == few


def test_lifting_needs_a_reason_and_reports_what_was_not_lifted(operator_client):
    now = timezone.now()
    open_one = stop(stopped_at=now)
    done = stop(resolved_at=now, resolution="eligible")
    data = {"action": "lift_stops", "_selected_action": [open_one.pk, done.pk], "confirmed": "yes"}

    page = operator_client.post(STOPS, {**data, "reason": "", "hours": "24"})
    assert page.status_code == 200 and "This field is required" in page.content.decode()
    assert ServiceStop.objects.get(pk=open_one.pk).resolved_at is None

    response = operator_client.post(
        STOPS, {**data, "reason": "wire transfer", "hours": "48"}, follow=True
    )
    text = [str(m) for m in response.context["messages"]]
    assert any("already resolved" in m for m in text)
    assert "1 stop(s) lifted." in text
    lifted = ServiceStop.objects.get(pk=open_one.pk)
    assert (lifted.resolution, lifted.resolution_note) == ("lifted", "wire transfer")
    assert lifted.lifted_until - lifted.resolved_at == dt.timedelta(hours=48)
