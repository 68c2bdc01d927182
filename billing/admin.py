from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.db.models import F
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts.models import User
from billing import selectors
from billing import stripe_gateway as gateway
from billing.collection import collect_usage
from billing.credits import CreditError, credits_grant
from billing.models import (
    BillingAccount,
    BillingHistory,
    CreditLedgerEntry,
    Price,
    StripeCatalogEntry,
    StripeEvent,
    StripeUsageReport,
    UsageCollectionRun,
    UsageDaily,
    UserCredits,
)
from billing.pricing import to_cents
from billing.services import billing_mode_set
from billing.stripe_billing import invoices_sync, stripe_event_process
from clusters.admin import ClusterUserAdmin, HopsworksClusterAdmin
from clusters.models import HopsworksCluster
from plumbing.admin_confirm import confirm_then


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written only by services: viewable, never added, edited or deleted here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = (
        "date",
        "user",
        "hopsworks_cluster",
        "cpu_hours",
        "gpu_hours",
        "storage_gb_months",
        "api_calls",
        "cost",
    )
    list_select_related = ("user", "hopsworks_cluster")
    list_filter = ("date", "hopsworks_cluster")
    search_fields = ("user__email", "=user__id")
    date_hierarchy = "date"
    show_full_result_count = False

    @admin.display(description="total cost", ordering="total_cost")
    def cost(self, obj):
        return f"${obj.total_cost.normalize():f}"

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            totals = selectors.usage_totals(changelist.queryset)
            totals["total_cost_cents"] = to_cents(totals["total_cost"])
            response.context_data["usage_totals"] = totals
        return response


def _collect_again(modeladmin, request, runs_or_clusters, days_for):
    outcomes = []
    for cluster, days in days_for(runs_or_clusters):
        outcomes += collect_usage(clusters=[cluster], days=days, actor=request.user.email)
    for run in outcomes:
        if run.status == UsageCollectionRun.Status.SUCCEEDED:
            modeladmin.message_user(
                request, f"{run.cluster.name} {run.date}: {run.rows_written} rows", messages.SUCCESS
            )
        else:
            modeladmin.message_user(
                request, f"{run.cluster.name} {run.date}: {run.error}", messages.ERROR
            )


@admin.register(UsageCollectionRun)
class UsageCollectionRunAdmin(ReadOnlyAdmin):
    list_display = (
        "date",
        "cluster",
        "status",
        "rows_written",
        "unknown",
        "attempts",
        "short_error",
        "finished_at",
    )
    list_select_related = ("cluster",)
    list_filter = ("status", "cluster", "date")
    date_hierarchy = "date"
    readonly_fields = ("unknown_list", "notes_list")
    fields = (
        "cluster",
        "date",
        "status",
        "rows_written",
        "attempts",
        "error",
        "unknown_list",
        "notes_list",
        "started_at",
        "finished_at",
    )
    actions = ("collect_again",)

    @admin.display(description="unknown namespaces")
    def unknown(self, obj):
        return len(obj.unknown_namespaces) or "-"

    @admin.display(description="error")
    def short_error(self, obj):
        return (obj.error[:120] + "...") if len(obj.error) > 120 else obj.error

    @admin.display(description="unknown namespaces")
    def unknown_list(self, obj):
        if not obj.unknown_namespaces:
            return "None"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><code>{}</code>: {}</li>",
                ((n["namespace"], n["reason"]) for n in obj.unknown_namespaces),
            ),
        )

    @admin.display(description="notes (values counted as zero)")
    def notes_list(self, obj):
        if not obj.notes:
            return "None"
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((n,) for n in obj.notes))
        )

    def has_change_permission(self, request, obj=None):  # the detail page is a read-only view
        return False

    @admin.action(description="Collect these days again")
    def collect_again(self, request, queryset):
        def days_for(runs):
            by_cluster = {}
            for run in runs.select_related("cluster"):
                by_cluster.setdefault(run.cluster, []).append(run.date)
            return [(cluster, sorted(days)) for cluster, days in by_cluster.items()]

        _collect_again(self, request, queryset, days_for)


class PriceForm(forms.ModelForm):
    class Meta:
        model = Price
        fields = ("resource", "unit_price", "effective_from", "user", "note")

    def clean_effective_from(self):
        day = self.cleaned_data["effective_from"]
        if day < timezone.now().date():
            raise forms.ValidationError(
                "A price cannot start in the past: past days keep the price they were "
                "charged at. Use today or a later date."
            )
        return day

    def clean_unit_price(self):
        price = self.cleaned_data["unit_price"]
        if price < 0:
            raise forms.ValidationError("A price cannot be negative.")
        return price


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """The rate card and negotiated prices. A price already in effect cannot be edited or
    deleted (past days were charged with it); a change is a new row from a later date."""

    form = PriceForm
    list_display = ("resource", "unit_price", "effective_from", "user", "in_effect", "note")
    list_select_related = ("user",)
    list_filter = ("resource", ("user", admin.EmptyFieldListFilter))
    search_fields = ("user__email", "note")
    autocomplete_fields = ("user",)
    ordering = ("resource", "-effective_from")

    @admin.display(boolean=True, description="in effect")
    def in_effect(self, obj):
        return obj.effective_from <= timezone.now().date()

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.effective_from <= timezone.now().date():
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.effective_from <= timezone.now().date():
            return False
        return super().has_delete_permission(request, obj)


