"""Spending limits and alerts: setting users' limits, the alerts sent, the limit history."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join

from accounts.admin_search import UserFirstSearchMixin
from billing.admin import user_facts
from billing.admin.base import ReadOnlyAdmin
from billing.forecast import invoice_preview
from billing.limits import (
    UNCHANGED,
    limit_problem,
    low_balance_threshold_of,
    money,
    spending_cap_of,
    spending_limits_set,
)
from billing.models import SpendingAlert, SpendingLimitChange
from plumbing.admin_confirm import confirm_then
from plumbing.admin_lists import EstimatedCountAdminMixin, IndexOrderAdminMixin
from plumbing.admin_ranges import date_range
from plumbing.formatting import parse_money


@admin.register(SpendingAlert)
class SpendingAlertAdmin(
    IndexOrderAdminMixin, UserFirstSearchMixin, EstimatedCountAdminMixin, ReadOnlyAdmin
):
    """Alerts are written by the evaluation and sent by a job: listed, never edited."""

    list_display = (
        "created_at",
        "user",
        "kind",
        "period",
        "amount_display",
        "limit_display",
        "sent_at",
        "attempts",
        "error",
    )
    list_select_related = ("user",)
    list_filter = ("kind", ("sent_at", admin.EmptyFieldListFilter), date_range("created_at"))
    # The user-first search (accounts/admin_search.py); no date hierarchy (it reads every
    # alert's date on every page): the range filter narrows by date.
    search_fields = ()
    sortable_by = ("created_at",)  # spending_alert_newest, either way

    @admin.display(description="amount")
    def amount_display(self, obj):
        return money(obj.amount)

    @admin.display(description="cap or threshold")
    def limit_display(self, obj):
        return money(obj.limit_amount)


@admin.register(SpendingLimitChange)
class SpendingLimitChangeAdmin(
    IndexOrderAdminMixin, UserFirstSearchMixin, EstimatedCountAdminMixin, ReadOnlyAdmin
):
    """Append-only history of users' caps and thresholds."""

    list_display = ("created_at", "user", "field", "old", "new", "actor", "by_user")
    money_fields = {"old": None, "new": None}
    list_select_related = ("user",)
    list_filter = ("field", "by_user", date_range("created_at"))
    search_fields = ("actor",)  # exact (who made the change), and the user-first search
    sortable_by = ("created_at",)  # spending_limit_change_newest, either way


class LimitField(forms.CharField):
    """An amount in dollars and cents, or empty for the default; judged by the service's
    rule (operators' maximum)."""

    def __init__(self, *, name: str, **kwargs):
        self.limit_name = name
        super().__init__(required=False, **kwargs)

    def clean(self, value):
        if not (value or "").strip():
            return None
        try:
            amount = parse_money(value)
        except ValueError as error:
            raise ValidationError(str(error)) from None
        problem = limit_problem(amount, name=self.limit_name, by_user=False)
        if problem:
            raise ValidationError(problem)
        return amount


class SpendingLimitsForm(forms.Form):
    monthly_spending_cap = LimitField(
        name="monthly spending cap",
        help_text="Postpaid, US dollars a calendar month. Empty: the default.",
    )
    keep_cap = forms.BooleanField(required=False, label="Leave each user's cap as it is")
    low_balance_threshold = LimitField(
        name="low-balance threshold",
        help_text="Prepaid, US dollars. Empty: the default.",
    )
    keep_threshold = forms.BooleanField(
        required=False, label="Leave each user's threshold as it is"
    )


