# pg_trgm (a trusted extension since PostgreSQL 13: the database owner may create it)
# for the trigram indexes that serve partial search on users' emails and names.

from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_user_export_permission"),
    ]

    operations = [TrigramExtension()]
