"""The reconciliation page: the runs of `reconcile_billing` (the daily job and the command),
read-only. A run asks Stripe per user-month, so no web request makes one."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from billing.admin.base import ReadOnlyAdmin
from billing.models import ReconciliationRun
from plumbing.admin_ranges import date_range
from plumbing.formatting import money

FIGURES = ("ours", "reported", "pending", "stripe", "invoiced")


def _cents(value) -> str:
    return "-" if value is None else money(Decimal(value).scaleb(-2))


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "months", "users", "actor", "differences", "unexplained_mark")
    list_filter = ("actor", date_range("started_at"))
    date_hierarchy = "started_at"
    fields = ("started_at", "finished_at", "months", "users", "actor", "errors", "report")
    readonly_fields = fields

    @admin.display(description="unexplained", ordering="unexplained")
    def unexplained_mark(self, obj):
        if not obj.unexplained:
            return "0"
        return format_html('<strong style="color:#dc2626">{}</strong>', obj.unexplained)

    @admin.display(description="side by side")
    def report(self, obj):
        rows = []
        for line in obj.lines:
            who = line.get("email") or line["user_id"]
            for f in line.get("figures", []):
                rows.append((who, line["month"], f["resource"], *(_cents(f[k]) for k in FIGURES)))
            credits = line.get("credits")
            if credits:
                figures = ("usage", "debited", "ledger")
                rows.append(
                    (who, line["month"], "credits", *(_cents(credits[k]) for k in figures), "", "")
                )
        table = format_html(
            "<table><thead><tr><th>user</th><th>month</th><th>resource</th>{}</tr></thead>"
            "<tbody>{}</tbody></table>",
            format_html_join("", "<th>{}</th>", ((name,) for name in FIGURES)),
            format_html_join("", "<tr>" + "<td>{}</td>" * 8 + "</tr>", rows),
        )
        differences = [
            (
                "ok" if d["explained"] else "FAIL",
                line.get("email") or line["user_id"],
                line["month"],
                d["resource"],
                d["what"],
                money(Decimal(d["cents"]).scaleb(-2)),
                d["cause"],
                d["repair"] or "-",
            )
            for line in obj.lines
            for d in line.get("differences", [])
        ]
        listed = format_html(
            "<h3>Differences</h3><table><thead><tr><th></th><th>user</th><th>month</th>"
            "<th>resource</th><th>link</th><th>difference</th><th>cause</th><th>repair</th>"
            "</tr></thead><tbody>{}</tbody></table>",
            format_html_join("", "<tr>" + "<td>{}</td>" * 8 + "</tr>", differences),
        )
        return format_html("{}{}", table, listed if differences else "No differences.")
