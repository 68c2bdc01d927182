"""Making users' Hopsworks accounts match what we want (`HopsworksAccount.desired`).

Runs right after the change that caused it, inside the web request (a first login, an
operator's action): then each call is tried once and all of them together get one deadline
(OUTBOUND_DEADLINE_SECONDS), so a slow cluster cannot hold a login; what is not done stays
pending. `manage.py sync_hopsworks_accounts` (cron) retries whatever is still pending, with
retries and the longer deadline per call. Every call is idempotent: the account is looked
up before it is created, and status changes are PUTs of the wanted status.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import User
from clusters.hopsworks import HopsworksClient, HopsworksError, HopsworksUser
from clusters.models import HopsworksAccount, HopsworksCluster, UserHopsworksAssignment
from plumbing import outbound
from plumbing.encryption import SecretDecryptionError

logger = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
# One account's calls (a lookup of several pages, a create, an update) all together, well
# inside its lease; a web request's own shorter deadline binds first.
ACCOUNT_SECONDS = LEASE.total_seconds() / 2
State = HopsworksAccount.State


@dataclass
class SyncReport:
    synced: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _split_name(user: User) -> tuple[str, str]:
    parts = (user.name or user.email.split("@")[0]).split(None, 1)
    given = parts[0]
    return given, parts[1] if len(parts) > 1 else given


def _apply(account: HopsworksAccount, client: HopsworksClient) -> tuple[str, HopsworksUser | None]:
    """Make the cluster match `account.desired`; returns the state now on the cluster."""
    user = account.user
    if account.desired == State.ACTIVE:
        given, surname = _split_name(user)
        remote = client.ensure_oauth_user(
            email=user.email,
            given_name=given,
            surname=surname,
            subject=user.pk,
            client_id=settings.HOPSWORKS_OAUTH_CLIENT_ID,
            max_num_projects=settings.HOPSWORKS_MAX_NUM_PROJECTS,
        )
        if not remote.is_active and remote.id is not None:
            remote = client.set_user_active(user_id=remote.id, active=True)
        return State.ACTIVE, remote

    remote_id = account.hopsworks_user_id
    remote = None
    if remote_id is None:
        remote = client.find_user(email=user.email)
        remote_id = remote.id if remote else None
    if remote_id is not None:  # no account on the cluster is as good as a deactivated one
        remote = client.set_user_active(user_id=remote_id, active=False)
    return State.DEACTIVATED, remote


def _lease(pk) -> bool:
    now = timezone.now()
    return bool(
        HopsworksAccount.objects.filter(pk=pk)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
        .update(leased_until=now + LEASE)
    )


def _record_success(account: HopsworksAccount, state: str, remote: HopsworksUser | None):
    now = timezone.now()
    with transaction.atomic():
        changes = {
            "synced": state,
            "last_error": "",
            "attempts": F("attempts") + 1,
            "last_attempt_at": now,
            "leased_until": None,
        }
        if remote is not None:
            if remote.id is not None:
                changes["hopsworks_user_id"] = remote.id
            changes["hopsworks_username"] = remote.username
        HopsworksAccount.objects.filter(pk=account.pk).update(**changes)
        if state == State.ACTIVE and remote is not None:
            # The user's current cluster: the username goes on the assignment and the user.
            current = UserHopsworksAssignment.objects.filter(
                user_id=account.user_id, hopsworks_cluster_id=account.cluster_id
            )
            if current.update(hopsworks_username=remote.username):
                User.objects.filter(pk=account.user_id).update(hopsworks_username=remote.username)


def _record_failure(account: HopsworksAccount, error: Exception) -> str:
    message = f"{account.cluster.name}: {error}"
    HopsworksAccount.objects.filter(pk=account.pk).update(
        last_error=message,
        attempts=F("attempts") + 1,
        last_attempt_at=timezone.now(),
        leased_until=None,
    )
    logger.warning("Hopsworks account sync failed for %s: %s", account.user_id, message)
    return message


def pending_accounts():
    return HopsworksAccount.objects.pending()


def hopsworks_accounts_sync(
    *, user: User | None = None, cluster: HopsworksCluster | None = None
) -> SyncReport:
    """Bring pending accounts in line; failures are recorded on the row and retried later.

    Outside `outbound.background_work()` (a web request): one attempt per call and one
    deadline for them all; accounts not reached in time stay pending.
    """
    report = SyncReport()
    pending = pending_accounts()
    if user is not None:
        pending = pending.filter(user=user)
    if cluster is not None:
        pending = pending.filter(cluster=cluster)
    in_request = not outbound.in_background()
    clients: dict = {}
    with (
        outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS) if in_request else nullcontext()
    ) as budget:
        try:
            _sync_each(pending, clients, report, quick=in_request, budget=budget)
        finally:
            for client in clients.values():
                client.close()
    return report


def _sync_each(pending, clients: dict, report: SyncReport, *, quick: bool, budget) -> None:
    for pk in list(pending.order_by("updated_at").values_list("pk", flat=True)):
        if budget is not None and budget.expired:
            break  # out of time: the rest stays pending for the next run
        if not _lease(pk):
            continue  # another run is working on it
        account = HopsworksAccount.objects.select_related("user", "cluster").get(pk=pk)
        try:
            if account.cluster_id not in clients:
                clients[account.cluster_id] = account.cluster.hopsworks_client(quick=quick)
            # Within its lease: past it, another run may take the same account.
            with outbound.deadline(ACCOUNT_SECONDS):
                state, remote = _apply(account, clients[account.cluster_id])
        except (HopsworksError, SecretDecryptionError, ValueError) as error:
            report.failed += 1
            report.errors.append(_record_failure(account, error))
            continue
        _record_success(account, state, remote)
        report.synced += 1
