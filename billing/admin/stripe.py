"""What Stripe sent and what we sent Stripe: invoices, events, catalog, reports."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html

from accounts.admin_search import UserFirstSearchMixin
from billing import stripe_gateway as gateway
from billing.admin.base import ReadOnlyAdmin
from billing.exports import BillingHistoryResource
from billing.models import (
    BillingHistory,
    StripeCatalogEntry,
    StripeEvent,
    StripeUsageAdjustment,
    StripeUsageReport,
)
from billing.stripe_events import DONE, stripe_event_not_processable
from billing.tasks import stripe_event_defer
from plumbing.admin_cells import cut, figures, user_cell
from plumbing.admin_confirm import ObjectActionsMixin
from plumbing.admin_export import ExportAdminMixin
from plumbing.admin_lists import (
    EstimatedCountAdminMixin,
    ExactSearchAdminMixin,
    IndexedValuesFilter,
    IndexOrderAdminMixin,
)
from plumbing.admin_ranges import date_range
from plumbing.admin_report import ActionReport
from plumbing.formatting import money


@admin.register(BillingHistory)
class BillingHistoryAdmin(
    IndexOrderAdminMixin,
    ExportAdminMixin,
    UserFirstSearchMixin,
    EstimatedCountAdminMixin,
    ReadOnlyAdmin,
):
    export_resource_class = BillingHistoryResource
    # Credited and refunded under the amount, Stripe's status under ours, the currency in
    # the amount: what fits 1280 px.
    list_display = (
        "created_at",
        "user_column",
        "amounts",
        "statuses",
        "description_column",
        "stripe_link",
    )
    money_fields = {
        "amount": "currency",
        "amount_credited": "currency",
        "amount_refunded": "currency",
    }
    list_select_related = ("user",)
    list_filter = (
        "status",
        ("stripe_status", IndexedValuesFilter),
        ("currency", IndexedValuesFilter),
        date_range("created_at"),
    )
    search_fields = ("stripe_invoice_id",)  # exact, and the user-first search
    sortable_by = ("created_at",)  # billing_history_newest, either way
    user_first_order = ("-created_at", "-pk")  # a user's few invoices, by billing_history_user_id

    @admin.display(description="user", ordering="user__email")
    def user_column(self, obj):
        return user_cell(obj.user)

    @admin.display(description="amount", ordering="amount")
    def amounts(self, obj):
        lines = [("", money(obj.amount, obj.currency))]
        if obj.amount_credited:
            lines.append(("credited", money(obj.amount_credited, obj.currency)))
        if obj.amount_refunded:
            lines.append(("refunded", money(obj.amount_refunded, obj.currency)))
        return figures(*lines)

    @admin.display(description="status (Stripe's)", ordering="status")
    def statuses(self, obj):
        if not obj.stripe_status or obj.stripe_status == obj.status:
            return obj.status
        return format_html('{}<span class="quiet">Stripe: {}</span>', obj.status, obj.stripe_status)

    @admin.display(description="description")
    def description_column(self, obj):
        return cut(obj.description)

    @admin.display(description="Stripe invoice")
    def stripe_link(self, obj):
        if not obj.stripe_invoice_id:
            return "-"
        return format_html(
            '<a class="cut narrow" href="{}" title="{}">{}</a>',
            gateway.dashboard_url("invoices", obj.stripe_invoice_id),
            obj.stripe_invoice_id,
            obj.stripe_invoice_id,
        )


@admin.register(StripeEvent)
class StripeEventAdmin(
    IndexOrderAdminMixin,
    ObjectActionsMixin,
    ExactSearchAdminMixin,
    EstimatedCountAdminMixin,
    ReadOnlyAdmin,
):
    list_display = ("created", "type", "status", "attempts", "short_error", "id")
    list_filter = ("status", ("type", IndexedValuesFilter), date_range("created"))
    search_fields = ("id",)  # exact: one index probe; the type is a filter
    search_help_text = "An exact Stripe event id (evt_...)."
    sortable_by = ("created",)  # stripe_event_newest, either way
    actions = ("process_again",)
    object_actions = ("process_again",)
    fields = (
        "id",
        "in_stripe",
        "type",
        "created",
        "status",
        "attempts",
        "error",
        "received_at",
        "processed_at",
        "livemode",
        "payload_pretty",
    )
    readonly_fields = ("in_stripe", "payload_pretty")

    @admin.display(description="in Stripe")
    def in_stripe(self, obj):
        return format_html(
            '<a href="{}">Open this event in Stripe\'s dashboard</a>',
            gateway.dashboard_url("events", obj.pk, livemode=obj.livemode),
        )

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return format_html(
            '<pre class="stripe-payload">{}</pre>', json.dumps(obj.payload, indent=2)
        )

    @admin.display(description="error")
    def short_error(self, obj):
        return (obj.error[:120] + "...") if len(obj.error) > 120 else obj.error

    def has_process_permission(self, request):
        return request.user.has_perm("billing.change_stripeevent")

    @admin.action(description="Process again", permissions=["process"])
    def process_again(self, request, queryset):
        report = ActionReport("event")
        report.watch_jobs("billing.process_stripe_event")
        for event in queryset:
            why_not = stripe_event_not_processable(event)
            if why_not is None:
                stripe_event_defer(event_id=event.pk)
                report.queued(event.pk, f"{event.type} queued for processing")
            elif event.status in DONE:
                report.unchanged(event.pk, why_not)
            else:
                report.not_done(event.pk, why_not)
        report.send(self, request)


@admin.register(StripeCatalogEntry)
class StripeCatalogAdmin(ReadOnlyAdmin):
    list_display = ("resource", "event_name", "meter_id", "product_id", "price_id", "updated_at")


@admin.register(StripeUsageReport)
class StripeUsageReportAdmin(
    IndexOrderAdminMixin, UserFirstSearchMixin, EstimatedCountAdminMixin, ReadOnlyAdmin
):
    """What was reported to Stripe per user, month and resource (a row per user-month and
    resource: 1.3 million at 100,000 postpaid users after four months)."""

    list_display = (
        "month",
        "user",
        "resource",
        "reported_cents",
        "adjusted_cents",
        "events_sent",
        "pending_cents",
        "pending_since",
        "last_error",
        "last_reported_at",
    )
    cents_fields = ("reported_cents", "adjusted_cents", "pending_cents")
    list_select_related = ("user",)
    list_filter = (("month", IndexedValuesFilter), "resource")
    search_fields = ()  # the user-first search (accounts/admin_search.py)
    ordering = ("-month", "-id")
    sortable_by = ("month",)  # stripe_usage_report_month, either way
    # A partial search reads each matching user's reports (stripe_usage_report_once: a
    # few dozen rows a user), not the newest months of everyone's.
    user_first_order = ("-month", "-id")


@admin.register(StripeUsageAdjustment)
class StripeUsageAdjustmentAdmin(UserFirstSearchMixin, ReadOnlyAdmin):
    """Corrections to months Stripe no longer bills by meter events: invoice items."""

    list_display = (
        "month",
        "user",
        "cents",
        "status",
        "description",
        "stripe_invoice_item_id",
        "error",
        "created_at",
        "sent_at",
    )
    cents_fields = ("cents",)
    list_select_related = ("user",)
    list_filter = ("status", "month", date_range("created_at"))
    search_fields = ("identifier", "stripe_invoice_item_id")  # exact, and user-first
