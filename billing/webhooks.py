"""Stripe's webhook endpoint. Thin: verify, store and queue (billing.stripe_events); a
worker processes the event."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import stripe_gateway as gateway
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
