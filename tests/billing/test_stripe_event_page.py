"""A Stripe event's admin page: its payload pretty-printed (and escaped), a link to the event
in Stripe's dashboard, and "process again" as a button for operators allowed to."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import StripeEvent
from tests.fakes.stripe import make_event

pytestmark = pytest.mark.django_db


def stored(event_id="evt_page", *, livemode=False, status="failed"):
    event = make_event(
        "customer.updated", {"id": "cus_x", "object": "customer", "name": "<b>Ada</b>"}
    )
    return StripeEvent.objects.create(
        id=event_id,
        type=event["type"],
        created=timezone.now(),
        livemode=livemode,
        payload={**event, "id": event_id},
        status=status,
        error="boom",
    )


def page_of(client, event):
    return client.get(reverse("admin:billing_stripeevent_change", args=[event.pk]))


def test_the_payload_is_indented_json_with_its_markup_escaped(operator_client):
    event = stored()

    body = page_of(operator_client, event).content.decode()

    assert '<pre class="stripe-payload">' in body
    assert "\n  &quot;id&quot;: &quot;evt_page&quot;," in body
    assert "&lt;b&gt;Ada&lt;/b&gt;" in body
    assert "<b>Ada</b>" not in body


@pytest.mark.parametrize(
    ("livemode", "url"),
    [
        (False, "https://dashboard.stripe.com/test/events/evt_page"),
        (True, "https://dashboard.stripe.com/events/evt_page"),
    ],
)
def test_the_page_links_to_the_event_in_stripes_dashboard(operator_client, livemode, url):
    body = page_of(operator_client, stored(livemode=livemode)).content.decode()

    assert f'href="{url}"' in body


def test_process_again_is_a_button_that_queues_the_event_and_says_so(persona_client):
    client = persona_client("finance_staff")
    event = stored()
    url = reverse("admin:billing_stripeevent_change", args=[event.pk])

    assert 'value="process_again"' in client.get(url).content.decode()
    response = client.post(url, {"action": "process_again", "_object_action": "1"}, follow=True)

    assert response.redirect_chain[-1][0] == url
    texts = [str(m) for m in response.context["messages"]]
    assert "evt_page: customer.updated queued for processing" in texts
    assert any(t.startswith("1 event queued") for t in texts)


def test_without_the_permission_there_is_no_button_and_posting_is_refused(persona_client):
    client = persona_client("view_only_staff")
    event = stored()
    url = reverse("admin:billing_stripeevent_change", args=[event.pk])

    assert 'value="process_again"' not in client.get(url).content.decode()
    assert client.post(url, {"action": "process_again", "_object_action": "1"}).status_code == 403
    assert StripeEvent.objects.get(pk=event.pk).status == "failed"
