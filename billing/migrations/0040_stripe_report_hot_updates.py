"""The Stripe usage report rows are written twice per meter event (decided, then accepted by
Stripe), thousands in each statement. The partial index on the pending ones made every such
write a new row version with an entry in each of the table's indexes (the indexed
`pending_identifier` changes both times). Without it (pending months are found through their
due marks, 0044) no indexed column changes, and with room on each page PostgreSQL updates
the rows in place (HOT). The fill factor applies to pages written from now on; rows written
before keep their packed pages until the table is rewritten (VACUUM FULL)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0039_stripe_pending_months_due"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="stripeusagereport",
            name="stripe_usage_report_pending",
        ),
        migrations.RunSQL(
            sql="ALTER TABLE billing_stripe_usage_report SET (fillfactor = 50)",
            reverse_sql="ALTER TABLE billing_stripe_usage_report RESET (fillfactor)",
        ),
    ]
