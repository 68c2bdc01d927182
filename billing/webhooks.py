"""Stripe's webhook endpoint. Thin: verify, store, process (billing.stripe_events)."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import stripe_gateway as gateway
from billing.models import StripeEvent
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
    if event.status == StripeEvent.Status.FAILED:
        # Not 2xx, so Stripe delivers it again; retry_stripe_events retries it too.
        return JsonResponse({"id": event.id, "status": event.status}, status=503)
    # Processed, ignored, or unmatched (kept for an operator: a redelivery cannot help).
    return JsonResponse({"id": event.id, "status": event.status})
