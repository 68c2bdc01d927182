"""The users admin's billing part."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from billing import selectors
from billing import stripe_gateway as gateway
from billing.adjustments import debt_carried
from billing.admin import user_facts
from billing.admin.credits import AdjustmentActionsMixin, balance_html
from billing.admin.spending import SpendingLimitsAdminMixin
from billing.closing import AccountCloseRefused, account_close, money_open_reasons
from billing.models import BillingAdjustment, BillingProfile
from billing.profiles import billing_mode_set
from billing.tasks import invoices_sync_queue
from plumbing.admin_confirm import confirm_then
from plumbing.admin_report import ActionReport
from plumbing.charts import Series, chart_html
from plumbing.formatting import money, quantity


def _adjustment_status(adjustment: BillingAdjustment):
    label = adjustment.get_status_display()
    if adjustment.status == BillingAdjustment.Status.SENT and adjustment.stripe_object_id:
        return f"{label}: {adjustment.stripe_object_id}"
    if adjustment.error:
        return f"{label}: {adjustment.error}"
    return label


class BillingModeFilter(admin.SimpleListFilter):
    title = "billing mode"
    parameter_name = "billing_mode"

    def lookups(self, request, model_admin):
        return BillingProfile.Mode.choices

    def queryset(self, request, queryset):
        # EXISTS: one probe of billing_account's user_id index per user, so the list can
        # stop at its first page (no profile: postpaid).
        prepaid = Exists(
            BillingProfile.objects.filter(
                user=OuterRef("pk"), mode=BillingProfile.Mode.PREPAID
            ).order_by()
        )
        if self.value() == BillingProfile.Mode.PREPAID:
            return queryset.filter(prepaid)
        if self.value() == BillingProfile.Mode.POSTPAID:
            return queryset.filter(~prepaid)
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


class CloseReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=500, help_text="Why the account is closed (kept on the close record)."
    )


def close_summary(user) -> str:
    """What an operator must see before closing: mode, balance, what is still open."""
    from billing.models import AccountClosure, BillingHistory, CreditPurchase

    if AccountClosure.objects.filter(user=user).exists():
        return "already closed"
    mode = selectors.billing_mode(user)
    parts = [BillingProfile.Mode(mode).label]
    if mode == BillingProfile.Mode.PREPAID:
        refundable = sum(
            (p.refundable for p in CreditPurchase.objects.filter(user=user)), Decimal(0)
        )
        parts.append(f"balance {money(selectors.credit_balance(user))}")
        parts.append(f"refundable purchases {money(refundable)}")
    else:
        profile = BillingProfile.objects.filter(user=user).first()
        parts.append(f"subscription {(profile and profile.subscription_status) or 'none'}")
    open_invoices = BillingHistory.objects.filter(
        user=user, status__in=[BillingHistory.Status.PENDING, BillingHistory.Status.FAILED]
    ).count()
    parts.append(f"{open_invoices} open invoice(s)")
    return ", ".join(parts)


def closure_html(user):
    """The close, if the account is closed: when, by whom, and what is still to do."""
    closure = user_facts.closure(user)
    if closure is None:
        return ""
    url = reverse("admin:billing_accountclosure_change", args=[closure.pk])
    state = (
        "all steps done"
        if closure.finished_at
        else f"in progress: {closure.last_error or 'queued'}"
    )
    return format_html(
        '<div class="errornote">Account closed {} UTC by {} ({}); <a href="{}">{}</a>.</div>',
        f"{closure.closed_at:%Y-%m-%d %H:%M}",
        closure.actor,
        closure.reason,
        url,
        state,
    )


BILLING_SECTION = (
    "Billing",
    {"fields": ("billing", "spending", "stripe", "mode_switches", "adjustments")},
)


COST_CHART_DAYS = user_facts.COST_CHART_DAYS
COST_CHART_SECTION = (f"Daily cost, last {COST_CHART_DAYS} days", {"fields": ("cost_chart",)})


class UserBillingAdminMixin(SpendingLimitsAdminMixin, AdjustmentActionsMixin):
    """The users admin's billing part: what each user costs and how they pay. Its filter,
    fields, section and actions are named; console/admin.py puts them in place."""

    billing_filters = (BillingModeFilter, UnbilledUsageFilter)
    # The list's billing columns: figures annotated by `with_billing_figures`, one query.
    billing_columns = ("billing_mode_column", "month_to_date_column", "balance_column")
    billing_fields = ("billing", "spending", "stripe", "mode_switches", "adjustments")
    billing_actions = (
        "make_prepaid",
        "make_postpaid",
        "grant_credits",
        "debit_accounts",
        "set_spending_limits",
        "sync_invoices",
        "close_accounts",
    )

    def with_billing_figures(self, queryset):
        return selectors.users_with_billing_figures(queryset)

    @admin.display(description="billing", ordering="billing_mode_now")
    def billing_mode_column(self, obj):
        mode = getattr(obj, "billing_mode_now", None) or BillingProfile.Mode.POSTPAID
        return BillingProfile.Mode(mode).label.split(" ")[0]

    @admin.display(description="month to date", ordering="month_to_date_total")
    def month_to_date_column(self, obj):
        return format_html('<span class="figure">{}</span>', money(obj.month_to_date_total))

    @admin.display(description="balance", ordering="credit_balance_now")
    def balance_column(self, obj):
        balance = obj.credit_balance_now
        if balance is None:
            return "-"
        css = "figure negative" if balance < 0 else "figure"
        return format_html('<span class="{}">{}</span>', css, money(balance))

    @admin.display(description="Stripe")
    def stripe(self, obj):
        account = user_facts.profile(obj)
        status = (account.subscription_status if account else "") or "none"
        if not obj.stripe_customer_id:
            return f"No Stripe customer yet. Subscription: {status}."
        return format_html(
            'Customer <a href="{}">{}</a>. Subscription: {}.',
            gateway.dashboard_url("customers", obj.stripe_customer_id),
            obj.stripe_customer_id,
            status,
        )

    def get_deleted_objects(self, objs, request):
        """Deleting a user with money open is refused, and the page says why (billing.closing);
        closing the account is the way out, and keeps the row."""
        to_delete, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        reasons = [
            f"{user.email}: {reason}" for user in objs for reason in money_open_reasons(user)
        ]
        if reasons:
            # Shown instead of missing permissions: no permission would make it deletable.
            protected, perms_needed = [*reasons, *protected], set()
        return to_delete, model_count, perms_needed, protected

    def has_close_account_permission(self, request):
        return request.user.has_perm("billing.close_account")

    @admin.action(description="Close account (leaving)", permissions=["close_account"])
    def close_accounts(self, request, queryset):
        return confirm_then(
            self,
            request,
            queryset,
            title="Close accounts",
            message="Each account is closed now: the user is logged out for good, their "
            "usage is collected and billed up to now (storage until now), a postpaid "
            "subscription is canceled with a final invoice, a prepaid balance is left for "
            "you to refund from Credit purchases, the Hopsworks account is deactivated and "
            "the cluster slot released. Their data and the user row are kept.",
            confirm_label="Yes, close these accounts",
            form_class=CloseReasonForm,
            describe=close_summary,
            apply=lambda data: self._close(request, queryset, data["reason"]),
        )

    def _close(self, request, queryset, reason):
        report = ActionReport("user")
        report.watch_jobs("billing.close_account")
        for user in queryset.order_by("pk"):
            try:
                account_close(user=user, actor=request.user, reason=reason)
            except AccountCloseRefused as error:
                report.not_done(user.email, error)
                continue
            report.queued(
                user.email,
                "closed (logged out, nothing billed after now); collecting, billing, "
                "cancelling and deactivating queued",
            )
        report.send(self, request)

    def has_sync_invoices_permission(self, request):
        return request.user.has_perm("billing.sync_invoices")

    def has_change_billing_mode_permission(self, request):
        return request.user.has_perm("billing.change_billing_mode")

    @admin.action(
        description="Sync invoices from Stripe (repairs missed webhooks)",
        permissions=["sync_invoices"],
    )
    def sync_invoices(self, request, queryset):
        report = ActionReport("user")
        report.watch_jobs("billing.sync_invoices")
        for user in queryset:
            if not user.stripe_customer_id:
                report.not_done(user.email, "no Stripe customer: nothing to sync")
                continue
            invoices_sync_queue(user=user)
            report.queued(user.email, "invoice sync queued")
        report.send(self, request)

    @admin.display(description="billing")
    def billing(self, obj):
        mode = user_facts.mode(obj)
        days = user_facts.newest_days(obj)[:30]
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    d["date"],
                    quantity(d["cpu_hours"], 2),
                    quantity(d["gpu_hours"], 2),
                    quantity(d["storage_gb_months"], 4),
                    money(d["total_cost"]),
                )
                for d in days
            ),
        )
        unbilled = selectors.unbilled_usage(user_ids=[obj.pk]).get(obj.pk)
        return format_html(
            "{}<div>Mode: {}</div><div>Month to date: {}</div><div>Credit balance: {}</div>{}"
            "<table><tr><th>Date</th><th>CPU h</th><th>GPU h</th><th>Storage GB-mo</th>"
            "<th>Cost</th></tr>{}</table>",
            closure_html(obj),
            BillingProfile.Mode(mode).label,
            money(user_facts.month_to_date(obj)),
            balance_html(user_facts.credit_balance(obj)),
            format_html(
                '<div class="errornote">Unbilled usage: {} (no live subscription): '
                "reported to Stripe as soon as a subscription is live.</div>",
                money(unbilled),
            )
            if unbilled
            else "",
            rows or mark_safe("<tr><td colspan=5>No usage in the last 30 days.</td></tr>"),
        )

    def get_fieldsets(self, request, obj=None):
        """The cost chart only for those who may view the usage it draws."""
        fieldsets = super().get_fieldsets(request, obj)
        if request.user.has_perm("billing.view_usagedaily"):
            return fieldsets
        return [(name, opts) for name, opts in fieldsets if "cost_chart" not in opts["fields"]]

    @admin.display(description="Daily cost")
    def cost_chart(self, obj):
        # One query: the user's cost per day (summed over clusters) over the last 90 days
        # (the billing section's days come from it too).
        today = timezone.now().date()
        days = [today - dt.timedelta(days=n) for n in reversed(range(COST_CHART_DAYS))]
        cost = {
            row["date"]: row["total_cost"]
            for row in user_facts.newest_days(obj)
            if row["date"] >= days[0]
        }
        return chart_html(
            dom_id="chart-user-cost",
            title=f"Daily cost of {obj.email}, last {COST_CHART_DAYS} days",
            days=days,
            series=[Series("Cost", [cost.get(day, Decimal(0)) for day in days])] if cost else [],
            kind="bar",
        )

    @admin.display(description="Billing mode switches")
    def mode_switches(self, obj):
        # Append-only: shown, never edited. A day is settled on the mode in force at its
        # start (00:00 UTC).
        changes = user_facts.mode_changes(obj)
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
                for c in changes
            ),
        )
        if not rows:
            return "No switches recorded: every day is settled as the mode above."
        return format_html(
            "<table><tr><th>Effective</th><th>Switch</th><th>By</th><th>Reason</th></tr>{}</table>",
            rows,
        )

    @admin.display(description="Adjustments")
    def adjustments(self, obj):
        # Append-only: operators' credits and debits, and debts carried at a switch.
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td></tr>",
            (
                (
                    f"{a.created_at:%Y-%m-%d %H:%M} UTC",
                    a.get_direction_display(),
                    money(a.amount),
                    a.get_channel_display(),
                    a.reason,
                    a.actor,
                    _adjustment_status(a),
                )
                for a in user_facts.adjustments(obj)
            ),
        )
        if not rows:
            return "No credits or debits by operators."
        return format_html(
            "<table><tr><th>When</th><th>What</th><th>Amount</th><th>Where</th><th>Reason</th>"
            "<th>By</th><th>Status</th></tr>{}</table>",
            rows,
        )

    def _set_mode(self, request, queryset, mode):
        label = BillingProfile.Mode(mode).label

        def apply(_data):
            report = ActionReport("user")
            report.watch_jobs("billing.report_user_usage")
            for user in queryset:
                if not billing_mode_set(user=user, mode=mode, actor=request.user):
                    report.unchanged(user.email, f"already {label}")
                    continue
                if mode == BillingProfile.Mode.POSTPAID and (debt := debt_carried(user=user)):
                    report.done(
                        user.email,
                        f"switched to {label}; the negative prepaid balance "
                        f"({money(-debt.amount)}) goes on their first postpaid invoice as an "
                        "invoice item (queued for Stripe) and their prepaid balance is $0.00",
                    )
                elif mode == BillingProfile.Mode.PREPAID:
                    report.done(user.email, f"switched to {label}")
                    report.queued(
                        user.email,
                        "usage collected up to the switch to be reported to Stripe",
                    )
                else:
                    report.done(user.email, f"switched to {label}")
            report.send(self, request)

        return confirm_then(
            self,
            request,
            queryset,
            title=f"Switch to {label}",
            message="The switch takes effect now: days that began before it (today "
            "included) stay on the old mode, even if collected later; from tomorrow on, "
            "days follow the new mode. To postpaid: a negative prepaid balance goes on the "
            "first postpaid invoice. To prepaid: the usage collected so far is reported to "
            "Stripe first.",
            confirm_label=f"Yes, switch to {label}",
            apply=apply,
        )

    @admin.action(description="Switch to prepaid (credits)", permissions=["change_billing_mode"])
    def make_prepaid(self, request, queryset):
        return self._set_mode(request, queryset, BillingProfile.Mode.PREPAID)

    @admin.action(description="Switch to postpaid (metered)", permissions=["change_billing_mode"])
    def make_postpaid(self, request, queryset):
        return self._set_mode(request, queryset, BillingProfile.Mode.POSTPAID)
