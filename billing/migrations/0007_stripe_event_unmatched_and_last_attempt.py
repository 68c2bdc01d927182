# Events about customers we do not know become "unmatched" (answered 200, not retried);
# retries take the event whose last attempt is oldest first. Schema only, reversible.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_rename_billing_account_to_billing_profile"),
    ]

    operations = [
        migrations.AddField(
            model_name="stripeevent",
            name="last_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="stripeevent",
            name="status",
            field=models.TextField(
                choices=[
                    ("received", "Received"),
                    ("processed", "Processed"),
                    ("ignored", "Ignored (type not handled)"),
                    ("unmatched", "Unmatched (no user of ours)"),
                    ("failed", "Failed"),
                ],
                default="received",
            ),
        ),
    ]
