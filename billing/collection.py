"""Daily usage collection: OpenCost figures per namespace, turned into usage per user.

For one cluster and one UTC day: OpenCost (through the Kubernetes API's service proxy,
with the cluster's kubeconfig) gives CPU core-hours, GPU hours and persistent-volume
byte-hours per namespace; Hopsworks (`GET /admin/projects?expand=creator`) says which
project owns a namespace and who created it; the creator is our user through their
account on that cluster. Rows are written by `usage_upsert` in one transaction with the
run's record, so a rerun or a backfill gives the same result as one clean run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import normalize_email
from billing.models import UsageCollectionRun, UsageDaily
from billing.pricing import quantize, storage_gb_months
from billing.usage import UsageRecord, usage_upsert
from clusters.hopsworks import HopsworksError, HopsworksProject
from clusters.models import HopsworksCluster
from clusters.opencost import (
    MetricsError,
    NamespaceUsage,
    fetch_day_allocations,
    gb_held_from_byte_hours,
    is_system_namespace,
)
from clusters.selectors import user_ids_by_hopsworks_identity
from plumbing import outbound
from plumbing.encryption import SecretDecryptionError

logger = logging.getLogger(__name__)
ZERO = Decimal("0")
COLLECTED_STATUSES = (HopsworksCluster.Status.ACTIVE, HopsworksCluster.Status.MAINTENANCE)


class CollectionError(Exception):
    """A collection that cannot start (bad dates, unknown cluster); nothing is written."""


@dataclass
class Attribution:
    per_user: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    unknown: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def attribute(
    allocations: list[NamespaceUsage],
    projects: list[HopsworksProject],
    *,
    cluster: HopsworksCluster,
    day: dt.date,
) -> Attribution:
    """Sum each namespace's usage onto the user who created its project."""
    by_username, by_email = user_ids_by_hopsworks_identity(cluster)
    owner_of = {}
    for project in projects:
        owner = by_username.get(project.creator_username or "") or by_email.get(
            normalize_email(project.creator_email or "")
        )
        owner_of[project.namespace] = (project, owner)

    result = Attribution()
    sums: dict[str, dict[str, Decimal]] = defaultdict(
        lambda: {"cpu_hours": ZERO, "gpu_hours": ZERO, "pv_byte_hours": ZERO}
    )
    for usage in allocations:
        if is_system_namespace(usage.namespace):
            continue
        result.notes.extend(f"{usage.namespace}: {note}" for note in usage.notes)
        project, owner = owner_of.get(usage.namespace, (None, None))
        if owner is None:
            result.unknown.append(
                {
                    "namespace": usage.namespace,
                    "reason": "no Hopsworks project has this namespace"
                    if project is None
                    else f"project {project.name} was created by "
                    f"{project.creator_email or project.creator_username or 'nobody known'}, "
                    "who is not a user of ours on this cluster",
                    "cpu_core_hours": str(usage.cpu_core_hours),
                    "gpu_hours": str(usage.gpu_hours),
                }
            )
            continue
        sums[owner]["cpu_hours"] += usage.cpu_core_hours
        sums[owner]["gpu_hours"] += usage.gpu_hours
        sums[owner]["pv_byte_hours"] += usage.pv_byte_hours

    for user_id, total in sums.items():
        result.per_user[user_id] = {
            "cpu_hours": quantize(total["cpu_hours"]),
            "gpu_hours": quantize(total["gpu_hours"]),
            "storage_gb_months": storage_gb_months(
                gb_held=gb_held_from_byte_hours(total["pv_byte_hours"]), day=day
            ),
        }
    return result


def _start_run(cluster: HopsworksCluster, day: dt.date) -> UsageCollectionRun:
    run, _ = UsageCollectionRun.objects.get_or_create(cluster=cluster, date=day)
    UsageCollectionRun.objects.filter(pk=run.pk).update(
        status=UsageCollectionRun.Status.RUNNING,
        started_at=timezone.now(),
        finished_at=None,
        error="",
        attempts=run.attempts + 1,
    )
    run.refresh_from_db()
    return run


