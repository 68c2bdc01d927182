"""Demo usage (60 days) and credit movements, through the real services. Idempotent: a day
a demo user has usage for is not written again (wherever they are placed now), every credit
movement has a fixed reference, and an invoice already recorded is left as it is."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.demo import DEMO_USERS
from accounts.models import User
from billing.credits import Kind, Movement, credits_apply
from billing.invoices import invoice_apply
from billing.models import BillingHistory, BillingProfile, UsageDaily
from billing.pricing import storage_gb_months, to_cents
from billing.selectors import credit_balance
from billing.usage import UsageRecord, usage_upsert
from clusters.models import UserHopsworksAssignment

DAYS = 60
PREPAID = {1: Decimal("150"), 2: Decimal("5")}  # Grace buys plenty; Alan too little
LOW_BALANCE_DEMO = Decimal("3")  # a prepaid demo user is topped up to this, not stopped


@transaction.atomic
def seed() -> list[str]:
    today = timezone.now().date()
    first_day = today - dt.timedelta(days=DAYS)
    # A day a demo user already has usage for stays as it is, on whichever cluster it was
    # recorded: after an operator moved them, a rerun adds no second history on the new one.
    have = set(
        UsageDaily.objects.filter(
            user_id__in=[u[0] for u in DEMO_USERS], date__gte=first_day
        ).values_list("user_id", "date")
    )
    records = []
    for assignment in UserHopsworksAssignment.objects.filter(
        user_id__in=[u[0] for u in DEMO_USERS]
    ).order_by("user_id"):
        rng = random.Random(assignment.user_id)  # noqa: S311 - demo figures, the same each run
        gb_held = Decimal(rng.randrange(5, 400))
        for offset in range(DAYS, 0, -1):
            day = today - dt.timedelta(days=offset)
            # Drawn for every day, kept or not, so each day's figures are the same each run.
            record = UsageRecord(
                user_id=assignment.user_id,
                cluster_id=assignment.hopsworks_cluster_id,
                date=day,
                cpu_hours=Decimal(rng.randrange(0, 800000)) / 100000,
                gpu_hours=Decimal(rng.choice([0, 0, 0, rng.randrange(0, 400)])) / 100,
                storage_gb_months=storage_gb_months(gb_held=gb_held, day=day),
                api_calls=rng.randrange(0, 50000),
            )
            if (assignment.user_id, day) not in have:
                records.append(record)

    movements = []
    for index, amount in PREPAID.items():
        user = User.objects.get(pk=DEMO_USERS[index][0])
        # Prepaid from the start (their 60 days are settled with credits), not a switch
        # today, which would leave the days before it postpaid.
        BillingProfile.objects.update_or_create(
            user=user, defaults={"mode": BillingProfile.Mode.PREPAID}
        )
        movements.append(
            Movement(
                user_id=user.pk,
                kind=Kind.PURCHASE,
                amount=amount,
                reference=f"demo:purchase:{user.pk}",
                actor="seed_demo",
                reason="Demo credit purchase",
            )
        )
    movements.append(
        Movement(
            user_id=DEMO_USERS[1][0],
            kind=Kind.GRANT,
            amount=Decimal("20"),
            reference="demo:grant:welcome",
            actor="seed_demo",
            reason="Welcome credit",
        )
    )
    credits_apply(movements)  # before the usage, as a customer would have bought first
    result = usage_upsert(records=records, actor="seed_demo")
    _keep_demo_users_eligible(today)
    invoices = _demo_invoices(today)
    return [
        f"Demo usage: {result.rows} daily rows over {DAYS} days; "
        f"{result.credit_entries} new credit debits; {invoices} new demo invoices."
    ]


def _keep_demo_users_eligible(today: dt.date) -> None:
    """The periodic stop check must not stop the demo users: the postpaid ones on a cluster
    get a demo subscription (no Stripe customer, so nothing is ever reported for it), and a
    prepaid balance the usage took below LOW_BALANCE_DEMO is topped up to it (once a day:
    Alan stays low, which shows the low-balance warning, not a stop)."""
    for assignment in UserHopsworksAssignment.objects.filter(
        user_id__in=[u[0] for u in DEMO_USERS]
    ).order_by("user_id"):
        profile, _ = BillingProfile.objects.get_or_create(user_id=assignment.user_id)
        if profile.is_prepaid:
            balance = credit_balance(profile.user)
            if balance < LOW_BALANCE_DEMO:
                credits_apply(
                    [
                        Movement(
                            user_id=profile.user_id,
                            kind=Kind.GRANT,
                            amount=LOW_BALANCE_DEMO - balance,
                            reference=f"demo:topup:{profile.user_id}:{today}",
                            actor="seed_demo",
                            reason="Demo top-up (keeps the demo user above the floor)",
                        )
                    ]
                )
        elif not profile.has_active_subscription:
            profile.stripe_subscription_id = f"sub_demo_{profile.user_id.split('|')[-1]}"
            profile.subscription_status = "active"
            profile.save(
                update_fields=["stripe_subscription_id", "subscription_status", "updated_at"]
            )


def invoice_id(index: int, month: dt.date) -> str:
    return f"in_demo_{index}_{month:%Y%m}"


def _demo_invoices(today: dt.date) -> int:
    """Invoices as Stripe's webhooks would have recorded them, for the postpaid users."""
    last_month = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    before = (last_month - dt.timedelta(days=1)).replace(day=1)
    count = 0
    for index in (0, 3):  # Ada and Edsger are postpaid
        user_id = DEMO_USERS[index][0]
        for month, status in ((before, "paid"), (last_month, "pending")):
            if BillingHistory.objects.filter(stripe_invoice_id=invoice_id(index, month)).exists():
                continue  # recorded by an earlier run: an invoice, once issued, stays as is
            start = dt.datetime.combine(month, dt.time(), tzinfo=dt.UTC)
            end = dt.datetime.combine(
                (month + dt.timedelta(days=32)).replace(day=1), dt.time(), tzinfo=dt.UTC
            )
            total = UsageDaily.objects.filter(
                user_id=user_id, date__gte=month, date__lt=end.date()
            ).aggregate(total=Sum("total_cost"))["total"] or Decimal(0)
            invoice = {
                "id": invoice_id(index, month),
                "number": f"DEMO-{index}-{month:%Y%m}",
                "amount_due": int(to_cents(total) * 100),
                "currency": "usd",
                "created": int(end.timestamp()),
                "period_start": int(start.timestamp()),
                "period_end": int(end.timestamp()),
                "metadata": {"user_id": user_id},
            }
            invoice_apply(invoice, status=status, event_created=end)
            count += 1
    return count
