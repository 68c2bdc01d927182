"""Each user-month with a pending Stripe meter event gets a due mark (StripeReportDue): the
reporting run now finds pending months there, not through an index on the report rows
(removed by 0045). Reversed, nothing is removed: a due mark too many only makes the next
run look at the month, which then has nothing to send."""

from django.db import migrations

FORWARD = """
INSERT INTO billing_stripe_report_due (user_id, month, version)
SELECT DISTINCT user_id, month, 1 FROM billing_stripe_usage_report
WHERE pending_identifier <> ''
ON CONFLICT (user_id, month) DO NOTHING
"""


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0038_ledger_user_newest_index"),
    ]

    operations = [migrations.RunSQL(sql=FORWARD, reverse_sql=migrations.RunSQL.noop)]
