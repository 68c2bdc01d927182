"""Every user-month with Stripe-billed usage is due once: the first incremental run decides
each of them as the full runs did (a month already reported sends nothing)."""

from django.db import migrations


def mark_due(apps, schema_editor):
    schema_editor.execute(
        """
        INSERT INTO billing_stripe_report_due (user_id, month, version)
        SELECT DISTINCT user_id, date_trunc('month', date)::date, 1
        FROM usage_daily
        WHERE billed_via = 'stripe'
        ON CONFLICT DO NOTHING
        """
    )


def unmark(apps, schema_editor):
    schema_editor.execute("DELETE FROM billing_stripe_report_due")


class Migration(migrations.Migration):
    dependencies = [("billing", "0024_stripe_report_due")]

    operations = [migrations.RunPython(mark_due, unmark)]
