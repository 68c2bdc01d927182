"""Leaving: closing a user's account, and what stays open until the money is settled.

`account_close` records the close (an `AccountClosure`), marks the user deleted (which
logs them out for good and has clusters deactivate their Hopsworks accounts, through the
account sync) and queues `billing.close_account`. That job runs `account_closure_advance`:
each step is done once, recorded on the closure, and an outside system that is down stops
the run there (the error recorded), to be retried; nothing done is done twice.

1. the cluster-days owed up to the close day are collected (billing.collection bills the
   close day up to the close time and nothing after it);
2. postpaid: every difference reported to Stripe, then the subscription canceled with a
   final invoice (`invoice_now`, no proration); prepaid: the balance left is recorded, to
   be refunded by an operator from the credit purchases (Credit purchases admin);
3. the user's cluster slot released;
4. the Hopsworks account confirmed deactivated.

A user is never deleted while money is open (`money_open_reasons`): a `pre_delete` receiver
refuses it for every path (the admin, the shell, a cascade), with the reasons.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

from django.db import transaction
from django.db.models import F, ProtectedError
from django.utils import timezone

from accounts.models import User
from accounts.services import StatusChangeRefused, user_set_status
from billing import selectors
from billing import stripe_gateway as gateway
from billing.models import (
    AccountClosure,
    BillingHistory,
    BillingProfile,
    StripeCatalogEntry,
    StripeUsageAdjustment,
    StripeUsageReport,
    SubscriptionEnd,
    UsageCollectionRun,
    UsageDaily,
)
from billing.profiles import billing_profile_ensure
from billing.stripe_reporting import month_bounds, month_cents_by_resource
from clusters.models import HopsworksAccount, UserHopsworksAssignment
from plumbing.actors import actor_label
from plumbing.jobs import defer

logger = logging.getLogger(__name__)


class AccountCloseRefused(Exception):
    """A close that cannot be recorded; nothing was written. The message says why."""


class CloseStepWaiting(Exception):
    """A step waits for an outside system (recorded on the closure); retried later."""


def account_close(
    *, user: User, actor, reason: str, closed_at: dt.datetime | None = None
) -> AccountClosure:
    """Close the user's account from `closed_at` (default now; earlier for a deletion Auth0
    reports late, never in the future). Raises AccountCloseRefused, with nothing written,
    for a missing reason, a future time, an account already closed, or an operator closing
    their own account or the last active superuser's."""
    reason = (reason or "").strip()
    if not reason:
        raise AccountCloseRefused("Say why the account is closed (the reason is kept).")
    now = timezone.now()
    closed_at = closed_at or now
    if closed_at > now:
        raise AccountCloseRefused("An account cannot be closed in the future.")
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        if AccountClosure.objects.filter(user=locked).exists():
            raise AccountCloseRefused(f"{locked.email}'s account is already closed.")
        profile = billing_profile_ensure(user=locked)
        closure = AccountClosure.objects.create(
            user=locked,
            closed_at=closed_at,
            actor=actor_label(actor),
            reason=reason,
            mode=profile.mode,
            subscription_id=profile.stripe_subscription_id
            if profile.has_active_subscription
            else "",
        )
        try:
            # Deleted: logged out for good, Hopsworks accounts wanted deactivated (clusters
            # follows the status change and queues the account sync in this transaction).
            user_set_status(user=locked, status=User.Status.DELETED, actor=actor, reason=reason)
        except StatusChangeRefused as error:
            raise AccountCloseRefused(str(error)) from None
        user.status = locked.status
        account_closure_queue(user=locked)
    logger.info("account of %s closed by %s: %s", user.pk, actor_label(actor), reason)
    return closure


def account_closure_queue(*, user: User):
    from billing.tasks import close_account  # tasks import this module

    # Queued once, and never two at once for a user (the sweep may queue one while one runs).
    return defer(
        close_account, queueing_lock=f"close:{user.pk}", lock=f"close:{user.pk}", user_id=user.pk
    )


def account_closure_advance(*, user: User) -> AccountClosure:
    """Do the close's remaining steps in order; each is recorded as it is done. Raises
    CloseStepWaiting (recorded in `last_error`) at the first step an outside system keeps
    from finishing."""
    closure = AccountClosure.objects.get(user=user)
    if closure.finished_at is not None:
        return closure
    AccountClosure.objects.filter(pk=closure.pk).update(attempts=F("attempts") + 1)
    try:
        _collect_up_to_close(closure)
        if closure.mode == BillingProfile.Mode.POSTPAID:
            _report_everything(closure)
            _cancel_with_final_invoice(closure)
        else:
            _record_balance(closure)
        _release_slot(closure)
        _confirm_deactivated(closure)
    except CloseStepWaiting as waiting:
        _record(closure, last_error=str(waiting))
        raise
    _record(closure, finished_at=timezone.now(), last_error="")
    return closure


