"""Clusters that existed before the connection test was recorded were in use: they count as
tested (from when they were created), so making one active again is not refused."""

from django.db import migrations
from django.db.models import F


def mark_tested(apps, schema_editor):
    Cluster = apps.get_model("clusters", "HopsworksCluster")
    Cluster.objects.filter(connection_ok_at__isnull=True).update(connection_ok_at=F("created_at"))


class Migration(migrations.Migration):
    dependencies = [("clusters", "0003_cluster_connection_test_and_unique_url")]

    operations = [migrations.RunPython(mark_tested, migrations.RunPython.noop)]