@admin.register(CreditLedgerEntry)
class CreditLedgerAdmin(ReadOnlyAdmin):
    """Append-only: corrections are new entries (a grant or an adjustment)."""

    list_display = (
        "created_at",
        "user",
        "kind",
        "amount",
        "balance_after",
        "reference",
        "actor",
        "reason",
    )
    list_select_related = ("user",)
    list_filter = ("kind", "created_at")
    search_fields = ("user__email", "=reference")
    date_hierarchy = "created_at"


class GrantForm(forms.Form):
    amount = forms.DecimalField(
        min_value=Decimal("0.01"),
        max_digits=12,
        decimal_places=2,
        help_text="US dollars of credit to add to each selected user.",
    )
    reason = forms.CharField(max_length=500, help_text="Kept in the ledger.")
    # Generated when the form is shown: resubmitting the same form grants once.
    token = forms.CharField(widget=forms.HiddenInput, initial=lambda: uuid.uuid4().hex)


def _grant(modeladmin, request, users):
    def apply(data):
        granted = 0
        for user in users:
            try:
                entry = credits_grant(
                    user=user,
                    amount=data["amount"],
                    reason=data["reason"],
                    actor=request.user,
                    reference=f"{data['token']}:{user.pk}",
                )
            except CreditError as error:
                modeladmin.message_user(request, f"{user.email}: {error}", messages.ERROR)
                continue
            granted += entry is not None
        modeladmin.message_user(
            request, f"${data['amount']} granted to {granted} user(s).", messages.SUCCESS
        )

    return apply


class GrantCreditsMixin:
    """The "Grant credits" action, for any admin whose rows lead to users."""

    def users_of(self, queryset):
        return list(queryset)

    def has_grant_permission(self, request):
        return request.user.has_perm("billing.add_creditledgerentry")

    @admin.action(description="Grant credits", permissions=["grant"])
    def grant_credits(self, request, queryset):
        return confirm_then(
            self,
            request,
            queryset,
            title="Grant credits",
            message="Add credit to each selected user's prepaid balance.",
            confirm_label="Grant",
            form_class=GrantForm,
            apply=_grant(self, request, self.users_of(queryset)),
        )


class NegativeBalanceFilter(admin.SimpleListFilter):
    title = "balance"
    parameter_name = "balance"

    def lookups(self, request, model_admin):
        return (("negative", "Below zero"), ("positive", "Zero or more"))

    def queryset(self, request, queryset):
        if self.value() == "negative":
            return queryset.filter(total_used__gt=F("total_purchased"))
        if self.value() == "positive":
            return queryset.filter(total_used__lte=F("total_purchased"))
        return queryset


@admin.register(UserCredits)
class UserCreditsAdmin(GrantCreditsMixin, ReadOnlyAdmin):
    list_display = ("user", "balance_display", "total_purchased", "total_used", "updated_at")
    list_select_related = ("user",)
    list_filter = (NegativeBalanceFilter,)
    search_fields = ("user__email",)
    actions = ("grant_credits",)

    @admin.display(description="balance")
    def balance_display(self, obj):
        return balance_html(obj.balance)

    def users_of(self, queryset):
        return [row.user for row in queryset.select_related("user")]


def balance_html(balance):
    if balance < 0:
        return format_html(
            '<strong style="color:#dc2626">${} (below zero)</strong>', to_cents(balance)
        )
    return f"${to_cents(balance)}"


class BillingModeFilter(admin.SimpleListFilter):
    title = "billing mode"
    parameter_name = "billing_mode"

    def lookups(self, request, model_admin):
        return BillingAccount.Mode.choices

    def queryset(self, request, queryset):
        if self.value() == BillingAccount.Mode.PREPAID:
            return queryset.filter(billing_account__mode=BillingAccount.Mode.PREPAID)
        if self.value() == BillingAccount.Mode.POSTPAID:
            return queryset.exclude(billing_account__mode=BillingAccount.Mode.PREPAID)
        return queryset


