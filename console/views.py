"""The user's own page (cluster, usage, credits, invoices) and their billing actions."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing import selectors
from billing import stripe_gateway as gateway
from billing.checkout import (
    BillingError,
    credit_checkout_start,
    parse_topup_amount,
    subscription_checkout_start,
    topup_limits,
)
from billing.forecast import invoice_preview, month_forecast
from billing.limits import (
    UNCHANGED,
    limit_maximum,
    low_balance_threshold_of,
    spending_cap_of,
    spending_limits_set,
)
from billing.models import BillingHistory, BillingProfile, SpendingAlert
from billing.pricing import to_cents
from billing.standing import open_stops_of
from clusters.selectors import placement_of
from plumbing import outbound
from plumbing.charts import Series, chart_html
from plumbing.formatting import parse_money


@login_required
def home(request, *, limit_errors=None, limit_values=None, status=200):
    user = request.user
    profile = BillingProfile.objects.filter(user=user).first()
    mode = profile.mode if profile else BillingProfile.Mode.POSTPAID
    balance = selectors.credit_balance(user)
    low, high = topup_limits()
    days = list(selectors.daily_breakdown(user, days=30))
    context = {
        "account": user,
        "placement": placement_of(user),
        "stops": open_stops_of(user),
        "mode": mode,
        "mode_label": BillingProfile.Mode(mode).label,
        "prepaid": mode == BillingProfile.Mode.PREPAID,
        "subscribed": bool(profile and profile.has_active_subscription),
        "subscription_status": profile.subscription_status if profile else "",
        "stripe_configured": gateway.is_configured(),
        "month_to_date": to_cents(selectors.month_to_date_cost(user)),
        "balance": to_cents(balance),
        "balance_negative": balance < 0,
        "days": days,
        "chart": cost_chart(days),
        "invoices": BillingHistory.objects.filter(user=user).order_by("-created_at")[:24],
        "movements": selectors.credit_movements(user, limit=10),
        "account_changes": selectors.account_changes(user, limit=20),
        "presets": settings.CREDIT_TOPUP_PRESETS,
        "topup_min": low,
        "topup_max": high,
        "request_key": uuid.uuid4().hex,  # one Checkout session per form shown
        "forecast": month_forecast(user),
        "preview": invoice_preview(user),
        "cap": spending_cap_of(profile),
        "threshold": low_balance_threshold_of(profile),
        "own_cap": profile.monthly_spending_cap if profile else None,
        "own_threshold": profile.low_balance_threshold if profile else None,
        "limit_max": limit_maximum(by_user=True),
        "limit_errors": limit_errors or {},
        "limit_values": limit_values or {},
        "alerts": SpendingAlert.objects.filter(user=user).order_by("-created_at", "-id")[:10],
    }
    return render(request, "console/home.html", context, status=status)


def cost_chart(days: list[dict]):
    """Bars of the days with usage, oldest first (the table below the chart has the figures)."""
    ordered = list(reversed(days))
    return chart_html(
        dom_id="chart-daily-cost",
        title="Daily cost",
        days=[day["date"] for day in ordered],
        series=[Series("Cost", [day["total_cost"] for day in ordered])] if ordered else [],
        kind="bar",
        table=False,
        empty="",
    )


def _back(request):
    return request.build_absolute_uri(reverse("home"))


def _checkout(request, start):
    if not gateway.is_configured():
        messages.error(request, "Payments are not available: Stripe is not configured here.")
        return redirect("home")
    try:
        # Every Stripe call of one checkout together: the page answers within the deadline.
        with outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS):
            url = start()
    except BillingError as error:
        messages.error(request, str(error))
        return redirect("home")
    except gateway.StripeGatewayError:
        messages.error(
            request,
            "We could not reach our payment provider just now. Nothing was charged; please "
            "try again in a few minutes.",
        )
        return redirect("home")
    return redirect(url)


@login_required
@require_POST
def buy_credits(request):
    request_key = request.POST.get("request_key") or uuid.uuid4().hex
    raw = request.POST.get("custom_amount") or request.POST.get("amount") or ""

    def start():
        amount = parse_topup_amount(raw)
        return credit_checkout_start(
            user=request.user,
            amount=amount,
            request_key=f"{request.user.pk}-{request_key}-{amount}",
            success_url=_back(request) + "?checkout=credits",
            cancel_url=_back(request) + "?checkout=canceled",
        )

    return _checkout(request, start)


@login_required
@require_POST
def add_payment_method(request):
    request_key = request.POST.get("request_key") or uuid.uuid4().hex

    def start():
        return subscription_checkout_start(
            user=request.user,
            request_key=f"{request.user.pk}-{request_key}",
            success_url=_back(request) + "?checkout=subscription",
            cancel_url=_back(request) + "?checkout=canceled",
        )

    return _checkout(request, start)


def _limit_from_form(raw: str):
    """A submitted limit: blank is the default (None); anything else must be typed as
    dollars and cents (the service judges the amount). Raises ValueError."""
    if not raw.strip():
        return None
    return parse_money(raw)


@login_required
@require_POST
def set_spending_limits(request):
    """The user's own cap and low-balance threshold; only the fields sent are changed."""
    wanted, typos = {}, {}
    for field in ("monthly_spending_cap", "low_balance_threshold"):
        if field in request.POST:
            try:
                wanted[field] = _limit_from_form(request.POST[field])
            except ValueError as error:
                typos[field] = [str(error)]
    if typos:
        values = {field: request.POST[field] for field in (*wanted, *typos)}
        return home(request, limit_errors=typos, limit_values=values, status=400)
    try:
        spending_limits_set(
            user=request.user,
            monthly_spending_cap=wanted.get("monthly_spending_cap", UNCHANGED),
            low_balance_threshold=wanted.get("low_balance_threshold", UNCHANGED),
            actor=request.user,
            by_user=True,
        )
    except ValidationError as error:
        values = {field: request.POST[field] for field in wanted}
        return home(request, limit_errors=error.message_dict, limit_values=values, status=400)
    messages.success(request, "Your spending limits are saved.")
    return redirect("home")
