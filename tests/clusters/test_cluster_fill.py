"""The daily readings of each cluster's fill (the dashboard's fill-over-time chart)."""

import datetime as dt

import pytest
from django.utils import timezone
from procrastinate.contrib.django import app

from clusters import services
from clusters.models import ClusterFillDaily
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_the_hourly_job_records_each_clusters_users_as_todays_reading():
    east, west = ClusterFactory(name="east", max_users=7), ClusterFactory(name="west")
    for user in UserFactory.create_batch(2):
        services.assignment_create(user=user, cluster=east, actor=None)

    result = app.tasks["clusters.record_cluster_fill"].func(timestamp=0)
    assert result == "2 assigned user(s) recorded"

    today = timezone.now().date()
    readings = {
        r.cluster_id: (r.date, r.users, r.max_users) for r in ClusterFillDaily.objects.all()
    }
    assert readings == {east.pk: (today, 2, 7), west.pk: (today, 0, west.max_users)}


def test_the_fill_job_is_scheduled_hourly():
    periodic = {p.task.name: p.cron for p in app.periodic_registry.periodic_tasks.values()}
    assert periodic["clusters.record_cluster_fill"] == "55 * * * *"


def test_a_past_days_reading_is_kept_when_today_is_recorded():
    east = ClusterFactory(name="east")
    yesterday = timezone.now() - dt.timedelta(days=1)
    services.cluster_fill_record(now=yesterday)
    services.assignment_create(user=UserFactory(), cluster=east, actor=None)
    services.cluster_fill_record()

    assert sorted(ClusterFillDaily.objects.values_list("date", "users")) == [
        (yesterday.date(), 0),
        (timezone.now().date(), 1),
    ]
