"""Backfill from current state: today's reading of each cluster's fill, so the chart starts
today. Earlier days are not invented (no history of assignments exists before this)."""

import datetime as dt

from django.db import migrations
from django.db.models import Count
from django.utils import timezone


def record_today(apps, schema_editor):
    Cluster = apps.get_model("clusters", "HopsworksCluster")
    Reading = apps.get_model("clusters", "ClusterFillDaily")
    now = timezone.now()
    Reading.objects.bulk_create(
        [
            Reading(
                cluster_id=cluster.pk,
                date=now.astimezone(dt.UTC).date(),
                users=cluster.assigned,
                max_users=cluster.max_users,
                recorded_at=now,
            )
            for cluster in Cluster.objects.annotate(assigned=Count("assignments"))
        ],
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [("clusters", "0005_cluster_fill_daily")]

    operations = [migrations.RunPython(record_today, migrations.RunPython.noop)]
