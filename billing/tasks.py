"""Billing's background jobs: collecting usage per cluster and day (and catching up on
what was missed), reporting to Stripe, processing Stripe's events, the balance check, the
reconciliation against Stripe."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from procrastinate.contrib.django import app

from accounts.models import User
from billing import stripe_gateway as gateway
from billing.adjustments import (
    adjustment_send,
    adjustment_send_queue,
    adjustments_pending,
    prepaid_debt_carry,
    users_with_prepaid_debt,
)
from billing.auth0_log_stream import log_events_apply
from billing.collection import clusters_to_collect, usage_collect_day
from billing.credits import credits_check_balances
from billing.invoices import invoices_sync
from billing.models import BillingAdjustment, ServiceStop, StripeEvent, UsageCollectionRun
from billing.reconciliation import billing_reconcile, default_months, reconciliation_record
from billing.standing import standing_evaluate
from billing.stripe_events import stripe_event_process, stripe_events_retry
from billing.stripe_reporting import usage_report_to_stripe
from clusters.models import HopsworksCluster
from plumbing.jobs import (
    OUTSIDE_SYSTEM_RETRY,
    StillFailing,
    TargetGone,
    background,
    defer,
    utc_day_of,
)

logger = logging.getLogger(__name__)


# Collection -----------------------------------------------------------------------------


class CannotCollect(Exception):
    """A cluster-day that no retry can collect (the cluster has no kubeconfig): the job
    fails once, not retried; its run says why and the hourly catch-up asks again."""


@app.task(queue="collection", retry=OUTSIDE_SYSTEM_RETRY, name="billing.collect_cluster_day")
@background
def collect_cluster_day(cluster_id: str, day: str) -> str:
    """One cluster's usage for one day. Deferred with a lock per cluster (two days of one
    cluster never run at once) and a queueing lock per cluster-day (queued once)."""
    cluster = HopsworksCluster.objects.filter(pk=cluster_id).first()
    if cluster is None:
        raise TargetGone(f"Cluster {cluster_id} no longer exists.")
    run = usage_collect_day(cluster=cluster, day=dt.date.fromisoformat(day), actor="jobs")
    if run.status != UsageCollectionRun.Status.SUCCEEDED:
        if not cluster.kubeconfig:  # no retry helps until an operator adds one
            raise CannotCollect(f"{cluster.name} {day}: {run.error}")
        raise StillFailing(f"{cluster.name} {day}: {run.error}")
    defer(report_usage_now, queueing_lock="report-usage")
    return f"{cluster.name} {day}: {run.rows_written} rows"


def collection_defer(*, cluster: HopsworksCluster, day: dt.date):
    """Queue one cluster-day (once: a cluster-day already waiting is not queued again)."""
    return defer(
        collect_cluster_day,
        queueing_lock=f"collect:{cluster.pk}:{day.isoformat()}",
        lock=f"collect:{cluster.pk}",
        cluster_id=str(cluster.pk),
        day=day.isoformat(),
    )


def days_to_collect(cluster: HopsworksCluster, *, today: dt.date, now=None) -> list[dt.date]:
    """Days in the look-back window that are missing, failed, or left running by a dead
    worker (past the lease), oldest first. Days before the cluster existed are not owed."""
    now = now or timezone.now()
    first = max(
        today - dt.timedelta(days=settings.USAGE_COLLECTION_LOOKBACK_DAYS),
        cluster.created_at.date(),
    )
    lease = dt.timedelta(minutes=settings.USAGE_COLLECTION_LEASE_MINUTES)
    runs = (
        UsageCollectionRun.objects.filter(cluster=cluster, date__gte=first, date__lt=today)
        .filter(
            Q(status=UsageCollectionRun.Status.SUCCEEDED)
            | Q(status=UsageCollectionRun.Status.RUNNING, started_at__gt=now - lease)
        )
        .values_list("date", "status", "fetched_at")
    )
    # A day read from OpenCost before it was over (an account close collects its close day
    # at once) is owed again once it is.
    done = {
        day
        for day, status, fetched_at in runs
        if status != UsageCollectionRun.Status.SUCCEEDED
        or fetched_at is None
        or fetched_at >= dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    }
    days = [first + dt.timedelta(days=n) for n in range((today - first).days)]
    return [day for day in days if day not in done]


@app.periodic(cron="5 * * * *")
@app.task(queue="maintenance", name="billing.collect_missing_usage")
@background
def collect_missing_usage(timestamp: int) -> str:
    """Every hour: queue each cluster-day that is owed (a day missed while a cluster or the
    database was down is collected when it is back)."""
    today = utc_day_of(timestamp)
    window = [
        today - dt.timedelta(days=n) for n in range(1, settings.USAGE_COLLECTION_LOOKBACK_DAYS + 1)
    ]
    queued = 0
    for cluster in clusters_to_collect(days=window):
        for day in days_to_collect(cluster, today=today):
            queued += collection_defer(cluster=cluster, day=day) is not None
    return f"{queued} cluster-day(s) queued"


@app.task(queue="stripe", retry=OUTSIDE_SYSTEM_RETRY, name="billing.sync_invoices")
@background
def sync_invoices(user_id: str) -> str:
    """Repair missed invoice webhooks for one user from Stripe's own list."""
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise TargetGone(f"User {user_id} no longer exists.")
    try:
        count = invoices_sync(user=user)
    except gateway.StripeGatewayError as error:
        raise StillFailing(str(error)) from error
    return f"{count} invoice(s) brought up to date"


