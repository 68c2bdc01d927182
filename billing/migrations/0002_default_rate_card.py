"""The default rate card (effective from 2020-01-01): $0.10 per CPU hour, $0.50 per GPU
hour, $0.15 per storage GB-month, $0.01 per 1,000 API calls."""

import datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime.date(2020, 1, 1)
DEFAULTS = {
    "cpu_hour": Decimal("0.10"),
    "gpu_hour": Decimal("0.50"),
    "storage_gb_month": Decimal("0.15"),
    "api_calls_1k": Decimal("0.01"),
}


def add_default_card(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    for resource, unit_price in DEFAULTS.items():
        Price.objects.get_or_create(
            resource=resource,
            effective_from=EFFECTIVE_FROM,
            user=None,
            defaults={"unit_price": unit_price, "note": "Default rate card"},
        )


def remove_default_card(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    Price.objects.filter(user=None, effective_from=EFFECTIVE_FROM).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_usage_credits_pricing")]

    operations = [migrations.RunPython(add_default_card, remove_default_card)]
