"""Drop indexes that no query uses and that every usage batch kept up to date (issue 16):

* the ledger's own `user_id` index and its `_like` copy: `credit_ledger_user_newest` and
  `credit_ledger_user_created` lead with `user_id` and serve every lookup by user (and the
  foreign key's checks when a user is deleted);
* the ledger's `reference` `_like` copy (`text_pattern_ops`): references are only ever
  looked up exactly (the admin's search is `=`, `credits_apply` uses `= ANY`), which the
  unique constraint's index serves;
* the Stripe due marks' own `user_id` index and its `_like` copy: the `(user_id, month)`
  unique index leads with it.

None of these tables is in the seed schema (docs/schema.md). Reversed, the indexes come back.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


DROPPED = [
    (name, f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})")
    for name, table, columns in (
        ("billing_credit_ledger_user_id_cb97c92e", "billing_credit_ledger", "user_id"),
        (
            "billing_credit_ledger_user_id_cb97c92e_like",
            "billing_credit_ledger",
            "user_id text_pattern_ops",
        ),
        (
            "billing_credit_ledger_reference_0cc950ac_like",
            "billing_credit_ledger",
            "reference text_pattern_ops",
        ),
        ("billing_stripe_report_due_user_id_0e6c2f31", "billing_stripe_report_due", "user_id"),
        (
            "billing_stripe_report_due_user_id_0e6c2f31_like",
            "billing_stripe_report_due",
            "user_id text_pattern_ops",
        ),
    )
]


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0040_stripe_report_hot_updates"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    # The state changes as AlterField says; in the database only the indexes go (Django's
    # AlterField would also drop and re-add the foreign keys, re-checking every ledger row).
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="creditledgerentry",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="credit_entries",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="stripereportdue",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(sql=f"DROP INDEX IF EXISTS {name}", reverse_sql=create)
                for name, create in DROPPED
            ],
        ),
    ]
