"""Invoices already paid, failed or void were finalized: note it, so their months count as
closed for meter events (see billing.stripe_reporting)."""

from django.db import migrations
from django.db.models import F
from django.db.models.functions import Coalesce


def backfill(apps, schema_editor):
    BillingHistory = apps.get_model("billing", "BillingHistory")
    BillingHistory.objects.filter(
        finalized_at__isnull=True, status__in=["paid", "failed", "void"]
    ).update(finalized_at=Coalesce(F("stripe_event_created"), F("updated_at")))


class Migration(migrations.Migration):
    dependencies = [("billing", "0013_closed_periods")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
