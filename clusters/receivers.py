"""How the clusters app follows what happens to accounts (accounts imports nothing of ours)."""

from __future__ import annotations

import logging

from accounts.models import User
from clusters import services
from clusters.models import HopsworksAccount
from clusters.selectors import assignment_of

logger = logging.getLogger(__name__)


def place_on_login(sender, request, user: User, **kwargs):
    """A user who logs in without a cluster is placed on one (or waits for capacity).

    Break-glass operator logins (`local|...`) are not customers and get no cluster.
    """
    if user.is_local:
        return
    services.assignment_place(user=user, actor=user)


def follow_user_status(sender, user: User, previous: str, status: str, actor, **kwargs):
    """Suspending a user deactivates their Hopsworks account; reactivating reactivates it.

    Runs inside the status change's transaction; the cluster is called after commit.
    """
    accounts = HopsworksAccount.objects.filter(user=user)
    if status == User.Status.ACTIVE:
        assignment = assignment_of(user)
        if assignment is None:
            return
        accounts = accounts.filter(cluster_id=assignment.hopsworks_cluster_id)
        desired = HopsworksAccount.State.ACTIVE
    else:
        desired = HopsworksAccount.State.DEACTIVATED
    if accounts.exclude(desired=desired).update(desired=desired, attempts=0, last_error=""):
        services.accounts_sync_queue(user)
    if status == User.Status.ACTIVE:
        services.place_waiting_queue()