def _record(closure: AccountClosure, **changes) -> None:
    AccountClosure.objects.filter(pk=closure.pk).update(**changes)
    for name, value in changes.items():
        setattr(closure, name, value)


def _close_day(closure: AccountClosure) -> dt.date:
    return closure.closed_at.astimezone(dt.UTC).date()


def _collect_up_to_close(closure: AccountClosure) -> None:
    """The user's cluster, every day owed up to and including the close day."""
    from billing.collection import usage_collect_day
    from billing.tasks import days_to_collect

    if closure.usage_collected_at is not None:
        return
    assignment = (
        UserHopsworksAssignment.objects.filter(user_id=closure.user_id)
        .select_related("hopsworks_cluster")
        .first()
    )
    close_day = _close_day(closure)
    owed = []
    if assignment is not None:
        cluster = assignment.hopsworks_cluster
        owed += [(cluster, d) for d in [*days_to_collect(cluster, today=close_day), close_day]]
    # Days after the close collected before it was recorded (a deletion Auth0 reported
    # late): collected again, which takes their usage back.
    later = (
        UsageDaily.objects.filter(
            user_id=closure.user_id, date__gt=close_day, hopsworks_cluster__isnull=False
        )
        .select_related("hopsworks_cluster")
        .order_by("date")
    )
    owed += [(row.hopsworks_cluster, row.date) for row in later]
    for cluster, day in owed:
        run = usage_collect_day(cluster=cluster, day=day, actor=f"close:{closure.user_id}")
        if run.status != UsageCollectionRun.Status.SUCCEEDED:
            raise CloseStepWaiting(f"collecting {cluster.name} {day}: {run.error}")
    _record(closure, usage_collected_at=timezone.now())


def _report_everything(closure: AccountClosure) -> None:
    from billing.stripe_reporting import usage_report_to_stripe

    if closure.usage_reported_at is not None:
        return
    if closure.subscription_id:  # with no live subscription the usage stays unbilled
        run = usage_report_to_stripe(user_ids=[closure.user_id])
        if run.errors:
            raise CloseStepWaiting("reporting usage to Stripe: " + "; ".join(run.errors[:3]))
        if _unreported_cents(closure.user_id):
            raise CloseStepWaiting("reporting usage to Stripe: not all of it was accepted yet")
    _record(closure, usage_reported_at=timezone.now())


def _unreported_cents(user_id: str) -> int:
    months = (
        UsageDaily.objects.filter(user_id=user_id, billed_via=UsageDaily.BilledVia.STRIPE)
        .dates("date", "month")
        .distinct()
    )
    missing = 0
    for month in months:
        target = sum(month_cents_by_resource(user_id, month).values())
        reported = sum(
            StripeUsageReport.objects.filter(user_id=user_id, month=month).values_list(
                "reported_cents", flat=True
            )
        )
        missing += abs(target - reported)
    return missing


def _cancel_with_final_invoice(closure: AccountClosure) -> None:
    if closure.subscription_canceled_at is not None or not closure.subscription_id:
        return
    subscription_id = closure.subscription_id
    # Stripe aggregates meter events asynchronously: the final invoice bills what its meters
    # have counted when it is made, so it is asked for once they count all we reported.
    try:
        behind = _stripe_behind(closure.user_id)
    except gateway.StripeGatewayError as error:
        raise CloseStepWaiting(str(error)) from error
    if behind:
        raise CloseStepWaiting(f"waiting for Stripe's meters to count the usage: {behind}")
    # Recorded before Stripe is asked: the subscription.deleted webhook that follows knows
    # the final invoice is ours and makes no other.
    SubscriptionEnd.objects.get_or_create(
        subscription_id=subscription_id,
        defaults={"user_id": closure.user_id, "ended_by": SubscriptionEnd.EndedBy.US},
    )
    try:
        subscription = gateway.cancel_subscription_with_final_invoice(
            subscription_id=subscription_id
        )
    except gateway.StripeGatewayError as error:
        if error.status != 404:
            raise CloseStepWaiting(str(error)) from error
        try:  # canceled already (an earlier answer lost, or at Stripe): read what it is
            subscription = gateway.retrieve_subscription(subscription_id=subscription_id)
        except gateway.StripeGatewayError as again:
            raise CloseStepWaiting(str(again)) from again
    invoice = subscription.get("latest_invoice") or ""
    if isinstance(invoice, dict):
        invoice = invoice.get("id") or ""
    SubscriptionEnd.objects.filter(subscription_id=subscription_id).update(
        final_invoice_id=invoice, status=SubscriptionEnd.Status.INVOICED, settled_at=timezone.now()
    )
    _record(closure, subscription_canceled_at=timezone.now(), final_invoice_id=invoice)


