"""Room on each page of the small tables every usage batch rewrites, so that PostgreSQL
updates their rows in place (HOT: no new index entries) instead of adding an entry to each
of their indexes per update.

* `billing_stripe_report_due`: each batch bumps `version` of every user-month it changes
  (one row per Stripe user and month, four indexes, none on `version`);
* `user_credits`: each batch rewrites the balances of its prepaid users (none of the
  columns written is indexed).

`usage_monthly` got the same in migration 0030. The setting applies to pages written from
now on; a table filled before keeps its packed pages until it is rewritten (VACUUM FULL),
which these tables, one row per user (and month), do not need.
"""

from django.db import migrations

TABLES = ("billing_stripe_report_due", "user_credits")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0034_filtered_list_indexes"),
    ]

    operations = [
        migrations.RunSQL(
            sql=f"ALTER TABLE {table} SET (fillfactor = 70)",
            reverse_sql=f"ALTER TABLE {table} RESET (fillfactor)",
        )
        for table in TABLES
    ]
