from django.db import migrations, models

TRIGRAM = [("users_email_trgm_search", "email"), ("users_name_trgm_search", "name")]


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_trigram_extension"),
    ]

    operations = [
        *(
            migrations.RunSQL(
                f'CREATE INDEX "{name}" ON "users" USING gin ((UPPER("{column}")) gin_trgm_ops)',
                f'DROP INDEX "{name}"',
            )
            for name, column in TRIGRAM
        ),
        migrations.AddIndex(
            model_name="user",
            index=models.Index(fields=["stripe_customer_id"], name="users_stripe_customer_search"),
        ),
        migrations.AddIndex(
            model_name="user",
            index=models.Index(fields=["hopsworks_username"], name="users_hopsworks_name_search"),
        ),
    ]