def _stripe_behind(user_id: str) -> str:
    """What Stripe's meters have not counted yet of the running month's meter events, or ""."""
    now = timezone.now()
    month = now.date().replace(day=1)
    start, _ = month_bounds(month)
    end = int(now.timestamp()) // 60 * 60 + 60
    customer_id = User.objects.values_list("stripe_customer_id", flat=True).get(pk=user_id)
    catalog = {entry.resource: entry for entry in StripeCatalogEntry.objects.all()}
    for report in StripeUsageReport.objects.filter(user_id=user_id, month=month):
        expected = report.reported_cents - report.adjusted_cents
        if not expected or report.resource not in catalog:
            continue
        counted = gateway.meter_event_summary_total(
            meter_id=catalog[report.resource].meter_id,
            customer_id=customer_id,
            start_time=start,
            end_time=end,
        )
        if counted != expected:
            return f"{report.resource}: {counted} of {expected} cents counted"
    return ""


def _record_balance(closure: AccountClosure) -> None:
    if closure.prepaid_balance is None:
        user = User.objects.get(pk=closure.user_id)
        _record(closure, prepaid_balance=selectors.credit_balance(user))


def _release_slot(closure: AccountClosure) -> None:
    from clusters.services import NotAssigned, assignment_unassign

    if closure.slot_released_at is not None:
        return
    user = User.objects.get(pk=closure.user_id)
    with contextlib.suppress(NotAssigned):  # not on a cluster: no slot to release
        assignment_unassign(user=user, actor=f"close:{closure.actor}")
    _record(closure, slot_released_at=timezone.now())


def _confirm_deactivated(closure: AccountClosure) -> None:
    from clusters.account_sync import hopsworks_accounts_sync

    if closure.account_deactivated_at is not None:
        return
    user = User.objects.get(pk=closure.user_id)
    accounts = HopsworksAccount.objects.filter(user=user)
    if accounts.pending().exists():
        report = hopsworks_accounts_sync(user=user)
        if report.failed or accounts.pending().exists():
            detail = "; ".join(report.errors) or "another sync is on it"
            raise CloseStepWaiting(f"deactivating the Hopsworks account: {detail}")
    _record(closure, account_deactivated_at=timezone.now())


# Nothing is deleted while money is open ------------------------------------------------


def money_open_reasons(user: User) -> list[str]:
    """Why the user's row must be kept: an open prepaid balance, invoices not settled,
    usage not yet reported to Stripe or not yet invoiced. Empty when nothing is open."""
    reasons = []
    balance = selectors.credit_balance(user)
    if balance:
        reasons.append(f"an open balance of ${balance:.2f} (refund or settle it first)")
    open_invoices = BillingHistory.objects.filter(
        user=user, status__in=[BillingHistory.Status.PENDING, BillingHistory.Status.FAILED]
    ).count()
    if open_invoices:
        reasons.append(f"{open_invoices} unpaid or open invoice(s)")
    unbilled = selectors.unbilled_usage(user_ids=[user.pk]).get(user.pk)
    if unbilled:
        reasons.append(f"usage of ${unbilled} not yet reported to Stripe")
    elif _unreported_cents(user.pk):
        reasons.append("usage not yet reported to Stripe")
    if StripeUsageAdjustment.objects.filter(
        user=user, status=StripeUsageAdjustment.Status.PENDING
    ).exists():
        reasons.append("a usage correction not yet sent to Stripe")
    if _reported_not_invoiced(user):
        reasons.append("usage reported to Stripe but not yet invoiced")
    return reasons


def _reported_not_invoiced(user: User) -> bool:
    """Stripe-billed usage on a day no finalized invoice of theirs covers yet."""
    last_usage = (
        UsageDaily.objects.filter(
            user=user, billed_via=UsageDaily.BilledVia.STRIPE, total_cost__gt=0
        )
        .order_by("-date")
        .values_list("date", flat=True)
        .first()
    )
    if last_usage is None:
        return False
    covered_until = (
        BillingHistory.objects.filter(user=user, finalized_at__isnull=False)
        .exclude(period_end__isnull=True)
        .order_by("-period_end")
        .values_list("period_end", flat=True)
        .first()
    )
    return covered_until is None or covered_until.astimezone(dt.UTC).date() < last_usage


def refuse_deleting_with_money_open(sender, instance: User, **kwargs) -> None:
    """pre_delete on User: every deletion path (admin, shell, a cascade) is refused while
    money is open, with the reasons."""
    reasons = money_open_reasons(instance)
    if reasons:
        raise ProtectedError(
            f"{instance.email} cannot be deleted while money is open: "
            + "; ".join(reasons)
            + ". Close the account instead: the row is kept.",
            set(),
        )
