"""The columns of billing's admin exports (plumbing/admin_export.py writes them)."""

from __future__ import annotations

from import_export.fields import Field

from billing.models import BillingHistory, CreditLedgerEntry, UsageDaily
from plumbing.admin_export import ExportResource


class UsageDailyResource(ExportResource):
    date = Field(attribute="date", column_name="date")
    user_email = Field(attribute="user__email", column_name="user email")
    user_id = Field(attribute="user_id", column_name="user id")
    cluster = Field(attribute="hopsworks_cluster__name", column_name="cluster")
    cpu_hours = Field(attribute="cpu_hours", column_name="CPU hours")
    gpu_hours = Field(attribute="gpu_hours", column_name="GPU hours")
    storage_gb_months = Field(attribute="storage_gb_months", column_name="storage GB-months")
    api_calls = Field(attribute="api_calls", column_name="API calls")
    total_cost = Field(attribute="total_cost", column_name="total cost (USD)")

    class Meta:
        model = UsageDaily
        fields = (
            "date",
            "user_email",
            "user_id",
            "cluster",
            "cpu_hours",
            "gpu_hours",
            "storage_gb_months",
            "api_calls",
            "total_cost",
        )
        export_order = fields


class BillingHistoryResource(ExportResource):
    created_at = Field(attribute="created_at", column_name="created at (UTC)")
    user_email = Field(attribute="user__email", column_name="user email")
    user_id = Field(attribute="user_id", column_name="user id")
    description = Field(attribute="description", column_name="description")
    amount = Field(attribute="amount", column_name="amount")
    currency = Field(attribute="currency", column_name="currency")
    amount_credited = Field(attribute="amount_credited", column_name="credited")
    amount_refunded = Field(attribute="amount_refunded", column_name="refunded")
    status = Field(attribute="status", column_name="status")
    stripe_status = Field(attribute="stripe_status", column_name="Stripe status")
    stripe_invoice_id = Field(attribute="stripe_invoice_id", column_name="Stripe invoice")
    period_start = Field(attribute="period_start", column_name="period start (UTC)")
    period_end = Field(attribute="period_end", column_name="period end (UTC)")
    finalized_at = Field(attribute="finalized_at", column_name="finalized at (UTC)")

    class Meta:
        model = BillingHistory
        fields = (
            "created_at",
            "user_email",
            "user_id",
            "description",
            "amount",
            "currency",
            "amount_credited",
            "amount_refunded",
            "status",
            "stripe_status",
            "stripe_invoice_id",
            "period_start",
            "period_end",
            "finalized_at",
        )
        export_order = fields


class CreditLedgerResource(ExportResource):
    created_at = Field(attribute="created_at", column_name="created at (UTC)")
    user_email = Field(attribute="user__email", column_name="user email")
    kind = Field(attribute="kind", column_name="kind")
    amount = Field(attribute="amount", column_name="amount (USD)")
    balance_after = Field(attribute="balance_after", column_name="balance after (USD)")
    reference = Field(attribute="reference", column_name="reference")
    actor = Field(attribute="actor", column_name="actor")
    reason = Field(attribute="reason", column_name="reason")
    user_id = Field(attribute="user_id", column_name="user id")
    usage_id = Field(attribute="usage_id", column_name="usage row")

    class Meta:
        model = CreditLedgerEntry
        fields = (
            "created_at",
            "user_email",
            "kind",
            "amount",
            "balance_after",
            "reference",
            "actor",
            "reason",
            "user_id",
            "usage_id",
        )
        export_order = fields
