"""The users admin's billing part."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from billing import selectors
from billing import stripe_gateway as gateway
from billing.admin.credits import GrantCreditsMixin, balance_html
from billing.admin.spending import SpendingLimitsAdminMixin
from billing.models import BillingModeChange, BillingProfile
from billing.pricing import to_cents
from billing.profiles import billing_mode_set
from billing.tasks import invoices_sync_queue
from plumbing.admin_confirm import confirm_then
from plumbing.jobs import queued_message


class BillingModeFilter(admin.SimpleListFilter):
    title = "billing mode"
    parameter_name = "billing_mode"

    def lookups(self, request, model_admin):
        return BillingProfile.Mode.choices

    def queryset(self, request, queryset):
        if self.value() == BillingProfile.Mode.PREPAID:
            return queryset.filter(billing_profile__mode=BillingProfile.Mode.PREPAID)
        if self.value() == BillingProfile.Mode.POSTPAID:
            return queryset.exclude(billing_profile__mode=BillingProfile.Mode.PREPAID)
        return queryset


class UnbilledUsageFilter(admin.SimpleListFilter):
    """Users whose Stripe-billed usage is held, unreported, for want of a live subscription."""

    title = "unbilled usage"
    parameter_name = "unbilled"

    def lookups(self, request, model_admin):
        return (("yes", "Unbilled usage (no live subscription)"),)

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(pk__in=list(selectors.unbilled_usage()))
        return queryset


BILLING_SECTION = ("Billing", {"fields": ("billing", "spending", "stripe", "mode_switches")})


class UserBillingAdminMixin(SpendingLimitsAdminMixin, GrantCreditsMixin):
    """The users admin's billing part: what each user costs and how they pay. Its filter,
    fields, section and actions are named; console/admin.py puts them in place."""

    billing_filters = (BillingModeFilter, UnbilledUsageFilter)
    billing_fields = ("billing", "spending", "stripe", "mode_switches")
    billing_actions = (
        "make_prepaid",
        "make_postpaid",
        "grant_credits",
        "set_spending_limits",
        "sync_invoices",
    )

    @admin.display(description="Stripe")
    def stripe(self, obj):
        account = BillingProfile.objects.filter(user=obj).first()
        status = (account.subscription_status if account else "") or "none"
        if not obj.stripe_customer_id:
            return f"No Stripe customer yet. Subscription: {status}."
        return format_html(
            'Customer <a href="{}">{}</a>. Subscription: {}.',
            gateway.dashboard_url("customers", obj.stripe_customer_id),
            obj.stripe_customer_id,
            status,
        )

    def has_sync_invoices_permission(self, request):
        return request.user.has_perm("billing.sync_invoices")

    def has_change_billing_mode_permission(self, request):
        return request.user.has_perm("billing.change_billing_mode")

    @admin.action(
        description="Sync invoices from Stripe (repairs missed webhooks)",
        permissions=["sync_invoices"],
    )
    def sync_invoices(self, request, queryset):
        customers = queryset.exclude(stripe_customer_id__isnull=True)
        count = 0
        for user in customers:
            invoices_sync_queue(user=user)
            count += 1
        self.message_user(
            request,
            queued_message(count, "invoice sync job(s)", task_name="billing.sync_invoices"),
            messages.INFO,
        )
        if skipped := queryset.count() - count:
            self.message_user(
                request,
                f"{skipped} user(s) have no Stripe customer: nothing to sync.",
                messages.WARNING,
            )

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
        unbilled = selectors.unbilled_usage(user_ids=[obj.pk]).get(obj.pk)
        return format_html(
            "<div>Mode: {}</div><div>Month to date: ${}</div><div>Credit balance: {}</div>{}"
            "<table><tr><th>Date</th><th>CPU h</th><th>GPU h</th><th>Storage GB-mo</th>"
            "<th>Cost</th></tr>{}</table>",
            BillingProfile.Mode(mode).label,
            to_cents(selectors.month_to_date_cost(obj)),
            balance_html(selectors.credit_balance(obj)),
            format_html(
                '<div class="errornote">Unbilled usage: ${} (no live subscription): '
                "reported to Stripe as soon as a subscription is live.</div>",
                unbilled,
            )
            if unbilled
            else "",
            rows or mark_safe("<tr><td colspan=5>No usage in the last 30 days.</td></tr>"),
        )

    @admin.display(description="Billing mode switches")
    def mode_switches(self, obj):
        # Append-only: shown, never edited. A day is settled on the mode in force at its
        # start (00:00 UTC).
        changes = BillingModeChange.objects.filter(user=obj).order_by("-effective_at", "-id")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    f"{c.effective_at:%Y-%m-%d %H:%M} UTC",
                    c.get_from_mode_display(),
                    c.get_to_mode_display(),
                    c.actor,
                    c.reason or "-",
                )
                for c in changes[:50]
            ),
        )
        if not rows:
            return "No switches recorded: every day is settled as the mode above."
        return format_html(
            "<table><tr><th>Effective</th><th>Switch</th><th>By</th><th>Reason</th></tr>{}</table>",
            rows,
        )

    def _set_mode(self, request, queryset, mode):
        label = BillingProfile.Mode(mode).label

        def apply(_data):
            changed = sum(billing_mode_set(user=u, mode=mode, actor=request.user) for u in queryset)
            self.message_user(request, f"{changed} user(s) switched to {label}.", messages.SUCCESS)

        return confirm_then(
            self,
            request,
            queryset,
            title=f"Switch to {label}",
            message="The switch takes effect now: days that began before it (today "
            "included) stay on the old mode, even if collected later; from tomorrow on, "
            "days follow the new mode.",
            confirm_label=f"Yes, switch to {label}",
            apply=apply,
        )

    @admin.action(description="Switch to prepaid (credits)", permissions=["change_billing_mode"])
    def make_prepaid(self, request, queryset):
        return self._set_mode(request, queryset, BillingProfile.Mode.PREPAID)

    @admin.action(description="Switch to postpaid (metered)", permissions=["change_billing_mode"])
    def make_postpaid(self, request, queryset):
        return self._set_mode(request, queryset, BillingProfile.Mode.POSTPAID)
