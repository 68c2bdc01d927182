"""A user's whole story on their admin page: where they are and how they pay now (at a
glance), and every change to them in one timeline, newest first.

Each source is read with one bounded query, so the page's queries do not grow with the
user's history (tests/console/test_user_story.py counts them).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.models import User, UserStatusChange
from billing import selectors as billing_selectors
from billing.admin import user_facts as billing_facts
from billing.limits import spending_cap_of
from billing.models import (
    BillingAdjustment,
    BillingHistory,
    BillingProfile,
    CreditLedgerEntry,
    ServiceStop,
    SpendingAlert,
    SpendingLimitChange,
)
from clusters import selectors as cluster_selectors
from clusters.admin import user_facts as cluster_facts
from plumbing.formatting import money
from plumbing.memo import once

# Per source: the newest this many; the timeline shows the newest TIMELINE_LENGTH of all.
TIMELINE_LENGTH = 50
INVOICES_SHOWN = 5
# Status changes have their own record (UserStatusChange); the admin's log of them repeats it.
STATUS_LOG_PREFIXES = ("Suspended", "Reactivated")


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    kind: str
    what: str
    by: str = ""
    note: str = ""


def _when(moment: dt.datetime | None) -> str:
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC" if moment else "-"


def _limit(value) -> str:
    return money(value) if value is not None else "default"


def status_changes(user: User) -> list[UserStatusChange]:
    """The user's newest status changes, newest first, read once per page."""
    return once(
        user,
        "accounts.status_changes",
        lambda: list(
            UserStatusChange.objects.filter(user=user).order_by("-created_at", "-id")[
                :TIMELINE_LENGTH
            ]
        ),
    )


def user_timeline(user: User, *, length: int = TIMELINE_LENGTH) -> list[Event]:
    """Every recorded change to the user, newest first: status changes, credit movements
    other than usage, operators' credits and debits, mode switches, spending limits, stops,
    the close, and what operators did in the admin (moves, assignments, edits)."""
    events: list[Event] = []
    for change in status_changes(user)[:length]:
        events.append(
            Event(
                change.created_at,
                "Status",
                f"{change.get_from_status_display()} → {change.get_to_status_display()}",
                change.actor,
                change.reason,
            )
        )
    # Operators' grants and debits are shown once, as adjustments (which say where they went).
    for entry in (
        CreditLedgerEntry.objects.filter(user=user)
        .exclude(kind=CreditLedgerEntry.Kind.USAGE)
        .exclude(reference__in=BillingAdjustment.objects.filter(user=user).values("reference"))
        .order_by("-created_at", "-id")[:length]
    ):
        events.append(
            Event(
                entry.created_at,
                "Credits",
                f"{entry.get_kind_display()} {money(entry.amount)} "
                f"(balance after {money(entry.balance_after)})",
                entry.actor,
                entry.reason,
            )
        )
    for adjustment in billing_facts.adjustments(user)[:length]:
        kind = adjustment.get_direction_display()
        events.append(
            Event(
                adjustment.created_at,
                "Adjustment",
                f"{kind} {money(adjustment.amount)} to {adjustment.get_channel_display()} "
                f"({adjustment.get_status_display().lower()})",
                adjustment.actor,
                adjustment.reason + (f" [{adjustment.error}]" if adjustment.error else ""),
            )
        )
    for change in billing_facts.mode_changes(user)[:length]:
        events.append(
            Event(
                change.effective_at,
                "Billing mode",
                f"{change.get_from_mode_display()} → {change.get_to_mode_display()}",
                change.actor,
                change.reason,
            )
        )
    for change in SpendingLimitChange.objects.filter(user=user).order_by("-created_at", "-id")[
        :length
    ]:
        events.append(
            Event(
                change.created_at,
                "Spending limit",
                f"{change.get_field_display()} {_limit(change.old)} → {_limit(change.new)}",
                change.actor + (" (the user)" if change.by_user else ""),
            )
        )
    for stop in ServiceStop.objects.filter(user=user).order_by("-detected_at", "-id")[:length]:
        if stop.resolved_at:
            events.append(
                Event(
                    stop.resolved_at,
                    "Service",
                    f"Stop ended ({stop.get_resolution_display().lower()}): "
                    f"{stop.get_reason_display()}",
                    stop.resolved_by,
                    stop.resolution_note,
                )
            )
        if stop.stopped_at:
            events.append(
                Event(stop.stopped_at, "Service", f"Stopped: {stop.get_reason_display()}")
            )
        events.append(
            Event(
                stop.detected_at,
                "Service",
                f"Stop pending (from {_when(stop.enforce_at)}): {stop.get_reason_display()}",
                note=stop.detail,
            )
        )
    assignment = cluster_facts.placement(user).assignment
    if assignment is not None:  # earlier moves are in the admin's log below
        events.append(
            Event(
                assignment.assigned_at,
                "Placement",
                f"Placed on {assignment.hopsworks_cluster.name}",
            )
        )
    closure = billing_facts.closure(user)
    if closure is not None:
        events.append(Event(closure.closed_at, "Account", "Closed", closure.actor, closure.reason))
    for entry in (
        LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(User), object_id=user.pk
        )
        .select_related("user")
        .order_by("-action_time", "-id")[:length]
    ):
        message = entry.get_change_message() or entry.get_action_flag_display()
        if message.startswith(STATUS_LOG_PREFIXES):
            continue
        events.append(Event(entry.action_time, "Admin", message, getattr(entry.user, "email", "")))
    events.sort(key=lambda event: event.at, reverse=True)
    return events[:length]


