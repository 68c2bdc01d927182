"""What we sell through Stripe: one meter, product and price per resource."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from billing import stripe_gateway as gateway
from billing.models import Price, StripeCatalogEntry

CATALOG_PREFIX = "hopsworks_platform"


def catalog_items() -> list[gateway.CatalogItem]:
    """One meter, product and metered price per rate-card resource. The meter counts
    cents of usage cost (we price each day with the rate card, negotiated prices
    included), and the price is one cent per unit: Stripe's invoice then equals our
    total to the cent, whatever the user's prices and whenever they change."""
    return [
        gateway.CatalogItem(
            resource=resource,
            display_name=f"{label} usage",
            event_name=f"{CATALOG_PREFIX}_{resource}_cents",
            product_id=f"{CATALOG_PREFIX}_{resource}",
            lookup_key=f"{CATALOG_PREFIX}_{resource}_cents",
            unit_amount=1,
            currency=settings.STRIPE_CURRENCY,
        )
        for resource, label in Price.Resource.choices
    ]


def catalog_setup() -> list[StripeCatalogEntry]:
    """Make Stripe's meters, products and prices match the rate card's resources, and
    record their ids."""
    entries = gateway.ensure_billing_catalog(catalog_items())
    saved = []
    with transaction.atomic():
        for entry in entries:
            row, _ = StripeCatalogEntry.objects.update_or_create(
                resource=entry.resource,
                defaults={
                    "event_name": entry.event_name,
                    "meter_id": entry.meter_id,
                    "product_id": entry.product_id,
                    "price_id": entry.price_id,
                },
            )
            saved.append(row)
    return saved
