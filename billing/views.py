"""The user's own page: their cluster, usage, credits and invoices."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from billing import selectors
from billing.models import BillingAccount
from billing.pricing import to_cents
from clusters.selectors import placement_of


@login_required
def account_page(request):
    user = request.user
    mode = selectors.billing_mode(user)
    balance = selectors.credit_balance(user)
    context = {
        "account": user,
        "placement": placement_of(user),
        "mode": mode,
        "mode_label": BillingAccount.Mode(mode).label,
        "prepaid": mode == BillingAccount.Mode.PREPAID,
        "month_to_date": to_cents(selectors.month_to_date_cost(user)),
        "balance": to_cents(balance),
        "balance_negative": balance < 0,
        "days": list(selectors.daily_breakdown(user, days=30)),
    }
    return render(request, "billing/account.html", context)
