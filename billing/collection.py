"""Daily usage collection: OpenCost figures per namespace, turned into usage per user.

For one cluster and one UTC day: OpenCost (through the Kubernetes API's service proxy,
with the cluster's kubeconfig) gives CPU core-hours, GPU hours and persistent-volume
byte-hours per namespace; Hopsworks (`GET /admin/projects?expand=creator`) says which
project owns a namespace and who created it; the creator is our user through their
account on that cluster. Rows are written by `usage_upsert` in one transaction with the
run's record, so a rerun or a backfill gives the same result as one clean run.

A re-collection never destroys what is stored:
- one collection per cluster-day at a time, from before OpenCost is read until the rows
  are committed (a PostgreSQL advisory lock), and figures read from OpenCost earlier than
  the stored ones are never written over them;
- an answer that covers fewer minutes of the day than the stored figures is refused (a
  failed run saying so), unless an operator forces it (`force=True`, `--force-replace`);
- a namespace keeps the owner it was billed to when its day was first collected (the run's
  `attribution`), so a project deleted since does not take its usage away;
- a namespace with an implausible figure is left out and noted, the rest is written; any
  other error fails its own cluster-day's run only.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from accounts.models import User, normalize_email
from billing.alerts import cap_alerts_evaluate
from billing.models import AccountClosure, UsageCollectionRun, UsageDaily
from billing.pricing import days_in_month, quantize, storage_gb_months
from billing.usage import (
    MAX_BATCH,
    MAX_QUANTITY,
    UsageRecord,
    UsageValidationError,
    usage_upsert,
)
from clusters.hopsworks import HopsworksError, HopsworksProject
from clusters.models import HopsworksCluster, UserHopsworksAssignment
from clusters.opencost import (
    DAY_MINUTES,
    HOURS_PER_DAY,
    STORAGE_UNIT_BYTES,
    DayAllocations,
    MetricsError,
    NamespaceUsage,
    fetch_day_allocations,
    gb_held_from_byte_hours,
    is_system_namespace,
)
from clusters.selectors import user_ids_by_hopsworks_identity
from plumbing import outbound
from plumbing.db import sql_array
from plumbing.encryption import SecretDecryptionError
from plumbing.gc_pause import cyclic_gc_paused

logger = logging.getLogger(__name__)
ZERO = Decimal("0")
COLLECTED_STATUSES = (HopsworksCluster.Status.ACTIVE, HopsworksCluster.Status.MAINTENANCE)
# Failures an operator acts on from the message alone; anything else is logged with its
# traceback too.
EXPECTED_FAILURES = (
    MetricsError,
    HopsworksError,
    SecretDecryptionError,
    UsageValidationError,
    ValueError,
)


class CollectionError(Exception):
    """A collection that cannot start (bad dates, unknown cluster); nothing is written."""


class CollectionRefused(Exception):
    """The answer must not replace what is stored; nothing was written."""


@dataclass
class Attribution:
    per_user: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    unknown: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # namespace -> {"project": name, "user_id": id}: the stored mapping plus what is new.
    mapping: dict[str, dict] = field(default_factory=dict)
    # Users owning a namespace left out for a bad figure.
    held: set[str] = field(default_factory=set)


def _any_of(user_ids) -> RawSQL:
    """For `user_id__in=`: the ids as one array parameter, not one parameter each (a
    cluster has tens of thousands of users)."""
    return RawSQL("SELECT unnest(%s::text[])", [sql_array(sorted(user_ids), text=True)])


def _plausible_byte_hours(day: dt.date) -> Decimal:
    """Persistent-volume byte-hours up to which a day's storage cannot exceed MAX_QUANTITY
    GB-months (storage grows with them: above this, `_implausible` works it out)."""
    unit = STORAGE_UNIT_BYTES[settings.STORAGE_UNIT]
    return MAX_QUANTITY * HOURS_PER_DAY * unit * days_in_month(day)


def _implausible(
    usage: NamespaceUsage, day: dt.date, plausible_byte_hours: Decimal | None = None
) -> str | None:
    """Why a namespace's figures cannot be billed (more than `usage_upsert` takes for a
    day), or None."""
    if (
        plausible_byte_hours is not None
        and usage.cpu_core_hours <= MAX_QUANTITY
        and usage.gpu_hours <= MAX_QUANTITY
        and usage.pv_byte_hours <= plausible_byte_hours
    ):
        return None  # the common case, without working out the storage
    storage = storage_gb_months(gb_held=gb_held_from_byte_hours(usage.pv_byte_hours), day=day)
    for source, sent, quantity, unit in (
        ("cpuCoreHours", usage.cpu_core_hours, usage.cpu_core_hours, "CPU core-hours"),
        ("gpuHours", usage.gpu_hours, usage.gpu_hours, "GPU hours"),
        ("pvByteHours", usage.pv_byte_hours, storage, "GB-months"),
    ):
        if quantity > MAX_QUANTITY:
            return f"{source} {sent} is implausible (more than {MAX_QUANTITY:,} {unit} a day)"
    return None


def attribute(
    allocations: list[NamespaceUsage],
    projects: list[HopsworksProject],
    *,
    cluster: HopsworksCluster,
    day: dt.date,
    known: dict | None = None,
    rejected: dict[str, str] | None = None,
) -> Attribution:
    """Sum each namespace's usage onto the user who created its project.

    `known` is the mapping the stored figures of this cluster-day used: it wins over today's
    projects, which only fill namespaces it does not have. `rejected` (namespace -> why) are
    namespaces OpenCost sent junk for; they, and namespaces with implausible figures, are
    left out and noted.
    """
    by_username, by_email = user_ids_by_hopsworks_identity(cluster)
    owner_of = {}
    for project in projects:
        email = project.creator_email or ""
        # An email found as sent is already normalized (the keys are): most are.
        owner = (
            by_username.get(project.creator_username or "")
            or by_email.get(email)
            or by_email.get(normalize_email(email))
        )
        owner_of[project.namespace] = (project, owner)
    known = {
        namespace: entry
        for namespace, entry in (known or {}).items()
        if isinstance(entry, dict) and entry.get("user_id")
    }
    existing = set(
        User.objects.filter(pk__in=_any_of({entry["user_id"] for entry in known.values()}))
        .values_list("pk", flat=True)
        .order_by()
    )

    result = Attribution(mapping=dict(known))

    def owner_for(namespace: str) -> tuple[str | None, str | None]:
        """(user id, why not) for a namespace; the stored mapping first."""
        if namespace in known:
            entry = known[namespace]
            if entry["user_id"] in existing:
                return entry["user_id"], None
            return None, (
                f"project {entry.get('project')} was billed to user {entry['user_id']} when "
                "this day was first collected, and that user no longer exists"
            )
        project, owner = owner_of.get(namespace, (None, None))
        if owner is not None:
            result.mapping[namespace] = {"project": project.name, "user_id": owner}
            return owner, None
        if project is None:
            return None, "no Hopsworks project has this namespace"
        return None, (
            f"project {project.name} was created by "
            f"{project.creator_email or project.creator_username or 'nobody known'}, "
            "who is not a user of ours on this cluster"
        )

    for namespace, why in (rejected or {}).items():
        if is_system_namespace(namespace):
            continue
        result.notes.append(f"{namespace}: {why}; the namespace was left out")
        owner, _ = owner_for(namespace)
        if owner is not None:
            result.held.add(owner)

    sums: dict[str, dict[str, Decimal]] = defaultdict(
        lambda: {"cpu_hours": ZERO, "gpu_hours": ZERO, "pv_byte_hours": ZERO}
    )
    plausible_byte_hours = _plausible_byte_hours(day)
    for usage in allocations:
        if is_system_namespace(usage.namespace):
            continue
        if usage.notes:
            result.notes.extend(f"{usage.namespace}: {note}" for note in usage.notes)
        owner, why_not = owner_for(usage.namespace)
        implausible = _implausible(usage, day, plausible_byte_hours)
        if implausible is not None:
            result.notes.append(f"{usage.namespace}: {implausible}; the namespace was left out")
            if owner is not None:
                result.held.add(owner)
            continue
        if owner is None:
            result.unknown.append(
                {
                    "namespace": usage.namespace,
                    "reason": why_not,
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


# A run's large fields (a big cluster's attribution is a namespace -> owner mapping of tens
# of thousands of entries, over a megabyte of JSON): read where they are used, not on every
# look at the run.
LARGE_FIELDS = ("attribution", "unknown_namespaces", "notes")


def _start_run(cluster: HopsworksCluster, day: dt.date) -> UsageCollectionRun:
    run, _ = UsageCollectionRun.objects.defer(*LARGE_FIELDS).get_or_create(
        cluster=cluster, date=day
    )
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
    """Record a failed attempt; what is stored (coverage, fetch time, mapping) stays."""
    message = str(error) or type(error).__name__
    if run.cluster.status == HopsworksCluster.Status.INACTIVE and not isinstance(
        error, CollectionRefused
    ):
        message += (
            f" (Cluster {run.cluster.name} is inactive; its usage is still collected while it "
            "has assigned users or usage on the day.)"
        )
    UsageCollectionRun.objects.filter(pk=run.pk).update(
        status=UsageCollectionRun.Status.FAILED, error=message, finished_at=timezone.now()
    )
    logger.warning("usage collection failed for %s on %s: %s", run.cluster, run.date, message)
    run.refresh_from_db()
    return run


def _lock_key(cluster: HopsworksCluster, day: dt.date) -> str:
    return f"collect:{cluster.pk}:{day.isoformat()}"


def _lock(cluster: HopsworksCluster, day: dt.date, *, wait: bool = True) -> bool:
    """Hold this cluster-day for the whole collection, from before OpenCost is read until
    the rows are committed: a second collector waits (`wait`) or goes elsewhere, then reads
    OpenCost afresh. A session lock, so it is held across transactions and goes with a dead
    connection. Whether it is held."""
    function = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(hashtext(%s))", [_lock_key(cluster, day)])
        return wait or bool(cursor.fetchone()[0])


def _unlock(cluster: HopsworksCluster, day: dt.date) -> None:
    key = _lock_key(cluster, day)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])
    except DatabaseError:  # the connection is gone, and its lock with it
        logger.warning("could not release the collection lock %s", key, exc_info=True)


@contextmanager
def _one_collector(cluster: HopsworksCluster, day: dt.date) -> Iterator[None]:
    _lock(cluster, day)
    try:
        yield
    finally:
        _unlock(cluster, day)


def _stored_coverage(run: UsageCollectionRun) -> int | None:
    """Minutes of the day the stored figures cover, or None when nothing was collected yet.
    A day collected before coverage was recorded counts as a whole day."""
    if run.coverage_minutes is not None:
        return run.coverage_minutes
    collected = (
        UsageDaily.objects.filter(hopsworks_cluster_id=run.cluster_id, date=run.date)
        .exclude(Q(cpu_hours=0) & Q(gpu_hours=0) & Q(storage_gb_months=0))
        .exists()
    )
    return DAY_MINUTES if collected else None


def usage_collect_day(
    *, cluster: HopsworksCluster, day: dt.date, actor="collect_usage", force: bool = False
) -> UsageCollectionRun:
    """Collect one cluster's usage for one day. A failure is recorded on the run and
    raised to nobody: one cluster-day failing does not stop the others.

    `force` (an operator's explicit choice) writes the answer even when it covers less of
    the day than what is stored, or was read earlier.
    """
    # The collector makes about a million short-lived objects, none in a cycle: see
    # plumbing.gc_pause.
    with cyclic_gc_paused(), _one_collector(cluster, day):
        run = _start_run(cluster, day)
        return _settled(
            run,
            lambda: _write(
                run, _fetch(cluster, day), cluster=cluster, day=day, actor=actor, force=force
            ),
        )


def _settled(run: UsageCollectionRun, collect: Callable[[], UsageCollectionRun]):
    """The run `collect` made, or the run failed with what stopped it."""
    try:
        return collect()
    except (CollectionRefused, *EXPECTED_FAILURES) as error:
        return _fail_run(run, error)
    except Exception as error:  # a bug or the unforeseen: this cluster-day only
        logger.exception("usage collection crashed for %s on %s", run.cluster, run.date)
        return _fail_run(run, RuntimeError(f"Unexpected error ({type(error).__name__}): {error}"))


@dataclass
class Answers:
    """What the outside systems said for one cluster-day: OpenCost's answer (read at
    `fetched_at`), and Hopsworks' projects or the error that stopped their listing (the
    write decides whether it needs them)."""

    fetched_at: dt.datetime
    allocations: DayAllocations
    projects: list[HopsworksProject]
    projects_error: Exception | None


def _fetch(cluster: HopsworksCluster, day: dt.date) -> Answers:
    """Ask OpenCost and Hopsworks at once (Hopsworks in a thread of its own, with this
    context's deadline and background mode): the cluster-day waits for the slower one.
    OpenCost's failure is raised, and wins over Hopsworks', as when they were asked one
    after the other. Reads no database."""
    if not cluster.kubeconfig:
        raise MetricsError(
            f"Cluster {cluster.name} has no kubeconfig to read usage with: add one on the "
            "cluster's page in the console (Usage metrics), for a user that may get "
            "services/proxy in namespace opencost."
        )
    fetched_at = timezone.now()
    kubeconfig = cluster.kubeconfig.reveal()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hopsworks-projects") as pool:
        listing = pool.submit(contextvars.copy_context().run, _list_projects, cluster)
        allocations = fetch_day_allocations(kubeconfig=kubeconfig, day=day)
        projects, error = listing.result()
    return Answers(
        fetched_at=fetched_at, allocations=allocations, projects=projects, projects_error=error
    )


def _write(
    run: UsageCollectionRun,
    answers: Answers,
    *,
    cluster: HopsworksCluster,
    day: dt.date,
    actor,
    force: bool,
) -> UsageCollectionRun:
    """Write a cluster-day's answers in one transaction with its run's record."""
    answer, fetched_at, error = answers.allocations, answers.fetched_at, answers.projects_error
    projects = answers.projects
    notes = []
    if isinstance(error, HopsworksError):
        # A rerun needs Hopsworks only for namespaces the day's stored mapping lacks.
        needed = {
            usage.namespace
            for usage in answer.namespaces
            if not is_system_namespace(usage.namespace)
        }
        if not needed <= set(run.attribution or {}):
            raise error
        notes.append(f"Hopsworks could not be asked ({error}); owners from this day's record.")
    elif error is not None:
        raise error

    with transaction.atomic():
        locked = (
            UsageCollectionRun.objects.select_for_update()
            .defer("unknown_namespaces", "notes")
            .get(pk=run.pk)
        )
        stored = _stored_coverage(locked)
        covered = answer.coverage_minutes
        if locked.fetched_at is not None and locked.fetched_at > fetched_at and not force:
            raise CollectionRefused(
                f"The figures stored for {cluster.name} on {day} were read from OpenCost later "
                f"({locked.fetched_at:%Y-%m-%d %H:%M:%S} UTC) than this run's "
                f"({fetched_at:%Y-%m-%d %H:%M:%S} UTC): nothing was written."
            )
        if stored is not None and covered < stored:
            if not force:
                raise CollectionRefused(
                    f"OpenCost answered for {covered} of {DAY_MINUTES} minutes of {day} (less "
                    f"than the {stored} already collected): nothing was written. Rerun when "
                    "OpenCost has the day, or force the replacement with --force-replace."
                )
            notes.append(
                f"Replacement forced by {actor}: OpenCost answered for {covered} of "
                f"{DAY_MINUTES} minutes, less than the {stored} collected before."
            )
        elif covered < DAY_MINUTES:
            notes.append(
                f"OpenCost answered for {covered} of {DAY_MINUTES} minutes of {day}: the "
                "figures are for that part of the day only."
            )

        result = attribute(
            answer.namespaces,
            projects,
            cluster=cluster,
            day=day,
            known=locked.attribution,
            rejected=answer.rejected,
        )
        # A user with a namespace left out keeps the figures stored for them, if any.
        collected_before = set(
            UsageDaily.objects.filter(hopsworks_cluster=cluster, date=day)
            .exclude(Q(cpu_hours=0) & Q(gpu_hours=0) & Q(storage_gb_months=0))
            .values_list("user_id", flat=True)
        )
        kept = result.held & collected_before
        kept |= _apply_closures(result, day=day, covered=covered, collected_before=collected_before)
        if kept:
            result.notes.append(
                "Figures already stored were kept for users owning a namespace left out: "
                + ", ".join(sorted(kept))
            )
        records = [
            UsageRecord(user_id=user_id, cluster_id=cluster.pk, date=day, **figures)
            for user_id, figures in result.per_user.items()
            if user_id not in kept
        ]
        # Users with a row from an earlier run who no longer show up: their figures go to
        # zero (API calls, which OpenCost does not know, are kept).
        records += [
            UsageRecord(
                user_id=user_id,
                cluster_id=cluster.pk,
                date=day,
                cpu_hours=ZERO,
                gpu_hours=ZERO,
                storage_gb_months=ZERO,
            )
            for user_id in sorted(collected_before - set(result.per_user) - kept)
        ]
        # A cluster may have any number of users: its records go in batches of what one
        # upsert takes, in key order (the upsert's lock order) and in this one transaction,
        # so the cluster-day is still written all or nothing.
        records.sort(key=lambda r: r.user_id)
        rows_written, cost_moved = 0, set()
        for start in range(0, len(records), MAX_BATCH):
            batch = records[start : start + MAX_BATCH]
            try:
                written = usage_upsert(records=batch, actor=actor, check_caps=False)
                rows_written += written.rows
                cost_moved |= written.cost_moved
            except UsageValidationError as error:
                problems = "; ".join(
                    f"user {batch[index].user_id}: {', '.join(messages)}"
                    for index, messages in error.errors.items()
                )
                raise CollectionRefused(
                    f"The usage of {cluster.name} on {day} was refused, nothing was written: "
                    f"{problems}."
                ) from error
        # Caps once for the whole cluster-day, in the same transaction (see usage_upsert).
        cap_alerts_evaluate(user_ids=cost_moved, days={day})
        recorded = {
            "status": UsageCollectionRun.Status.SUCCEEDED,
            "rows_written": rows_written,
            "unknown_namespaces": result.unknown,
            "notes": notes + result.notes,
            "error": "",
            "finished_at": timezone.now(),
            "coverage_minutes": covered,
            "fetched_at": fetched_at,
        }
        # A rerun usually finds the owners it had: the mapping is written when it changed.
        if result.mapping != (locked.attribution or {}):
            recorded["attribution"] = dict(sorted(result.mapping.items()))
        UsageCollectionRun.objects.filter(pk=run.pk).update(**recorded)
    run.refresh_from_db()
    return run


def _list_projects(
    cluster: HopsworksCluster,
) -> tuple[list[HopsworksProject], Exception | None]:
    """Every project of the cluster, or the error that stopped the listing (raised by the
    caller once OpenCost has answered)."""
    try:
        with cluster.hopsworks_client() as hopsworks:
            return hopsworks.list_projects(), None
    except Exception as error:  # handed to the collecting thread
        return [], error
    finally:
        connections.close_all()  # this thread's, should anything have opened one


def _apply_closures(
    result: Attribution, *, day: dt.date, covered: int, collected_before: set[str]
) -> set[str]:
    """Closed accounts are billed up to their close only (AccountClosure): nothing for days
    after it (a row written before the close was recorded goes to zero), and on the close
    day storage only up to the close time: GB held over the minutes OpenCost covered,
    times the minutes until the close. Once the close job has collected the close day, its
    figures stay as they are (the user is no longer on the cluster to be found). Returns
    the users whose stored figures are kept."""
    users = set(result.per_user) | collected_before
    closures = AccountClosure.objects.filter(user_id__in=_any_of(users), closed_at__date__lte=day)
    kept = set()
    for closure in closures:
        close_day = closure.closed_at.astimezone(dt.UTC).date()
        if close_day < day:
            result.per_user.pop(closure.user_id, None)
            continue
        if closure.usage_collected_at is not None:
            result.per_user.pop(closure.user_id, None)
            if closure.user_id in collected_before:
                kept.add(closure.user_id)
            continue
        figures = result.per_user.get(closure.user_id)
        if figures is None or not covered:
            continue
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        minutes = int((closure.closed_at - start).total_seconds() // 60)
        share = Decimal(min(minutes, covered)) / Decimal(covered)
        figures["storage_gb_months"] = quantize(figures["storage_gb_months"] * share)
        result.notes.append(
            f"{closure.user_id}: account closed at {closure.closed_at:%H:%M} UTC; storage "
            f"billed for {min(minutes, covered)} of the {covered} minutes covered."
        )
    return kept


def clusters_to_collect(name: str | None = None, *, days: list[dt.date] | None = None):
    """The clusters whose usage is owed: every active or maintenance cluster, and any other
    that has assigned users or has usage rows on one of `days`. With or without a
    kubeconfig: one without gets a failed run saying so, never a silent skip."""
    if name is not None:
        cluster = HopsworksCluster.objects.filter(name=name).first()
        if cluster is None:
            names = ", ".join(HopsworksCluster.objects.values_list("name", flat=True))
            raise CollectionError(f"No cluster named {name!r}. Clusters: {names or 'none'}.")
        return [cluster]
    owed = Q(status__in=COLLECTED_STATUSES) | Q(
        pk__in=UserHopsworksAssignment.objects.values("hopsworks_cluster_id")
    )
    if days:
        owed |= Q(
            pk__in=UsageDaily.objects.filter(
                date__gte=min(days), date__lte=max(days), hopsworks_cluster__isnull=False
            ).values("hopsworks_cluster_id")
        )
    return list(HopsworksCluster.objects.filter(owed).order_by("name"))


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


@dataclass
class Collected:
    """One cluster-day of `usage_collect_each`: its run, or the error that stopped it from
    being recorded at all (the database went away)."""

    cluster: HopsworksCluster
    day: dt.date
    run: UsageCollectionRun | None
    error: Exception | None = None


@dataclass
class _Begun:
    """A cluster-day being collected: locked, its run started, its answers on their way."""

    cluster: HopsworksCluster
    day: dt.date
    run: UsageCollectionRun
    answers: Future
    paused: ExitStack


def _begin(
    cluster: HopsworksCluster, day: dt.date, fetcher: ThreadPoolExecutor, *, wait: bool
) -> _Begun | None:
    """Lock the cluster-day (or None when another collector holds it and not `wait`), start
    its run and ask for its answers in `fetcher`, with this context's deadline and mode."""
    if not _lock(cluster, day, wait=wait):
        return None
    paused = ExitStack()
    try:
        paused.enter_context(cyclic_gc_paused())
        run = _start_run(cluster, day)
        answers = fetcher.submit(contextvars.copy_context().run, _fetch_apart, cluster, day)
    except BaseException:
        paused.close()
        _unlock(cluster, day)
        raise
    return _Begun(cluster=cluster, day=day, run=run, answers=answers, paused=paused)


def _fetch_apart(cluster: HopsworksCluster, day: dt.date) -> Answers:
    try:
        return _fetch(cluster, day)
    finally:
        connections.close_all()  # this thread's, should anything have opened one


def _end(begun: _Begun, *, actor, force: bool) -> UsageCollectionRun:
    """Write the cluster-day's answers, or record what stopped them on its run; unlock."""
    try:
        return _settled(
            begun.run,
            lambda: _write(
                begun.run,
                begun.answers.result(),
                cluster=begun.cluster,
                day=begun.day,
                actor=actor,
                force=force,
            ),
        )
    finally:
        try:
            _unlock(begun.cluster, begun.day)
        finally:
            begun.paused.close()


def usage_collect_each(
    cluster_days: Iterable[tuple[HopsworksCluster, dt.date]],
    *,
    actor="collect_usage",
    force: bool = False,
    go_on: Callable[[], bool] = lambda: True,
) -> Iterator[Collected]:
    """Collect each cluster-day in turn as `usage_collect_day` does, yielding each as it
    ends, while the next one's answers are on their way: once a cluster-day's answers are
    in, the next one is locked, its run started and OpenCost and Hopsworks asked for it (in
    a thread) while this one is written. So the outside systems' answers overlap our
    writing, and a cluster-day waits for them only when writing the last one was quicker.

    The next cluster-day is begun only if no other collector holds it (a try-lock: never
    waiting for one lock while holding another); else it is begun, waiting, after this one
    ends. Each cluster-day's failure is recorded on its own run; an error that prevents
    even that is yielded (`Collected.error`) and the others go on. No cluster-day is begun
    once `go_on()` is false; one begun is always ended, also when the caller stops early.
    """
    # Each cluster-day once (a session's advisory locks are reentrant: a second of the same
    # would be begun while the first is written).
    waiting = deque({(cluster.pk, day): (cluster, day) for cluster, day in cluster_days}.values())
    begun: list[_Begun] = []  # at most two: the one being written and the next
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="collection-fetch") as fetcher:
        try:
            while waiting or begun:
                if not begun:
                    if not go_on():
                        return
                    cluster, day = waiting.popleft()
                    try:
                        begun.append(_begin(cluster, day, fetcher, wait=True))
                    except Exception as error:  # e.g. the database went away
                        logger.exception("collecting %s on %s failed", cluster, day)
                        yield Collected(cluster=cluster, day=day, run=None, error=error)
                        continue
                current = begun[0]
                wait_for([current.answers])
                if waiting and len(begun) == 1 and go_on():
                    cluster, day = waiting[0]
                    try:
                        ahead = _begin(cluster, day, fetcher, wait=False)
                    except Exception:  # tried again, waiting, once this one has ended
                        logger.warning("could not begin %s on %s", cluster, day, exc_info=True)
                        ahead = None
                    if ahead is not None:
                        waiting.popleft()
                        begun.append(ahead)
                begun.pop(0)
                try:
                    run = _end(current, actor=actor, force=force)
                except Exception as error:  # recording the run failed: the database
                    logger.exception("collecting %s on %s failed", current.cluster, current.day)
                    yield Collected(cluster=current.cluster, day=current.day, run=None, error=error)
                    continue
                yield Collected(cluster=current.cluster, day=current.day, run=run)
        finally:
            for left in begun:  # the caller stopped early: what was begun is ended
                try:
                    _end(left, actor=actor, force=force)
                except Exception:
                    logger.exception("collecting %s on %s failed", left.cluster, left.day)


def usage_collect(
    *, clusters, days, actor="collect_usage", force: bool = False
) -> list[UsageCollectionRun]:
    """Collect each cluster-day (`usage_collect_each`). Inside a web request (an operator's
    "collect now") all of it shares one outbound deadline, and cluster-days not started in
    time are left to cron."""
    in_request = not outbound.in_background()
    runs = []
    with (
        outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS) if in_request else nullcontext()
    ) as budget:
        for collected in usage_collect_each(
            [(cluster, day) for cluster in clusters for day in days],
            actor=actor,
            force=force,
            go_on=lambda: budget is None or not budget.expired,
        ):
            if collected.error is not None:
                raise collected.error
            runs.append(collected.run)
    return runs
