"""Prepaid credits: balances, the ledger, granting."""

from __future__ import annotations

import re
import uuid

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import F
from django.utils.html import format_html

from accounts.admin_search import UserFirstSearchMixin
from billing import stripe_gateway as gateway
from billing.adjustments import (
    AdjustmentError,
    Applied,
    adjustment_make,
    adjustment_reference,
    parse_adjustment_amount,
)
from billing.admin.base import ReadOnlyAdmin
from billing.checkout import BillingError
from billing.exports import CreditLedgerResource
from billing.models import BillingAdjustment, CreditLedgerEntry, CreditPurchase, UserCredits
from billing.purchases import credit_purchase_refund_request
from billing.stripe_gateway import StripeGatewayError
from plumbing import outbound
from plumbing.admin_cells import cut, figure, user_cell
from plumbing.admin_confirm import confirm_then
from plumbing.admin_export import ExportAdminMixin
from plumbing.admin_lists import (
    EstimatedCountAdminMixin,
    IndexedValuesFilter,
    IndexOrderAdminMixin,
)
from plumbing.admin_ranges import date_range
from plumbing.admin_report import ActionReport
from plumbing.formatting import money

Channel = BillingAdjustment.Channel
Direction = BillingAdjustment.Direction
Status = BillingAdjustment.Status


@admin.register(CreditLedgerEntry)
class CreditLedgerAdmin(
    IndexOrderAdminMixin,
    ExportAdminMixin,
    UserFirstSearchMixin,
    EstimatedCountAdminMixin,
    ReadOnlyAdmin,
):
    """Append-only: corrections are new entries (a grant or an adjustment)."""

    export_resource_class = CreditLedgerResource

    list_display = (
        "created_at",
        "user_column",
        "kind",
        "amount_column",
        "balance_after_column",
        "reference_column",
        "reason_column",
    )
    money_fields = {"amount": None, "balance_after": None}
    list_select_related = ("user",)
    list_filter = ("kind", date_range("created_at"))
    search_fields = ("reference",)  # exact, and the user-first search
    sortable_by = ("created_at",)  # credit_ledger_newest, either way
    user_first_order = ("-created_at", "-id")  # credit_ledger_user_created

    @admin.display(description="user", ordering="user__email")
    def user_column(self, obj):
        return user_cell(obj.user)

    @admin.display(description="amount", ordering="amount")
    def amount_column(self, obj):
        return figure(obj.amount)

    @admin.display(description="balance after", ordering="balance_after")
    def balance_after_column(self, obj):
        return figure(obj.balance_after)

    @admin.display(description="reference · by", ordering="reference")
    def reference_column(self, obj):
        return format_html(
            '{}<span class="quiet">{}</span>',
            cut(obj.reference, width="narrow"),
            cut(obj.actor, width="narrow"),
        )

    @admin.display(description="reason")
    def reason_column(self, obj):
        return cut(obj.reason)


class AmountField(forms.CharField):
    """Dollars as typed: `25` or `25.00`, never `1e3`, zero, negative or above the
    maximum (billing.adjustments.parse_adjustment_amount)."""

    def to_python(self, value):
        text = super().to_python(value)
        if not text:
            return text
        try:
            return parse_adjustment_amount(text)
        except AdjustmentError as error:
            raise forms.ValidationError(str(error)) from None


class AdjustmentForm(forms.Form):
    amount = AmountField(help_text="US dollars, for example 25 or 25.00.")
    reason = forms.CharField(
        max_length=500, help_text="Kept with the adjustment; Stripe shows it to the user."
    )
    # Generated when the form is shown: resubmitting the same form applies once.
    token = forms.CharField(widget=forms.HiddenInput, initial=lambda: uuid.uuid4().hex)

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why: the reason is kept with the adjustment.")
        return reason


class GrantForm(AdjustmentForm):
    invoice = forms.CharField(
        required=False,
        max_length=255,
        label="Open invoice (optional)",
        help_text="Postpaid users only: a Stripe invoice id (in_...) of theirs that is still "
        "open, to issue a credit note on it instead of crediting their Stripe balance.",
    )

    def clean_invoice(self):
        invoice = self.cleaned_data["invoice"].strip()
        if invoice and not re.fullmatch(r"in_[A-Za-z0-9]+", invoice):
            raise forms.ValidationError("A Stripe invoice id looks like in_1Abc...")
        return invoice


