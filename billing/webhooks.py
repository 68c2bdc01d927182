"""Webhook endpoints. Thin: authenticate, parse, hand over. Stripe's: verify, store and
queue (billing.stripe_events); a worker processes the event. Auth0's log stream: user
deletions close accounts (billing.auth0_log_stream)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import stripe_gateway as gateway
from billing.auth0_log_stream import BadLogStreamPayload, log_entries_parse, log_entries_store
from billing.stripe_events import stripe_event_receive


@csrf_exempt  # Stripe signs the body instead (Stripe-Signature)
@require_POST
def stripe_webhook(request):
    try:
        event = stripe_event_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
    except gateway.WebhookSignatureError as error:
        return JsonResponse({"error": f"Signature check failed: {error}"}, status=400)
    except (KeyError, TypeError, ValueError) as error:
        return JsonResponse({"error": f"Not a Stripe event: {error}"}, status=400)
    # Stored and queued (or already done): 2xx, so Stripe does not deliver it again; the
    # job retries a failed processing, and unmatched events wait for an operator.
    return JsonResponse({"id": event.id, "status": event.status})


@csrf_exempt  # authenticated by the token Auth0 sends (Authorization)
@require_POST
def auth0_log_stream(request):
    """Auth0's log stream (Custom Webhook, JSON Array): user deletions close accounts."""
    token = settings.AUTH0_LOG_STREAM_TOKEN
    if not token:
        raise Http404("The Auth0 log stream is not configured (AUTH0_LOG_STREAM_TOKEN).")
    sent = request.headers.get("Authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        return JsonResponse({"error": "Missing or wrong Authorization token."}, status=401)
    limit = settings.AUTH0_LOG_STREAM_MAX_BYTES
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        length = limit + 1
    if length > limit:
        return JsonResponse({"error": f"The body is larger than {limit} bytes."}, status=413)
    try:
        entries = log_entries_parse(request.body)
    except BadLogStreamPayload as error:
        return JsonResponse({"error": str(error)}, status=400)
    # Stored and queued: the accounts are closed by a job (billing.apply_auth0_log_events),
    # so a large delivery is answered at once.
    outcome = log_entries_store(entries)
    return JsonResponse(
        {"queued": outcome.queued, "duplicates": outcome.duplicates, "ignored": outcome.ignored}
    )
