"""What Stripe sent and what we sent Stripe: invoices, events, catalog, reports."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from billing import stripe_gateway as gateway
from billing.admin.base import ReadOnlyAdmin
from billing.models import (
    BillingHistory,
    StripeCatalogEntry,
    StripeEvent,
    StripeUsageAdjustment,
    StripeUsageReport,
)
from billing.stripe_events import DONE, stripe_event_not_processable
from billing.tasks import stripe_event_defer
from plumbing.admin_report import ActionReport


@admin.register(BillingHistory)
class BillingHistoryAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "amount",
        "amount_credited",
        "amount_refunded",
        "currency",
        "status",
        "stripe_status",
        "description",
        "stripe_link",
    )
    money_fields = {
        "amount": "currency",
        "amount_credited": "currency",
        "amount_refunded": "currency",
    }
    list_select_related = ("user",)
    list_filter = ("status", "stripe_status", "currency", "created_at")
    search_fields = ("user__email", "=stripe_invoice_id", "description")
    date_hierarchy = "created_at"

    @admin.display(description="Stripe invoice")
    def stripe_link(self, obj):
        if not obj.stripe_invoice_id:
            return "-"
        return format_html(
            '<a href="{}">{}</a>',
            gateway.dashboard_url("invoices", obj.stripe_invoice_id),
            obj.stripe_invoice_id,
        )


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("created", "type", "status", "attempts", "short_error", "id")
    list_filter = ("status", "type")
    search_fields = ("=id", "type")
    date_hierarchy = "created"
    actions = ("process_again",)
    fields = (
        "id",
        "type",
        "created",
        "status",
        "attempts",
        "error",
        "received_at",
        "processed_at",
        "livemode",
        "payload",
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
class StripeUsageReportAdmin(ReadOnlyAdmin):
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
    list_filter = ("month", "resource")
    search_fields = ("user__email",)


@admin.register(StripeUsageAdjustment)
class StripeUsageAdjustmentAdmin(ReadOnlyAdmin):
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
    list_filter = ("status", "month")
    search_fields = ("user__email", "=identifier", "=stripe_invoice_item_id")