def invoices_sync_queue(*, user):
    return defer(sync_invoices, queueing_lock=f"invoices:{user.pk}", user_id=user.pk)


# Stripe -------------------------------------------------------------------------------


@app.task(queue="stripe", retry=OUTSIDE_SYSTEM_RETRY, name="billing.report_usage_now")
@background
def report_usage_now() -> str:
    run = usage_report_to_stripe()
    if run.errors:
        raise StillFailing("; ".join(run.errors[:5]))
    return f"{run.sent_events} meter event(s) sent"


@app.task(queue="stripe", retry=OUTSIDE_SYSTEM_RETRY, name="billing.report_user_usage")
@background
def report_user_usage(user_id: str) -> str:
    """One user's usage to Stripe now: deferred by a switch from postpaid to prepaid, so
    everything collected up to the switch is reported first."""
    run = usage_report_to_stripe(user_ids=[user_id])
    if run.errors:
        raise StillFailing("; ".join(run.errors[:5]))
    return f"{run.sent_events} meter event(s) sent for {user_id}"


def user_usage_report_defer(*, user_id: str):
    return defer(report_user_usage, queueing_lock=f"report-usage:{user_id}", user_id=user_id)


@app.periodic(cron="30 1 * * *")
@app.task(queue="stripe", name="billing.report_usage_daily")
@background
def report_usage_daily(timestamp: int) -> str:
    """Daily, whatever was collected: the month's differences to Stripe."""
    return report_usage_now()


@app.task(queue="stripe", retry=OUTSIDE_SYSTEM_RETRY, name="billing.process_stripe_event")
@background
def process_stripe_event(event_id: str) -> str:
    if not StripeEvent.objects.filter(pk=event_id).exists():
        raise TargetGone(f"Stripe event {event_id} is not stored.")
    event = stripe_event_process(event_id=event_id)
    if event.status == StripeEvent.Status.FAILED:
        raise StillFailing(f"{event.id}: {event.error}")
    return f"{event.id}: {event.status}"


def stripe_event_defer(*, event_id: str):
    """Queue processing a stored event (an event already processed stays so)."""
    return defer(process_stripe_event, queueing_lock=f"stripe-event:{event_id}", event_id=event_id)


@app.periodic(cron="15 * * * *")
@app.task(queue="stripe", name="billing.retry_stripe_events")
@background
def retry_stripe_events(timestamp: int) -> str:
    """Hourly: events whose processing failed (oldest first, a capped batch)."""
    events = stripe_events_retry()
    failed = sum(event.status == StripeEvent.Status.FAILED for event in events)
    return f"{len(events)} event(s) retried, {failed} still failing"


@app.periodic(cron="*/10 * * * *")
@app.task(queue="maintenance", name="billing.apply_auth0_log_events")
@background
def apply_auth0_log_events(timestamp: int | None = None) -> str:
    """Queued by the Auth0 log stream webhook for the deletions it stored, and every 10
    minutes for any still pending: each closes its user's account, once."""
    outcome = log_events_apply()
    return (
        f"{outcome.closed} closed, {outcome.duplicates} already closed, "
        f"{outcome.unknown_users} unknown, {len(outcome.refused)} refused"
        + (f": {'; '.join(outcome.refused)}" if outcome.refused else "")
    )