class SpendingLimitsAdminMixin:
    """The users admin's "Set spending limits" action and the user page's spending part."""

    def has_change_spending_limits_permission(self, request):
        return request.user.has_perm("billing.change_spending_limits")

    @admin.action(description="Set spending limits", permissions=["change_spending_limits"])
    def set_spending_limits(self, request, queryset):
        def apply(data):
            cap = UNCHANGED if data["keep_cap"] else data["monthly_spending_cap"]
            threshold = UNCHANGED if data["keep_threshold"] else data["low_balance_threshold"]
            changed = unchanged = 0
            for user in queryset.order_by("pk"):
                try:
                    changes = spending_limits_set(
                        user=user,
                        monthly_spending_cap=cap,
                        low_balance_threshold=threshold,
                        actor=request.user,
                        by_user=False,
                    )
                except ValidationError as error:
                    self.message_user(
                        request, f"{user.email}: {' '.join(error.messages)}", messages.ERROR
                    )
                    continue
                changed += bool(changes)
                unchanged += not changes
            self.message_user(
                request, f"Spending limits changed for {changed} user(s).", messages.SUCCESS
            )
            if unchanged:
                self.message_user(
                    request,
                    f"{unchanged} user(s) already had these limits: nothing changed.",
                    messages.WARNING,
                )

        return confirm_then(
            self,
            request,
            queryset,
            title="Set spending limits",
            message="Set the monthly spending cap (postpaid) and the low-balance threshold "
            "(prepaid) of each selected user. Empty puts the default back. Every change is "
            "kept in the user's history; alerts are checked against the new limits at once.",
            confirm_label="Set",
            form_class=SpendingLimitsForm,
            apply=apply,
        )

    @admin.display(description="Spending")
    def spending(self, obj):
        profile = user_facts.profile(obj)
        forecast = user_facts.forecast(obj)
        preview = invoice_preview(obj, profile=profile)
        if preview.kind == "stripe":
            preview_html = format_html(
                "Upcoming invoice (Stripe's preview): <strong>{}</strong> {}",
                money(preview.total),
                preview.currency,
            )
        elif preview.kind == "prepaid":
            preview_html = format_html(
                "Projected debit from credits this month: <strong>{}</strong>",
                money(preview.total),
            )
        else:
            preview_html = format_html("{}", preview.note)
        alerts = format_html_join(
            "",
            '<tr class="spending-alert"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td></tr>",
            (
                (
                    f"{a.created_at:%Y-%m-%d %H:%M} UTC",
                    a.get_kind_display(),
                    money(a.amount),
                    money(a.limit_amount),
                    a.status + (f" ({a.error})" if a.error and not a.sent_at else ""),
                )
                for a in SpendingAlert.objects.filter(user=obj).order_by("-id")[:20]
            ),
        )
        changes = format_html_join(
            "",
            '<tr class="limit-change"><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td></tr>',
            (
                (
                    f"{c.created_at:%Y-%m-%d %H:%M} UTC",
                    c.get_field_display(),
                    money(c.old) if c.old is not None else "default",
                    money(c.new) if c.new is not None else "default",
                    c.actor + (" (the user)" if c.by_user else ""),
                )
                for c in SpendingLimitChange.objects.filter(user=obj).order_by("-id")[:20]
            ),
        )

        def own(value):
            return "" if value is not None else " (default)"

        return format_html(
            "<div>Monthly spending cap: {}{}</div><div>Low-balance threshold: {}{}</div>"
            "<div>Month to date: {}; projected for the month: {}</div><div>{}</div>"
            "<h4>Spending alerts</h4>{}<h4>Spending limit changes</h4>{}",
            money(spending_cap_of(profile)),
            own(profile and profile.monthly_spending_cap),
            money(low_balance_threshold_of(profile)),
            own(profile and profile.low_balance_threshold),
            money(forecast.month_to_date),
            money(forecast.projected),
            preview_html,
            format_html(
                "<table><tr><th>When</th><th>Alert</th><th>Amount</th><th>Limit</th>"
                "<th>Email</th></tr>{}</table>",
                alerts,
            )
            if alerts
            else "None.",
            format_html(
                "<table><tr><th>When</th><th>Limit</th><th>Change</th><th>By</th></tr>{}</table>",
                changes,
            )
            if changes
            else "None: the limits above are as first set.",
        )
