"""Prepaid credits: balances, the ledger, granting."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import F
from django.utils.html import format_html

from billing import stripe_gateway as gateway
from billing.admin.base import ReadOnlyAdmin
from billing.checkout import BillingError
from billing.credits import CreditError, credits_grant
from billing.models import CreditLedgerEntry, CreditPurchase, UserCredits
from billing.pricing import to_cents
from billing.purchases import credit_purchase_refund_request
from billing.stripe_gateway import StripeGatewayError
from plumbing import outbound
from plumbing.admin_confirm import confirm_then
from plumbing.admin_report import ActionReport


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
        report = ActionReport("user")
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
                report.not_done(user.email, error)
                continue
            if entry is None:  # this very form was submitted before
                report.unchanged(user.email, f"${data['amount']} already granted by this form")
            else:
                report.done(user.email, f"${data['amount']} granted")
        report.send(modeladmin, request)

    return apply


class GrantCreditsMixin:
    """The "Grant credits" action, for any admin whose rows lead to users."""

    def users_of(self, queryset):
        return list(queryset)

    def has_grant_permission(self, request):
        return request.user.has_perm("billing.grant_credits")

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


@admin.register(CreditPurchase)
class CreditPurchaseAdmin(ReadOnlyAdmin):
    """Credit purchases paid through Stripe; refunds and disputes show here as Stripe's
    webhooks apply them. "Refund through Stripe" asks Stripe for the refund only."""

    list_display = (
        "created_at",
        "user",
        "amount",
        "amount_refunded",
        "amount_disputed",
        "currency",
        "status",
        "stripe_payment_intent_id",
    )
    list_select_related = ("user",)
    list_filter = ("status", "currency")
    search_fields = (
        "user__email",
        "=stripe_checkout_session_id",
        "=stripe_payment_intent_id",
        "=stripe_charge_id",
    )
    date_hierarchy = "created_at"
    actions = ("refund_purchases",)

    def has_refund_permission(self, request):
        return request.user.has_perm("billing.refund_credit_purchase")

    @admin.action(
        description="Refund what is left of the purchase through Stripe", permissions=["refund"]
    )
    def refund_purchases(self, request, queryset):
        return confirm_then(
            self,
            request,
            queryset,
            title="Refund credit purchases",
            message="Ask Stripe to refund what is left of each selected purchase to the "
            "card it was paid with. The credits are taken back when Stripe confirms it.",
            confirm_label="Refund",
            apply=lambda _data: self._refund(request, queryset),
        )

    def _refund(self, request, queryset):
        report = ActionReport("purchase")
        # One deadline for all the purchases selected, well inside the web worker's timeout.
        with outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS) as budget:
            for purchase in queryset.order_by("pk"):
                if budget.expired:
                    report.not_done(
                        purchase,
                        "not tried, Stripe took too long for the ones before it; select it again",
                    )
                    continue
                try:
                    refund = credit_purchase_refund_request(purchase=purchase, actor=request.user)
                except (BillingError, StripeGatewayError) as error:
                    report.not_done(purchase, error)
                    continue
                amount = gateway.from_minor_units(refund["amount"], refund["currency"])
                report.done(
                    purchase,
                    f"refund of {amount} requested at Stripe; the credits are taken back when "
                    "Stripe confirms it.",
                )
        report.send(self, request)