class BalanceDriftFound(Exception):
    pass


@app.periodic(cron="0 5 * * *")
@app.task(queue="maintenance", name="billing.check_credit_balances")
@background
def check_credit_balances(timestamp: int) -> str:
    """Daily: each balance against its ledger. Drift fails the job (the dashboard shows
    failed jobs); `check_credit_balances --fix` repairs it."""
    drift = credits_check_balances()
    if drift:
        raise BalanceDriftFound(f"{len(drift)} balance(s) disagree with the ledger")
    return "no drift"


class ReconciliationDifferences(Exception):
    pass


@app.periodic(cron="45 5 * * *")
@app.task(queue="stripe", name="billing.reconcile_billing")
@background
def reconcile_billing(timestamp: int) -> str:
    """Daily, after the usage report: the previous and current month against Stripe. A
    difference needing an operator fails the job (the dashboard shows failed jobs); the
    run is kept for the admin's Reconciliation page."""
    started = timezone.now()
    result = billing_reconcile(months=default_months(utc_day_of(timestamp)))
    run = reconciliation_record(result=result, actor="job", started_at=started)
    summary = (
        f"{len(result.lines)} user-month(s), {run.differences} difference(s), "
        f"{run.unexplained} unexplained (reconciliation run {run.pk})"
    )
    if not result.ok:
        raise ReconciliationDifferences(summary)
    return summary


# Service stops ---------------------------------------------------------------------------


@app.task(queue="maintenance", name="billing.evaluate_standing")
@background
def evaluate_standing(user_ids: list[str] | None = None, users: str = "") -> str:
    """After usage, a credit movement or a mode switch: those users' stops opened, resolved
    (a top-up resumes at once) or enforced. The users come as a list or as one string of
    ids separated by spaces (`standing_check_later`)."""
    ids = list(user_ids or ()) + (users.split(" ") if users else [])
    return str(standing_evaluate(user_ids=ids, actor="jobs"))


@app.periodic(cron="*/10 * * * *")
@app.task(queue="maintenance", name="billing.enforce_service_stops")
@background
def enforce_service_stops(timestamp: int) -> str:
    """Every 10 minutes, every user on a cluster: stops whose grace period has run out are
    enforced, and anything the event-driven checks missed is caught up."""
    return str(standing_evaluate(actor="jobs"))


@app.task(
    queue="maintenance", retry=OUTSIDE_SYSTEM_RETRY, name="billing.send_payment_failed_notice"
)
@background
def send_payment_failed_notice(stop_id: int) -> str:
    """Tell the user an invoice payment failed, and when their service stops if unpaid."""
    from django.core.mail import send_mail

    stop = ServiceStop.objects.select_related("user").filter(pk=stop_id).first()
    if stop is None:
        raise TargetGone(f"Service stop {stop_id} no longer exists.")
    if stop.resolved_at is not None:
        return f"stop {stop_id} already resolved; nothing sent"
    if not stop.user.email:
        return f"user {stop.user_id} has no email address; nothing sent"
    try:
        send_mail(
            subject="Your payment failed: please update your payment method",
            message=payment_failed_text(stop),
            from_email=None,
            recipient_list=[stop.user.email],
        )
    except OSError as error:  # the mail server is down or refusing: retried
        raise StillFailing(f"mail to {stop.user.email}: {error}") from error
    return f"payment-failed notice sent to {stop.user.email}"


def payment_failed_text(stop: ServiceStop) -> str:
    from billing.standing import HOW_TO_RESUME

    return (
        f"Hello,\n\nThe payment of your invoice failed. {stop.detail}\n\n"
        "Stripe will try again over the next days. If the invoice is still unpaid on "
        f"{stop.enforce_at:%Y-%m-%d %H:%M} UTC, your Hopsworks service is stopped until it is "
        "paid (your data and your place on the cluster are kept).\n\n"
        f"{HOW_TO_RESUME[stop.reason]}\n"
    )


# Adjustments (billing/adjustments.py) -------------------------------------------------