WHAT = {
    Channel.CUSTOMER_BALANCE: "as a credit on their Stripe customer balance (it comes off "
    "their next invoices)",
    Channel.CREDIT_NOTE: "as a credit note on invoice {invoice}",
    Channel.INVOICE_ITEM: "as an invoice item on their next invoice",
}


def outcome_message(applied: Applied, direction: str) -> tuple[str, str]:
    """What happened to one user's adjustment, for the operator's report: (done, queued,
    unchanged or not_done; the words)."""
    adjustment = applied.adjustment
    if not applied.created:
        if adjustment is not None and adjustment.status == Status.PENDING:
            return "unchanged", (
                "already submitted (this form was sent before) and still "
                "queued for Stripe: nothing more done."
            )
        if adjustment is not None and adjustment.status == Status.FAILED:
            return "not_done", (
                f"this form was sent before and Stripe refused it "
                f"({adjustment.error}); fix the cause and open the action again."
            )
        return "unchanged", ("already applied (this form was submitted before): nothing more done.")
    amount = money(adjustment.amount)
    if adjustment.channel == Channel.LEDGER:
        done = "granted to" if direction == Direction.CREDIT else "debited from"
        return "done", f"{amount} {done} the prepaid balance."
    kind = "credit" if direction == Direction.CREDIT else "charge"
    how = WHAT[adjustment.channel].format(invoice=adjustment.stripe_invoice_id)
    if adjustment.status == Status.SENT:
        return "done", (f"{amount} {kind} sent to Stripe {how} ({adjustment.stripe_object_id}).")
    if adjustment.status == Status.FAILED:
        return (
            "not_done",
            f"Stripe refused the {kind}. {adjustment.error}",
        )
    why = (
        f"Stripe is unavailable ({adjustment.error})"
        if adjustment.error
        else "Stripe took too long for the users before"
    )
    return "queued", (
        f"{amount} {kind} queued, not yet at Stripe: {why}. A job sends it "
        "(Jobs: billing.send_billing_adjustment)."
    )


def _adjust(modeladmin, request, queryset, direction):
    kind = "grant" if direction == Direction.CREDIT else "debit"

    def apply(data):
        users = modeladmin.users_of(queryset)  # once confirmed (and within the action's limit)
        report = ActionReport("user")
        report.watch_jobs("billing.send_billing_adjustment")
        # One deadline for every user selected, well inside the web worker's timeout: those
        # Stripe has no time left for are queued for the job.
        with outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS) as budget:
            for user in users:
                try:
                    applied = adjustment_make(
                        user=user,
                        direction=direction,
                        amount=data["amount"],
                        reason=data["reason"],
                        actor=request.user,
                        reference=adjustment_reference(kind, token=data["token"], user=user),
                        invoice_id=data.get("invoice", ""),
                        send=not budget.expired,
                    )
                except AdjustmentError as error:
                    report.not_done(user.email, error)
                else:
                    outcome, text = outcome_message(applied, direction)
                    getattr(report, outcome)(user.email, text)
        report.send(modeladmin, request)

    return apply


class AdjustmentActionsMixin:
    """ "Grant credits" and "Debit", for any admin whose rows lead to users: each user's
    money is adjusted where it is (the prepaid ledger, or Stripe for postpaid)."""

    def users_of(self, queryset):
        return list(queryset)

    def has_grant_permission(self, request):
        return request.user.has_perm("billing.grant_credits")

    def has_debit_permission(self, request):
        return request.user.has_perm("billing.debit_account")

    @admin.action(description="Grant credits", permissions=["grant"])
    def grant_credits(self, request, queryset):
        return confirm_then(
            self,
            request,
            queryset,
            title="Grant credits",
            message="Prepaid users: added to their prepaid balance. Postpaid users: a credit "
            "on their Stripe customer balance, which comes off their next invoices (or, for "
            "one user, a credit note on an open invoice of theirs).",
            confirm_label="Grant",
            form_class=GrantForm,
            apply=_adjust(self, request, queryset, Direction.CREDIT),
        )

    @admin.action(description="Debit (charge with a reason)", permissions=["debit"])
    def debit_accounts(self, request, queryset):
        return confirm_then(
            self,
            request,
            queryset,
            title="Debit",
            message="Prepaid users: taken from their prepaid balance (it may go below zero). "
            "Postpaid users: an invoice item on their next Stripe invoice.",
            confirm_label="Debit",
            form_class=AdjustmentForm,
            apply=_adjust(self, request, queryset, Direction.DEBIT),
        )


