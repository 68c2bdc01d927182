"""Prepaid credits: an append-only ledger, applied once, exact under concurrency."""

import datetime as dt
import logging
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from billing.credits import (
    CreditError,
    Kind,
    Movement,
    credits_add,
    credits_apply_batch,
    credits_check_balances,
    credits_grant,
)
from billing.models import BillingProfile, CreditLedgerEntry, UserCredits
from billing.usage import UsageRecord, usage_upsert
from tests.concurrency import run_at_once
from tests.factories import ClusterFactory, UserFactory

D = Decimal


@pytest.mark.django_db
def test_a_reference_applies_once_however_often_it_arrives():
    user = UserFactory()
    for _ in range(3):
        credits_add(
            user=user, kind=Kind.PURCHASE, amount=D("25"), reference="stripe:cs_1", actor="stripe"
        )
    assert UserCredits.objects.get(user=user).balance == D("25")
    assert CreditLedgerEntry.objects.count() == 1


@pytest.mark.django_db
def test_each_entry_records_the_balance_after_it():
    user = UserFactory()
    credits_add(user=user, kind=Kind.PURCHASE, amount=D("10"), reference="p1", actor="t")
    credits_grant(user=user, amount=D("5"), reason="apology", actor="ops", reference="g1")
    credits_add(user=user, kind=Kind.REFUND, amount=D("-3"), reference="r1", actor="t")
    balances = list(
        CreditLedgerEntry.objects.order_by("id").values_list("balance_after", flat=True)
    )
    assert balances == [D("10"), D("15"), D("12")]


@pytest.mark.django_db
def test_a_batch_taking_many_balances_below_zero_logs_one_line_naming_them(caplog):
    """A usage batch can take thousands of prepaid users below zero: one warning per batch
    (how many, the first few ids), not one line per user. Users already below zero before
    the batch are not counted again."""
    users = sorted(UserFactory.create_batch(7), key=lambda u: u.pk)
    already = users[-1]
    credits_add(user=already, kind=Kind.ADJUSTMENT, amount=D("-1"), reference="a", actor="t")
    movements = [
        Movement(user_id=u.pk, kind=Kind.USAGE, amount=D("-2"), reference=f"u:{u.pk}", actor="t")
        for u in users
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="billing.credits"):
        credits_apply_batch(movements)
    lines = [r.getMessage() for r in caplog.records if r.name == "billing.credits"]
    assert len(lines) == 1
    assert lines[0].startswith("credit balance of 6 user(s) now negative: ")
    assert all(u.pk in lines[0] for u in users[:5])
    assert users[5].pk not in lines[0] and "and 1 more" in lines[0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "amount", "message"),
    [
        (Kind.PURCHASE, D("-5"), "positive"),
        (Kind.GRANT, D("0"), "zero"),
        (Kind.REFUND, D("5"), "negative"),
        (Kind.ADJUSTMENT, D("NaN"), "finite"),
        (Kind.GRANT, D("99999999"), "limited"),
    ],
)
def test_bad_movements_are_refused_and_write_nothing(kind, amount, message):
    user = UserFactory()
    with pytest.raises(CreditError, match=message):
        credits_add(user=user, kind=kind, amount=amount, reference="x", actor="t")
    assert not CreditLedgerEntry.objects.exists()


@pytest.mark.django_db
def test_a_grant_needs_a_reason():
    with pytest.raises(CreditError, match="why"):
        credits_grant(user=UserFactory(), amount=D("5"), reason=" ", actor="ops", reference="g")


@pytest.mark.django_db
def test_check_credit_balances_finds_and_repairs_a_summary_that_drifted(capsys):
    user = UserFactory()
    credits_add(user=user, kind=Kind.PURCHASE, amount=D("10"), reference="p1", actor="t")
    UserCredits.objects.filter(user=user).update(total_purchased=D("99"))

    with pytest.raises(CommandError, match="1 balance"):
        call_command("check_credit_balances")
    call_command("check_credit_balances", "--fix")

    assert UserCredits.objects.get(user=user).balance == D("10")
    assert credits_check_balances() == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_concurrent_purchases_grants_and_usage_debits_lose_nothing():
    user = UserFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    cluster = ClusterFactory()
    day = dt.date(2026, 11, 1)
    jobs = (
        [("purchase", n) for n in range(10)]  # 10 x $20
        + [("grant", n) for n in range(5)]  # 5 x $3
        + [("usage", n) for n in range(10)]  # 10 days x 10 CPU hours = 10 x $1
        + [("purchase", 0)] * 3  # the same purchase delivered again: applies once
    )

    def work(job):
        kind, n = job
        if kind == "purchase":
            credits_add(
                user=user, kind=Kind.PURCHASE, amount=D("20"), reference=f"cs_{n}", actor="stripe"
            )
        elif kind == "grant":
            credits_grant(user=user, amount=D("3"), reason="promo", actor="ops", reference=f"g{n}")
        else:
            usage_upsert(
                records=[
                    UsageRecord(
                        user_id=user.pk,
                        cluster_id=cluster.pk,
                        date=day + dt.timedelta(days=n),
                        cpu_hours=D("10"),
                    )
                ],
                actor="collector",
            )

    run_at_once(work, jobs)

    credits = UserCredits.objects.get(user=user)
    assert credits.total_purchased == D("215")
    assert credits.total_used == D("10")
    assert credits.balance == D("205")
    newest = CreditLedgerEntry.objects.filter(user=user).order_by("-id").first()
    assert newest.balance_after == D("205")
    assert credits_check_balances() == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_concurrent_recollections_of_one_day_debit_it_once():
    user = UserFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    cluster = ClusterFactory()
    batch = [
        UsageRecord(
            user_id=user.pk, cluster_id=cluster.pk, date=dt.date(2026, 11, 2), cpu_hours=D("7")
        )
    ]

    run_at_once(lambda _: usage_upsert(records=batch, actor="collector"), range(8))

    assert list(CreditLedgerEntry.objects.values_list("amount", flat=True)) == [D("-0.7")]
    assert UserCredits.objects.get(user=user).balance == D("-0.7")
