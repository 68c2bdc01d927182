"""Leaving: account closes, subscriptions that ended, Auth0's user deletions. Read-only:
written by billing.closing, billing.subscription_end and billing.auth0_log_stream."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.admin_search import UserFirstSearchMixin
from billing.admin.base import ReadOnlyAdmin
from billing.models import AccountClosure, Auth0LogEvent, CreditPurchase, SubscriptionEnd
from plumbing.admin_lists import (
    EstimatedCountAdminMixin,
    ExactSearchAdminMixin,
    IndexOrderAdminMixin,
)
from plumbing.admin_ranges import date_range
from plumbing.formatting import money


@admin.register(AccountClosure)
class AccountClosureAdmin(UserFirstSearchMixin, ReadOnlyAdmin):
    """Each close and its steps; a step not done says what it waits for (`last_error`) and
    the hourly `billing.advance_account_closures` queues it again."""

    list_display = (
        "user",
        "closed_at",
        "mode",
        "actor",
        "prepaid_balance",
        "final_invoice_id",
        "finished_at",
        "last_error",
    )
    money_fields = {"prepaid_balance": None}
    list_select_related = ("user",)
    list_filter = ("mode", "actor", date_range("closed_at"))
    # Exact, and the user-first search (accounts/admin_search.py).
    search_fields = ("subscription_id", "final_invoice_id")
    readonly_fields = ("refundable_purchases",)

    @admin.display(description="Refundable credit purchases")
    def refundable_purchases(self, obj):
        purchases = CreditPurchase.objects.filter(user_id=obj.user_id).order_by("-created_at")
        rows = [(p, p.refundable) for p in purchases if p.refundable > 0]
        if not rows:
            return "None."
        url = reverse("admin:billing_creditpurchase_changelist") + f"?q={obj.user.email}"
        return format_html(
            "<ul>{}</ul><a href='{}'>Refund them from Credit purchases</a>",
            format_html_join(
                "",
                "<li>{} of {} ({})</li>",
                (
                    (
                        money(left, p.currency),
                        money(p.amount, p.currency),
                        f"{p.created_at:%Y-%m-%d}",
                    )
                    for p, left in rows
                ),
            ),
            url,
        )


@admin.register(SubscriptionEnd)
class SubscriptionEndAdmin(UserFirstSearchMixin, ReadOnlyAdmin):
    list_display = (
        "subscription_id",
        "user",
        "ended_by",
        "status",
        "final_invoice_id",
        "invoiced_cents",
        "last_error",
        "created_at",
    )
    cents_fields = ("invoiced_cents",)
    list_select_related = ("user",)
    list_filter = ("ended_by", "status", date_range("ended_at"))
    search_fields = ("subscription_id", "final_invoice_id")  # exact, and user-first


@admin.register(Auth0LogEvent)
class Auth0LogEventAdmin(
    IndexOrderAdminMixin, ExactSearchAdminMixin, EstimatedCountAdminMixin, ReadOnlyAdmin
):
    """User deletions Auth0's log stream delivered, and what each did."""

    list_display = ("log_id", "type", "user_id", "outcome", "detail", "received_at")
    list_filter = ("outcome", date_range("received_at"))
    # Exact and case-sensitive, as Auth0 writes them: one probe of the primary key or of
    # auth0_log_event_user. (The user id may name a user we no longer have: not resolved.)
    search_fields = ("log_id", "user_id")
    sortable_by = ("received_at",)  # auth0_log_event_newest, either way
