"""retry_stripe_events: failed events retried oldest attempt first, in a capped batch; events
that failed too often, and unmatched ones, are left to an operator."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import StripeEvent
from billing.stripe_events import stripe_events_retry
from tests.fakes.stripe import make_event

pytestmark = pytest.mark.django_db


def stored(event_id: str, *, status="failed", attempts=1, last_attempt_minutes_ago=None):
    event = make_event("customer.updated", {"id": "cus_x", "object": "customer"})
    now = timezone.now()
    return StripeEvent.objects.create(
        id=event_id,
        type=event["type"],
        created=now - dt.timedelta(days=1),
        payload={**event, "id": event_id},
        status=status,
        attempts=attempts,
        last_attempt_at=None
        if last_attempt_minutes_ago is None
        else now - dt.timedelta(minutes=last_attempt_minutes_ago),
    )


def test_the_batch_takes_the_oldest_attempts_first(settings):
    stored("evt_recent", last_attempt_minutes_ago=1)
    stored("evt_old", last_attempt_minutes_ago=600)
    stored("evt_never", status="received", attempts=0)
    stored("evt_middle", last_attempt_minutes_ago=60)

    done = stripe_events_retry(limit=3)

    assert [event.id for event in done] == ["evt_never", "evt_old", "evt_middle"]
    assert StripeEvent.objects.get(pk="evt_recent").status == "failed"


def test_events_that_failed_too_often_and_unmatched_events_are_not_retried():
    stored("evt_worn_out", attempts=10, last_attempt_minutes_ago=600)
    stored("evt_unmatched", status="unmatched", last_attempt_minutes_ago=600)
    stored("evt_due", attempts=9, last_attempt_minutes_ago=5)

    done = stripe_events_retry(limit=10, max_attempts=10)

    assert [event.id for event in done] == ["evt_due"]
    assert StripeEvent.objects.get(pk="evt_worn_out").status == "failed"
    assert StripeEvent.objects.get(pk="evt_unmatched").status == "unmatched"


def test_a_retry_records_when_it_was_attempted():
    stored("evt_1", last_attempt_minutes_ago=600)

    [event] = stripe_events_retry()

    assert event.attempts == 2
    assert timezone.now() - event.last_attempt_at < dt.timedelta(minutes=1)


def test_a_burst_of_unmatched_events_does_not_crowd_out_a_real_failure():
    for n in range(5):
        stored(f"evt_unmatched_{n}", status="unmatched", attempts=1)
    stored("evt_real", last_attempt_minutes_ago=1)

    assert [event.id for event in stripe_events_retry(limit=2)] == ["evt_real"]


def test_the_command_takes_a_limit_and_names_what_it_gave_up_on(capsys):
    stored("evt_a", last_attempt_minutes_ago=30)
    stored("evt_b", last_attempt_minutes_ago=20)
    stored("evt_worn_out", attempts=10)

    call_command("retry_stripe_events", "--limit", "1")

    out = capsys.readouterr().out
    assert "1 event(s) processed, 0 failed" in out
    assert "1 event(s) failed 10 times or more" in out
    assert StripeEvent.objects.get(pk="evt_a").status == "ignored"
    assert StripeEvent.objects.get(pk="evt_b").status == "failed"


def test_the_command_fails_while_an_event_still_fails(monkeypatch):
    stored("evt_a")
    monkeypatch.setattr(
        "billing.stripe_events._handlers",
        lambda: {"customer.updated": lambda obj, event_created: 1 / 0},
    )

    with pytest.raises(CommandError, match="still fail"):
        call_command("retry_stripe_events")

    event = StripeEvent.objects.get(pk="evt_a")
    assert (event.status, event.attempts) == ("failed", 2)