def _fail_run(run: UsageCollectionRun, error: Exception) -> UsageCollectionRun:
    UsageCollectionRun.objects.filter(pk=run.pk).update(
        status=UsageCollectionRun.Status.FAILED, error=str(error), finished_at=timezone.now()
    )
    logger.warning("usage collection failed for %s on %s: %s", run.cluster, run.date, error)
    run.refresh_from_db()
    return run


def usage_collect_day(*, cluster: HopsworksCluster, day: dt.date, actor="collect_usage"):
    """Collect one cluster's usage for one day. A failure is recorded on the run and
    raised to nobody: one cluster down does not stop the others."""
    run = _start_run(cluster, day)
    try:
        if not cluster.kubeconfig:
            raise MetricsError(f"Cluster {cluster.name} has no kubeconfig to read usage with.")
        allocations = fetch_day_allocations(kubeconfig=cluster.kubeconfig.reveal(), day=day)
        with cluster.hopsworks_client() as hopsworks:
            projects = hopsworks.list_projects()
    except (MetricsError, HopsworksError, SecretDecryptionError, ValueError) as error:
        return _fail_run(run, error)

    result = attribute(allocations, projects, cluster=cluster, day=day)
    with transaction.atomic():
        # One collector per cluster and day at a time: the second waits, then replaces.
        UsageCollectionRun.objects.select_for_update().get(pk=run.pk)
        records = [
            UsageRecord(user_id=user_id, cluster_id=cluster.pk, date=day, **figures)
            for user_id, figures in result.per_user.items()
        ]
        # Users with a row from an earlier run who no longer show up: their figures go to
        # zero (API calls, which OpenCost does not know, are kept).
        stale = (
            UsageDaily.objects.filter(hopsworks_cluster=cluster, date=day)
            .exclude(user_id__in=list(result.per_user))
            .exclude(Q(cpu_hours=0) & Q(gpu_hours=0) & Q(storage_gb_months=0))
            .values_list("user_id", flat=True)
        )
        records += [
            UsageRecord(
                user_id=user_id,
                cluster_id=cluster.pk,
                date=day,
                cpu_hours=ZERO,
                gpu_hours=ZERO,
                storage_gb_months=ZERO,
            )
            for user_id in stale
        ]
        written = usage_upsert(records=records, actor=actor)
        UsageCollectionRun.objects.filter(pk=run.pk).update(
            status=UsageCollectionRun.Status.SUCCEEDED,
            rows_written=written.rows,
            unknown_namespaces=result.unknown,
            notes=result.notes,
            error="",
            finished_at=timezone.now(),
        )
    run.refresh_from_db()
    return run


def clusters_to_collect(name: str | None = None):
    if name is not None:
        cluster = HopsworksCluster.objects.filter(name=name).first()
        if cluster is None:
            names = ", ".join(HopsworksCluster.objects.values_list("name", flat=True))
            raise CollectionError(f"No cluster named {name!r}. Clusters: {names or 'none'}.")
        return [cluster]
    return list(
        HopsworksCluster.objects.filter(status__in=COLLECTED_STATUSES, kubeconfig__isnull=False)
    )


MAX_DAYS = 400


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    today = timezone.now().date()
    if start > end:
        raise CollectionError(f"--from {start} is after --to {end}.")
    if end >= today:
        raise CollectionError(
            f"{end} is not over yet (UTC): collect days up to {today - dt.timedelta(days=1)}."
        )
    count = (end - start).days + 1
    if count > MAX_DAYS:
        raise CollectionError(f"{count} days asked for; at most {MAX_DAYS} at a time.")
    return [start + dt.timedelta(days=offset) for offset in range(count)]


def usage_collect(*, clusters, days, actor="collect_usage") -> list[UsageCollectionRun]:
    """Collect each cluster-day. Inside a web request (an operator's "collect now") all of it
    shares one outbound deadline, and cluster-days not started in time are left to cron."""
    in_request = not outbound.in_background()
    runs = []
    with (
        outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS) if in_request else nullcontext()
    ) as budget:
        for cluster in clusters:
            for day in days:
                if budget is not None and budget.expired:
                    return runs
                runs.append(usage_collect_day(cluster=cluster, day=day, actor=actor))
    return runs
