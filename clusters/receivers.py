"""How the clusters app follows what happens to accounts (accounts imports nothing of ours)."""

from __future__ import annotations

import logging

from accounts.models import User
from clusters import services

logger = logging.getLogger(__name__)


def place_on_login(sender, request, user: User, **kwargs):
    """A user who logs in without a cluster is placed on one (or waits for capacity).

    Break-glass operator logins (`local|...`) are not customers and get no cluster.
    """
    if user.is_local:
        return
    services.assignment_place(user=user, actor=user)


def follow_user_status(sender, user: User, previous: str, status: str, actor, **kwargs):
    """Suspending a user deactivates their Hopsworks account; reactivating reactivates it
    (unless a billing stop is in force: clusters.services.accounts_refresh asks).

    Runs inside the status change's transaction; the cluster is called after commit.
    """
    services.accounts_refresh(user=user)
    if status == User.Status.ACTIVE:
        services.place_waiting_queue()
