"""Clusters' background jobs. Event jobs are deferred by the services in the transaction
that needs them; periodic ones are queued once per period however many workers run."""

from __future__ import annotations

import logging

from procrastinate.contrib.django import app

from accounts.models import User
from clusters.account_sync import hopsworks_accounts_sync
from clusters.services import capacity_place_waiting, cluster_counts_check, cluster_fill_record
from plumbing.jobs import OUTSIDE_SYSTEM_RETRY, StillFailing, TargetGone, background

logger = logging.getLogger(__name__)


@app.task(queue="hopsworks", retry=OUTSIDE_SYSTEM_RETRY, name="clusters.sync_user_accounts")
@background
def sync_user_accounts(user_id: str) -> str:
    """Make Hopsworks match what we want for one user's accounts (create, move, (de)activate)."""
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise TargetGone(f"User {user_id} no longer exists.")
    report = hopsworks_accounts_sync(user=user)
    if report.failed:
        raise StillFailing("; ".join(report.errors))
    return f"{report.synced} account(s) synced"


@app.task(queue="hopsworks", name="clusters.place_waiting_users")
@background
def place_waiting_users() -> str:
    return f"{capacity_place_waiting()} waiting user(s) placed"


@app.periodic(cron="*/10 * * * *")
@app.task(queue="hopsworks", name="clusters.sweep_hopsworks_accounts")
@background
def sweep_hopsworks_accounts(timestamp: int) -> str:
    """Every 10 minutes: place waiting users, retry every pending account change (each
    failure stays recorded on its account and is tried again next time)."""
    placed = capacity_place_waiting()
    report = hopsworks_accounts_sync()
    return f"{placed} placed, {report.synced} synced, {report.failed} still pending"


class CountDriftFound(Exception):
    pass


@app.periodic(cron="0 4 * * *")
@app.task(queue="maintenance", name="clusters.check_cluster_counts")
@background
def check_cluster_counts(timestamp: int) -> str:
    """Daily: current_users against the assignments. Drift fails the job (the dashboard
    shows failed jobs); `check_cluster_counts --fix` repairs it."""
    drift = cluster_counts_check()
    if drift:
        raise CountDriftFound(
            "; ".join(f"{d.cluster}: recorded {d.recorded}, assigned {d.assigned}" for d in drift)
        )
    return "no drift"


@app.periodic(cron="55 * * * *")
@app.task(queue="maintenance", name="clusters.record_cluster_fill")
@background
def record_cluster_fill(timestamp: int) -> str:
    """Hourly: each cluster's users as today's reading (the dashboard's fill over time); a
    past day keeps the last reading taken that day."""
    return f"{cluster_fill_record()} assigned user(s) recorded"