GrantCreditsMixin = AdjustmentActionsMixin  # the name other admins know it by


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
class UserCreditsAdmin(
    IndexOrderAdminMixin, UserFirstSearchMixin, GrantCreditsMixin, ReadOnlyAdmin
):
    list_display = (
        "user_column",
        "balance_display",
        "purchased_column",
        "used_column",
        "updated_at",
    )
    money_fields = {"total_purchased": None, "total_used": None}
    list_select_related = ("user",)
    list_filter = (NegativeBalanceFilter,)

    @admin.display(description="user", ordering="user__email")
    def user_column(self, obj):
        return user_cell(obj.user)

    @admin.display(description="total purchased", ordering="total_purchased")
    def purchased_column(self, obj):
        return figure(obj.total_purchased)

    @admin.display(description="total used", ordering="total_used")
    def used_column(self, obj):
        return figure(obj.total_used)

    search_fields = ()  # the user-first search alone (accounts/admin_search.py)
    # In the user's order (the table's primary key); by a total it would sort every row.
    sortable_by = ()
    actions = ("grant_credits",)

    @admin.display(description="balance")
    def balance_display(self, obj):
        return balance_html(obj.balance)

    def users_of(self, queryset):
        return [row.user for row in queryset.select_related("user")]


def balance_html(balance):
    if balance < 0:
        return format_html('<strong style="color:#dc2626">{} (below zero)</strong>', money(balance))
    return money(balance)


@admin.register(CreditPurchase)
class CreditPurchaseAdmin(IndexOrderAdminMixin, UserFirstSearchMixin, ReadOnlyAdmin):
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
    money_fields = {
        "amount": "currency",
        "amount_refunded": "currency",
        "amount_disputed": "currency",
    }
    list_select_related = ("user",)
    list_filter = ("status", ("currency", IndexedValuesFilter), date_range("created_at"))
    # Exact, and the user-first search (accounts/admin_search.py). No date hierarchy: it
    # reads every purchase's date per request; the range filter narrows by date.
    search_fields = (
        "stripe_checkout_session_id",
        "stripe_payment_intent_id",
        "stripe_charge_id",
    )
    sortable_by = ("created_at",)  # credit_purchase_newest, either way
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
                amount = money(
                    gateway.from_minor_units(refund["amount"], refund["currency"]),
                    refund["currency"],
                )
                report.done(
                    purchase,
                    f"refund of {amount} requested at Stripe; the credits are taken back when "
                    "Stripe confirms it.",
                )
        report.send(self, request)


@admin.register(BillingAdjustment)
class BillingAdjustmentAdmin(IndexOrderAdminMixin, UserFirstSearchMixin, ReadOnlyAdmin):
    """Operators' credits and debits and carried prepaid debts, where each went. Written
    only by billing.adjustments; a pending one is sent by the `send_billing_adjustment`
    job (hourly, `retry_billing_adjustments` queues any left pending)."""

    list_display = (
        "created_at",
        "user",
        "direction",
        "amount",
        "channel",
        "status",
        "attempts",
        "reason",
        "actor",
        "stripe_object_id",
    )
    money_fields = {"amount": None}
    list_select_related = ("user",)
    list_filter = ("status", "channel", "direction", date_range("created_at"))
    # Exact, and the user-first search (accounts/admin_search.py); the range filter narrows
    # by date (a date hierarchy reads every adjustment's date on every page).
    search_fields = ("reference", "stripe_object_id")
    sortable_by = ("created_at",)  # billing_adjustment_newest, either way