@app.task(queue="stripe", retry=OUTSIDE_SYSTEM_RETRY, name="billing.send_billing_adjustment")
@background
def send_billing_adjustment(adjustment_id: int) -> str:
    """Send one pending credit or debit to Stripe (looked up there first if an earlier
    attempt may have arrived); retried with backoff while Stripe is unavailable."""
    if not BillingAdjustment.objects.filter(pk=adjustment_id).exists():
        raise TargetGone(f"Billing adjustment {adjustment_id} no longer exists.")
    adjustment = adjustment_send(adjustment_id=adjustment_id)
    if adjustment.status == BillingAdjustment.Status.PENDING:
        raise StillFailing(f"{adjustment.reference}: {adjustment.error or 'being sent'}")
    return f"{adjustment.reference}: {adjustment.status}"


@app.periodic(cron="40 * * * *")
@app.task(queue="stripe", name="billing.retry_billing_adjustments")
@background
def retry_billing_adjustments(timestamp: int) -> str:
    """Hourly: queue every adjustment still pending (its job gave up while Stripe was down,
    or the process died between recording and sending it)."""
    pending = adjustments_pending(older_than=timezone.now() - dt.timedelta(minutes=10))
    queued = sum(adjustment_send_queue(adjustment=a) is not None for a in pending)
    return f"{queued} pending adjustment(s) queued"


@app.periodic(cron="50 1 * * *")
@app.task(queue="maintenance", name="billing.carry_prepaid_debts")
@background
def carry_prepaid_debts(timestamp: int) -> str:
    """Daily: a user switched to postpaid whose last prepaid days, settled after the
    switch, left their prepaid balance below zero: the debt goes on their next invoice."""
    carried = [prepaid_debt_carry(user=user, actor="job") for user in users_with_prepaid_debt()]
    return f"{sum(a is not None for a in carried)} prepaid debt(s) carried to Stripe"


# Leaving ------------------------------------------------------------------------------


@app.task(queue="stripe", retry=OUTSIDE_SYSTEM_RETRY, name="billing.close_account")
@background
def close_account(user_id: str) -> str:
    """The remaining steps of an account close (billing.closing), each done once."""
    from billing.closing import CloseStepWaiting, account_closure_advance

    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise TargetGone(f"User {user_id} no longer exists.")
    try:
        closure = account_closure_advance(user=user)
    except CloseStepWaiting as waiting:
        raise StillFailing(f"{user_id}: {waiting}") from waiting
    return f"{user_id}: closed ({closure.get_mode_display()})"


@app.periodic(cron="20 * * * *")
@app.task(queue="maintenance", name="billing.advance_account_closures")
@background
def advance_account_closures(timestamp: int) -> str:
    """Hourly: closes not finished (their job gave up while an outside system was down)
    are queued again."""
    from billing.closing import account_closure_queue
    from billing.models import AccountClosure

    pending = AccountClosure.objects.filter(finished_at__isnull=True).select_related("user")
    queued = sum(account_closure_queue(user=c.user) is not None for c in pending)
    return f"{queued} account close(s) queued"


@app.task(queue="stripe", retry=OUTSIDE_SYSTEM_RETRY, name="billing.settle_ended_subscription")
@background
def settle_ended_subscription(subscription_id: str) -> str:
    """A subscription ended outside our flow: its reported usage invoiced (once)."""
    from billing.subscription_end import subscription_end_settle

    try:
        end = subscription_end_settle(subscription_id=subscription_id)
    except gateway.StripeGatewayError as error:
        raise StillFailing(f"{subscription_id}: {error}") from error
    return f"{subscription_id}: {end.status}"


# Mail to users -----------------------------------------------------------------------------


@app.task(queue="mail", retry=OUTSIDE_SYSTEM_RETRY, name="billing.send_spending_alerts")
@background
def send_spending_alerts(alert_ids: list[int]) -> str:
    """Email spending alerts (billing.alerts); those that failed are retried with backoff."""
    from billing.alerts import spending_alerts_send

    sent, errors = spending_alerts_send(alert_ids=alert_ids)
    if errors:
        raise StillFailing(f"{len(errors)} email(s) not sent: " + "; ".join(errors[:5]))
    return f"{sent} email(s) sent"


def spending_alerts_send_defer(*, alert_ids: list[int]):
    """Queue the emails of new alerts, in the transaction that inserted them."""
    return defer(send_spending_alerts, alert_ids=alert_ids)