class BillingUserAdmin(GrantCreditsMixin, ClusterUserAdmin):
    """The users admin with what each user costs and how they pay."""

    list_filter = (*ClusterUserAdmin.list_filter, BillingModeFilter)
    readonly_fields = (*ClusterUserAdmin.readonly_fields, "billing", "stripe")
    actions = (
        *ClusterUserAdmin.actions,
        "make_prepaid",
        "make_postpaid",
        "grant_credits",
        "sync_invoices",
    )

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return (*fieldsets[:3], ("Billing", {"fields": ("billing", "stripe")}), *fieldsets[3:])

    @admin.display(description="Stripe")
    def stripe(self, obj):
        account = BillingAccount.objects.filter(user=obj).first()
        status = (account.subscription_status if account else "") or "none"
        if not obj.stripe_customer_id:
            return f"No Stripe customer yet. Subscription: {status}."
        return format_html(
            'Customer <a href="{}">{}</a>. Subscription: {}.',
            gateway.dashboard_url("customers", obj.stripe_customer_id),
            obj.stripe_customer_id,
            status,
        )

    @admin.action(description="Sync invoices from Stripe (repairs missed webhooks)")
    def sync_invoices(self, request, queryset):
        synced = 0
        for user in queryset.exclude(stripe_customer_id__isnull=True):
            try:
                synced += invoices_sync(user=user)
            except gateway.StripeGatewayError as error:
                self.message_user(request, f"{user.email}: {error}", messages.ERROR)
        self.message_user(request, f"{synced} invoice(s) brought up to date.")

    @admin.display(description="billing")
    def billing(self, obj):
        mode = selectors.billing_mode(obj)
        days = list(selectors.daily_breakdown(obj, days=30))
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>${}</td></tr>",
            (
                (
                    d["date"],
                    d["cpu_hours"].normalize(),
                    d["gpu_hours"].normalize(),
                    d["storage_gb_months"].quantize(Decimal("0.0001")),
                    to_cents(d["total_cost"]),
                )
                for d in days
            ),
        )
        return format_html(
            "<div>Mode: {}</div><div>Month to date: ${}</div><div>Credit balance: {}</div>"
            "<table><tr><th>Date</th><th>CPU h</th><th>GPU h</th><th>Storage GB-mo</th>"
            "<th>Cost</th></tr>{}</table>",
            BillingAccount.Mode(mode).label,
            to_cents(selectors.month_to_date_cost(obj)),
            balance_html(selectors.credit_balance(obj)),
            rows or mark_safe("<tr><td colspan=5>No usage in the last 30 days.</td></tr>"),
        )

    def _set_mode(self, request, queryset, mode):
        label = BillingAccount.Mode(mode).label

        def apply(_data):
            changed = sum(billing_mode_set(user=u, mode=mode, actor=request.user) for u in queryset)
            self.message_user(request, f"{changed} user(s) switched to {label}.", messages.SUCCESS)

        return confirm_then(
            self,
            request,
            queryset,
            title=f"Switch to {label}",
            message="Usage already recorded keeps the way it was settled; days collected from "
            "now on follow the new mode.",
            confirm_label=f"Yes, switch to {label}",
            apply=apply,
        )

    @admin.action(description="Switch to prepaid (credits)", permissions=["change"])
    def make_prepaid(self, request, queryset):
        return self._set_mode(request, queryset, BillingAccount.Mode.PREPAID)

    @admin.action(description="Switch to postpaid (metered)", permissions=["change"])
    def make_postpaid(self, request, queryset):
        return self._set_mode(request, queryset, BillingAccount.Mode.POSTPAID)


@admin.register(BillingHistory)
class BillingHistoryAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "amount",
        "currency",
        "status",
        "description",
        "stripe_link",
    )
    list_select_related = ("user",)
    list_filter = ("status", "currency", "created_at")
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
        counts = {}
        for event_id in queryset.values_list("pk", flat=True):
            event = stripe_event_process(event_id=event_id)
            counts[event.status] = counts.get(event.status, 0) + 1
            if event.status == StripeEvent.Status.FAILED:
                self.message_user(request, f"{event.id}: {event.error}", messages.ERROR)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        self.message_user(request, f"Events now: {summary}.")


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
        "events_sent",
        "last_error",
        "last_reported_at",
    )
    list_select_related = ("user",)
    list_filter = ("month", "resource")
    search_fields = ("user__email",)


class BillingClusterAdmin(HopsworksClusterAdmin):
    actions = (*HopsworksClusterAdmin.actions, "collect_now")

    @admin.action(description="Collect yesterday's usage now")
    def collect_now(self, request, queryset):
        yesterday = timezone.now().date() - dt.timedelta(days=1)
        _collect_again(
            self, request, queryset, lambda clusters: [(c, [yesterday]) for c in clusters]
        )


admin.site.unregister(User)
admin.site.register(User, BillingUserAdmin)
admin.site.unregister(HopsworksCluster)
admin.site.register(HopsworksCluster, BillingClusterAdmin)