def timeline_html(user: User):
    events = user_timeline(user)
    if not events:
        return "Nothing recorded yet."
    rows = format_html_join(
        "",
        '<tr class="story-event"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
        ((_when(e.at), e.kind, e.what, e.by or "-", e.note or "") for e in events),
    )
    return format_html(
        '<table class="story-timeline"><thead><tr><th>When</th><th>What</th><th>Change</th>'
        "<th>By</th><th>Note</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


def current_state(user: User) -> str:
    """One line for a confirmation page: status, mode and balance or month to date, cluster."""
    mode = billing_selectors.billing_mode(user)
    if mode == BillingProfile.Mode.PREPAID:
        money_part = f"prepaid, balance {money(billing_selectors.credit_balance(user))}"
    else:
        money_part = f"postpaid, month to date {money(billing_selectors.month_to_date_cost(user))}"
    assignment = cluster_selectors.assignment_of(user)
    where = f"on {assignment.hopsworks_cluster.name}" if assignment else "on no cluster"
    return f"{user.get_status_display()}; {money_part}; {where}"


def glance_html(user: User):
    """Status, placement and Hopsworks account, how they pay, last invoices, open stops and
    the last alert."""
    last_status = next(iter(status_changes(user)), None)
    since = (
        f" since {_when(last_status.created_at)} (by {last_status.actor})"
        if last_status is not None
        else ""
    )
    placement = cluster_facts.placement(user)
    accounts = format_html_join(
        "",
        "<li>Hopsworks account on {}: wanted {}, is {}{}</li>",
        (
            (
                account.cluster.name,
                account.get_desired_display().lower(),
                account.get_synced_display().lower(),
                f" (pending; last error: {account.last_error})"
                if account.last_error
                else (" (pending)" if account.desired != account.synced else ""),
            )
            for account in placement.accounts
        ),
    )
    failing = format_html_join(
        "",
        '<p class="errornote">Hopsworks account on {} not in place yet ({} attempts; last '
        "error: {}). Our records place the user there; Hopsworks follows only when the "
        "sync succeeds.</p>",
        (
            (account.cluster.name, account.attempts, account.last_error)
            for account in placement.accounts
            if account.last_error and account.desired != account.synced
        ),
    )
    profile = billing_facts.profile(user)
    mode = profile.mode if profile else BillingProfile.Mode.POSTPAID
    forecast = billing_facts.forecast(user)
    if mode == BillingProfile.Mode.PREPAID:
        paying = format_html(
            "Prepaid: balance <strong>{}</strong>; month to date {}",
            money(billing_facts.credit_balance(user)),
            money(forecast.month_to_date),
        )
    else:
        paying = format_html(
            "Postpaid: month to date <strong>{}</strong> (projected {}) of a {} cap",
            money(forecast.month_to_date),
            money(forecast.projected),
            money(spending_cap_of(profile)),
        )
    invoices = format_html_join(
        "",
        '<li><a href="{}">{}</a> {} {} ({})</li>',
        (
            (
                reverse("admin:billing_billinghistory_change", args=[invoice.pk]),
                f"{invoice.created_at:%Y-%m-%d}",
                money(invoice.amount, invoice.currency),
                invoice.description or "",
                invoice.get_status_display().lower(),
            )
            for invoice in BillingHistory.objects.filter(user=user).order_by("-created_at")[
                :INVOICES_SHOWN
            ]
        ),
    )
    stops = format_html_join(
        "",
        '<li class="errornote">{}: {}</li>',
        (
            (
                stop.get_reason_display(),
                f"stopped since {_when(stop.stopped_at)}"
                if stop.stopped_at
                else f"service stops {_when(stop.enforce_at)} unless resolved",
            )
            for stop in ServiceStop.objects.filter(user=user, resolved_at__isnull=True).order_by(
                "enforce_at", "pk"
            )
        ),
    )
    alert = SpendingAlert.objects.filter(user=user).order_by("-created_at", "-id").first()
    return format_html(
        '<div class="user-story">'
        "<div>Status: <strong>{}</strong>{}</div>"
        "<div>Placement: {}</div><ul>{}</ul>{}"
        "<div>{}</div>"
        "<div>Last invoices:</div><ul>{}</ul>"
        "<div>Service stops:</div><ul>{}</ul>"
        "<div>Last spending alert: {}</div>"
        "</div>",
        user.get_status_display(),
        since,
        placement.summary,
        accounts,
        failing,
        paying,
        invoices or format_html("<li>{}</li>", "None."),
        stops or format_html("<li>{}</li>", "None open."),
        f"{alert.get_kind_display()} on {_when(alert.created_at)}" if alert else "none",
    )


STORY_SECTION = ("At a glance", {"fields": ("at_a_glance",)})
HISTORY_SECTION = ("History (newest first)", {"fields": ("history",)})


class UserStoryAdminMixin:
    """The user page's summary and timeline, the state shown on every confirmation, and the
    actions offered as buttons on the page (ObjectActionsMixin)."""

    story_fields = ("at_a_glance", "history")
    story_buttons = (
        "suspend_users",
        "reactivate_users",
        "move_to_cluster",
        "grant_credits",
        "make_prepaid",
        "make_postpaid",
        "debit_accounts",
        "set_spending_limits",
    )

    @admin.display(description="summary")
    def at_a_glance(self, obj):
        return glance_html(obj)

    @admin.display(description="every change")
    def history(self, obj):
        return timeline_html(obj)

    def describe_for_confirm(self, obj) -> str:
        return current_state(obj)
