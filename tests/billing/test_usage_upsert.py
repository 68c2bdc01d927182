"""The usage upsert service: validated, all or nothing, idempotent, set-based."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import BillingProfile, CreditLedgerEntry, UsageDaily, UserCredits
from billing.usage import UsageRecord, UsageValidationError, usage_upsert
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db
D = Decimal
DAY = dt.date(2026, 11, 20)


def record(user, cluster=None, day=DAY, **figures):
    return UsageRecord(
        user_id=user.pk, cluster_id=cluster.pk if cluster else None, date=day, **figures
    )


def test_upserting_twice_changes_nothing_the_second_time():
    user, cluster = UserFactory(), ClusterFactory()
    batch = [record(user, cluster, cpu_hours=D("10"), api_calls=2000)]

    usage_upsert(records=batch, actor="test")
    first = UsageDaily.objects.get()
    usage_upsert(records=batch, actor="test")

    again = UsageDaily.objects.get()
    assert again.id == first.id
    assert (again.cpu_hours, again.api_calls, again.total_cost) == (D("10"), 2000, D("1.02"))


def test_a_recollected_day_replaces_the_figures_and_keeps_those_not_given():
    user, cluster = UserFactory(), ClusterFactory()
    usage_upsert(records=[record(user, cluster, cpu_hours=D("10"), api_calls=1000)], actor="t")
    usage_upsert(records=[record(user, cluster, cpu_hours=D("4"))], actor="t")  # no api_calls
    row = UsageDaily.objects.get()
    assert (row.cpu_hours, row.api_calls, row.total_cost) == (D("4"), 1000, D("0.41"))


def test_rows_without_a_cluster_are_one_per_user_and_day_too():
    user = UserFactory()
    usage_upsert(records=[record(user, api_calls=10)], actor="t")
    usage_upsert(records=[record(user, api_calls=20)], actor="t")
    assert UsageDaily.objects.get().api_calls == 20


def test_the_database_refuses_a_second_row_for_the_same_user_cluster_and_day():
    user = UserFactory()
    UsageDaily.objects.create(user=user, date=DAY)
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageDaily.objects.create(user=user, date=DAY)  # NULL cluster, still a duplicate


def test_one_bad_record_writes_nothing_and_is_named():
    user, cluster = UserFactory(), ClusterFactory()
    batch = [
        record(user, cluster, cpu_hours=D("1")),
        record(user, cluster, day=DAY - dt.timedelta(days=1), cpu_hours=D("-2")),
        UsageRecord(user_id="auth0|ghost", date=DAY, cpu_hours=D("1")),
        record(user, cluster, day=dt.date.today() + dt.timedelta(days=2), cpu_hours=D("1")),
        record(user, cluster, day=DAY - dt.timedelta(days=3), cpu_hours="lots"),
        record(user, cluster, day=DAY - dt.timedelta(days=4), gpu_hours=0.5),
        record(user, cluster, cpu_hours=D("2")),
    ]
    with pytest.raises(UsageValidationError) as caught:
        usage_upsert(records=batch, actor="t")
    errors = caught.value.errors
    assert sorted(errors) == [1, 2, 3, 4, 5, 6]
    assert "cpu_hours cannot be negative" in errors[1][0]
    assert "no user with id 'auth0|ghost'" in errors[2][0]
    assert "in the future" in errors[3][0]
    assert "not a number" in errors[4][0]
    assert "float" in errors[5][0] or "decimal" in errors[5][0]
    assert "same user, cluster and date as record 0" in errors[6][0]
    assert not UsageDaily.objects.exists()


def test_prepaid_usage_is_debited_and_a_recollected_day_moves_only_the_difference():
    user, cluster = UserFactory(), ClusterFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)

    usage_upsert(records=[record(user, cluster, cpu_hours=D("10"))], actor="t")  # $1.00
    usage_upsert(records=[record(user, cluster, cpu_hours=D("10"))], actor="t")  # rerun
    usage_upsert(records=[record(user, cluster, cpu_hours=D("15"))], actor="t")  # +$0.50
    usage_upsert(records=[record(user, cluster, cpu_hours=D("12"))], actor="t")  # -$0.30

    amounts = list(CreditLedgerEntry.objects.order_by("id").values_list("amount", flat=True))
    assert amounts == [D("-1"), D("-0.5"), D("0.3")]
    credits = UserCredits.objects.get(user=user)
    assert credits.total_used == D("1.2")
    assert credits.balance == D("-1.2")  # usage happened: the balance may go below zero
    assert UsageDaily.objects.get().credits_debited == D("1.2")


def test_postpaid_usage_touches_no_credits():
    user, cluster = UserFactory(), ClusterFactory()
    usage_upsert(records=[record(user, cluster, cpu_hours=D("10"))], actor="t")
    assert not CreditLedgerEntry.objects.exists()


def test_the_upsert_makes_the_same_number_of_queries_for_5_and_for_200_records():
    users, cluster = UserFactory.create_batch(5), ClusterFactory()

    def queries(first, days):
        batch = [
            record(u, cluster, day=DAY - dt.timedelta(days=d), cpu_hours=D("1"))
            for u in users
            for d in range(first, first + days)
        ]
        with CaptureQueriesContext(connection) as captured:
            usage_upsert(records=batch, actor="t")
        return len(captured)

    # New days (nothing stored on them).
    assert queries(0, 1) == queries(1, 40)
    # The same again: days with usage stored (a rerun).
    assert queries(0, 1) == queries(1, 40)
    # Stored and new rows in one batch.
    assert queries(40, 2) == queries(41, 40)


def test_a_new_cluster_day_reads_no_usage_rows_when_other_clusters_have_that_day():
    """Collection writes a day cluster by cluster: the second cluster's day is new although
    the day has usage (the first cluster's). Its 20,000 records were each looked up in
    usage_daily for nothing; whether a cluster-day has rows is in its rollup."""
    users = UserFactory.create_batch(3)
    first, second = ClusterFactory(), ClusterFactory()
    usage_upsert(records=[record(u, first, cpu_hours=D("1")) for u in users], actor="t")

    with CaptureQueriesContext(connection) as captured:
        usage_upsert(records=[record(u, second, cpu_hours=D("2")) for u in users], actor="t")

    reads = [q["sql"] for q in captured if "FROM usage_daily u" in q["sql"]]
    assert reads == []
    assert UsageDaily.objects.filter(hopsworks_cluster=second).count() == 3
    # Stored rows of that cluster-day are still found (and only once each).
    usage_upsert(records=[record(u, second, cpu_hours=D("3")) for u in users], actor="t")
    assert UsageDaily.objects.filter(hopsworks_cluster=second, cpu_hours=D("3")).count() == 3
    assert UsageDaily.objects.count() == 6


def test_a_day_keeps_the_way_it_was_first_billed_when_the_mode_changes():
    user, cluster = UserFactory(), ClusterFactory()
    usage_upsert(records=[record(user, cluster, cpu_hours=D("10"))], actor="t")  # postpaid
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)

    usage_upsert(records=[record(user, cluster, cpu_hours=D("12"))], actor="t")  # re-collected
    usage_upsert(
        records=[record(user, cluster, day=DAY + dt.timedelta(days=1), cpu_hours=D("1"))], actor="t"
    )

    assert list(CreditLedgerEntry.objects.values_list("amount", flat=True)) == [D("-0.1")]
    assert UsageDaily.objects.get(date=DAY).billed_via == "stripe"


def test_an_absurd_quantity_is_a_clear_error_not_an_overflow():
    user = UserFactory()
    with pytest.raises(UsageValidationError, match="implausibly large"):
        usage_upsert(
            records=[record(user, cpu_hours=D("39100921040505985396.8701006737"))], actor="t"
        )
    assert not UsageDaily.objects.exists()


# The channel of a day is the billing mode in force when the day began (00:00 UTC).


def start_of_today():
    return dt.datetime.combine(timezone.now().date(), dt.time(), tzinfo=dt.UTC)


def test_a_day_from_before_a_switch_backfilled_after_it_is_settled_on_that_days_mode():
    from billing.profiles import billing_mode_set

    user, cluster = UserFactory(), ClusterFactory()
    yesterday = timezone.now().date() - dt.timedelta(days=1)
    billing_mode_set(user=user, mode=BillingProfile.Mode.PREPAID, actor="ops")  # now

    usage_upsert(records=[record(user, cluster, day=yesterday, cpu_hours=D("10"))], actor="t")
    # Today began before the switch too: it is still postpaid.
    usage_upsert(
        records=[record(user, cluster, day=timezone.now().date(), cpu_hours=D("3"))], actor="t"
    )

    assert set(UsageDaily.objects.values_list("billed_via", flat=True)) == {"stripe"}
    assert not CreditLedgerEntry.objects.exists()


def test_a_day_that_began_after_a_switch_is_settled_on_the_new_mode():
    from billing.profiles import billing_mode_set

    user, cluster = UserFactory(), ClusterFactory()
    today = timezone.now().date()
    billing_mode_set(
        user=user, mode=BillingProfile.Mode.PREPAID, actor="ops", effective_at=start_of_today()
    )

    usage_upsert(
        records=[
            record(user, cluster, day=today - dt.timedelta(days=1), cpu_hours=D("10")),
            record(user, cluster, day=today, cpu_hours=D("3")),
        ],
        actor="t",
    )

    assert dict(UsageDaily.objects.values_list("date", "billed_via")) == {
        today - dt.timedelta(days=1): "stripe",
        today: "credits",
    }
    assert list(CreditLedgerEntry.objects.values_list("amount", flat=True)) == [D("-0.3")]


def test_each_day_follows_the_mode_of_its_own_start_through_several_switches():
    from billing.models import BillingModeChange
    from billing.selectors import billing_modes_on

    early, late, never, profile_only = UserFactory.create_batch(4)
    BillingProfile.objects.create(user=profile_only, mode=BillingProfile.Mode.PREPAID)
    at = lambda day, hour=0: dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)  # noqa: E731
    for user, frm, to, when in [
        (early, "postpaid", "prepaid", at(DAY, 12)),  # mid-day: DAY is still postpaid
        (early, "prepaid", "postpaid", at(DAY + dt.timedelta(days=3))),
        (late, "prepaid", "postpaid", at(DAY)),
    ]:
        BillingModeChange.objects.create(
            user=user, from_mode=frm, to_mode=to, effective_at=when, actor="t"
        )
    days = [DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=3)]

    modes = billing_modes_on([(u.pk, d) for u in (early, late, never, profile_only) for d in days])

    assert [modes[(early.pk, d)] for d in days] == ["postpaid", "postpaid", "prepaid", "postpaid"]
    assert [modes[(late.pk, d)] for d in days] == ["prepaid", "postpaid", "postpaid", "postpaid"]
    assert {modes[(never.pk, d)] for d in days} == {"postpaid"}
    assert {modes[(profile_only.pk, d)] for d in days} == {"prepaid"}


def test_a_switch_cannot_take_effect_in_a_day_already_begun_or_before_the_last_switch():
    from billing.models import BillingModeChange
    from billing.profiles import billing_mode_set

    user, cluster = UserFactory(), ClusterFactory()
    with pytest.raises(ValueError, match="before the start of today"):
        billing_mode_set(
            user=user,
            mode="prepaid",
            actor="ops",
            effective_at=start_of_today() - dt.timedelta(seconds=1),
        )
    usage_upsert(
        records=[record(user, cluster, day=timezone.now().date(), cpu_hours=D("1"))], actor="t"
    )
    with pytest.raises(ValueError, match="already has usage"):
        billing_mode_set(user=user, mode="prepaid", actor="ops", effective_at=start_of_today())
    tomorrow = start_of_today() + dt.timedelta(days=1)
    billing_mode_set(user=user, mode="prepaid", actor="ops", effective_at=tomorrow)
    with pytest.raises(ValueError, match="earlier than the last switch"):
        billing_mode_set(
            user=user, mode="postpaid", actor="ops", effective_at=tomorrow - dt.timedelta(hours=1)
        )

    change = BillingModeChange.objects.get()
    assert (change.from_mode, change.to_mode, change.actor) == ("postpaid", "prepaid", "ops")
    assert BillingProfile.objects.get(user=user).mode == "prepaid"


def _rows_written():
    """Inserts and updates of usage_daily not yet flushed to the statistics, as PostgreSQL
    counts them (each is a new row version: WAL and index work). Compared before and after,
    as they may include transactions that ended a moment ago."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables "
            "WHERE relname = 'usage_daily'"
        )
        row = cursor.fetchone()
    return row or (0, 0)


def test_a_new_row_is_written_once_and_an_unchanged_row_not_at_all():
    users, cluster = UserFactory.create_batch(3), ClusterFactory()
    BillingProfile.objects.create(user=users[0], mode=BillingProfile.Mode.PREPAID)
    batch = [record(u, cluster, cpu_hours=D("10"), api_calls=1000) for u in users]
    inserted, updated = _rows_written()

    def written():
        now = _rows_written()
        return now[0] - inserted, now[1] - updated

    usage_upsert(records=batch, actor="t")
    assert written() == (3, 0)  # inserted with their figures, never updated
    rows = {r.user_id: r for r in UsageDaily.objects.all()}
    assert {r.total_cost for r in rows.values()} == {D("1.01")}
    assert rows[users[0].pk].credits_debited == D("1.01")
    assert rows[users[0].pk].credit_revision == 1
    assert list(CreditLedgerEntry.objects.values_list("reference", flat=True)) == [
        f"usage:{rows[users[0].pk].id}:r1"
    ]

    usage_upsert(records=batch, actor="t")  # a rerun
    assert written() == (3, 0)

    batch[1] = record(users[1], cluster, cpu_hours=D("20"))  # one row re-collected
    usage_upsert(records=batch, actor="t")
    assert written() == (3, 1)
    assert UsageDaily.objects.get(user=users[1]).total_cost == D("2.01")


def test_new_rows_get_time_ordered_version_7_ids():
    """Version 7 (RFC 9562): the time in milliseconds first, then a counter within the
    batch, then 62 random bits. New rows' ids land at the right edge of the primary key's
    index instead of a random leaf page each (a cluster-day of 20,000 rows at 9 million:
    a quarter of the insert's time and of its full-page images; bench/README.md)."""
    import time
    import uuid

    from billing.usage import _new_ids

    before = time.time_ns() // 1_000_000
    ids = list(_new_ids(9000))  # more than one counter's worth (4,096) per millisecond
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert [str(u) for u in parsed] == ids
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert len(set(ids)) == 9000
    assert sorted(parsed) == parsed  # in order within a batch
    moments = {u.int >> 80 for u in parsed}
    assert before <= min(moments) and max(moments) <= after + 2
    assert len({u.int & ((1 << 62) - 1) for u in parsed}) == 9000  # the random part


def test_one_batch_prices_each_user_by_their_own_negotiated_prices():
    from billing.models import Price

    vip, other, cluster = UserFactory(), UserFactory(), ClusterFactory()
    Price.objects.create(resource="cpu_hour", unit_price=D("0.05"), effective_from=DAY, user=vip)
    usage_upsert(
        records=[
            record(u, cluster, day=d, cpu_hours=D("10"))
            for u in (vip, other)
            for d in (DAY - dt.timedelta(days=1), DAY)
        ],
        actor="t",
    )
    costs = {(r.user_id, r.date): r.total_cost for r in UsageDaily.objects.all()}
    assert costs == {
        (vip.pk, DAY - dt.timedelta(days=1)): D("1"),  # before the negotiated price began
        (vip.pk, DAY): D("0.5"),
        (other.pk, DAY - dt.timedelta(days=1)): D("1"),
        (other.pk, DAY): D("1"),
    }


def test_records_of_days_with_no_usage_at_all_are_not_looked_up_one_by_one():
    """A first load (a backfill, a new day) has nothing stored: the day's absence, one
    index probe, says so for all its records (issue 16: the first load's speed)."""
    users, cluster = UserFactory.create_batch(3), ClusterFactory()
    usage_upsert(records=[record(users[0], cluster, cpu_hours=D("1"))], actor="t")
    later = DAY + dt.timedelta(days=1)

    def key_lookups(batch):
        with CaptureQueriesContext(connection) as captured:
            usage_upsert(records=batch, actor="t")
        return [
            q["sql"] for q in captured if "FROM usage_daily u" in q["sql"] and "unnest" in q["sql"]
        ]

    assert key_lookups([record(u, cluster, day=later, cpu_hours=D("2")) for u in users]) == []
    # A day that has usage: its records are looked up (and the stored one locked).
    lookups = key_lookups(
        [record(u, cluster, day=DAY, cpu_hours=D("3")) for u in users]
        + [record(u, cluster, day=later + dt.timedelta(days=1), cpu_hours=D("3")) for u in users]
    )
    assert len(lookups) == 2 and "FOR UPDATE" in lookups[1]
    assert (
        sorted(UsageDaily.objects.filter(date=DAY).values_list("cpu_hours", flat=True))
        == [D("3")] * 3
    )


def test_new_rows_debits_are_not_looked_up_in_the_ledger_and_a_rerun_still_applies_none():
    """A new row's first debit names a row inserted in the same transaction: it cannot
    have been applied before, so a first load looks up no ledger reference."""
    users, cluster = UserFactory.create_batch(3), ClusterFactory()
    for user in users:
        BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    batch = [record(u, cluster, cpu_hours=D("10")) for u in users]
    with CaptureQueriesContext(connection) as captured:
        usage_upsert(records=batch, actor="t")
    assert not [q for q in captured if "SELECT reference FROM billing_credit_ledger" in q["sql"]]
    assert CreditLedgerEntry.objects.count() == 3

    usage_upsert(records=batch, actor="t")  # a rerun
    batch[0] = record(users[0], cluster, cpu_hours=D("20"))
    usage_upsert(records=batch, actor="t")  # one row re-collected: its difference only
    assert CreditLedgerEntry.objects.count() == 4
    assert UserCredits.objects.get(user=users[0]).total_used == D("2")


def test_new_rows_keep_every_value_exactly_through_the_copy():
    """New rows are sent as COPY text built here: a user id with the characters COPY
    escapes (backslash, tab, newline), no cluster, and figures of every kind arrive as
    given."""
    odd = UserFactory(id="auth0|a\\b\tc\nd\re N")
    plain, cluster = UserFactory(), ClusterFactory()
    BillingProfile.objects.create(user=odd, mode=BillingProfile.Mode.PREPAID)
    usage_upsert(
        records=[
            record(odd, None, cpu_hours=D("1.5"), gpu_hours=D("0.00001"), api_calls=7),
            record(plain, cluster, storage_gb_months=D("1E+2"), api_calls=2**31 - 1),
            record(plain, None, day=DAY - dt.timedelta(days=1)),
        ],
        actor="t",
    )
    rows = {(r.user_id, r.hopsworks_cluster_id, r.date): r for r in UsageDaily.objects.all()}
    assert set(rows) == {
        (odd.pk, None, DAY),
        (plain.pk, cluster.pk, DAY),
        (plain.pk, None, DAY - dt.timedelta(days=1)),
    }
    first = rows[(odd.pk, None, DAY)]
    assert (first.cpu_hours, first.gpu_hours, first.storage_gb_months, first.api_calls) == (
        D("1.5"),
        D("0.00001"),
        D("0"),
        7,
    )
    assert first.credits_debited == first.total_cost > 0 and first.credit_revision == 1
    assert first.billed_via == UsageDaily.BilledVia.CREDITS
    second = rows[(plain.pk, cluster.pk, DAY)]
    assert (second.storage_gb_months, second.api_calls) == (D("100"), 2**31 - 1)
    assert second.billed_via == UsageDaily.BilledVia.STRIPE and second.credit_revision == 0
    assert abs(first.created_at - timezone.now()) < dt.timedelta(minutes=1)
    assert first.created_at == first.updated_at
    assert CreditLedgerEntry.objects.get(user=odd).usage_id == first.id


def test_records_of_users_outside_those_stored_on_their_day_are_not_looked_up():
    """A load cut into batches leaves a day half stored: the next batch's records of that
    day are of users after (or before) those stored, and cannot have a row. The users
    stored on a day span a range (two index probes): only records inside it are looked
    up (issue 16: the first load's probe)."""
    users = sorted(UserFactory.create_batch(5), key=lambda u: u.pk)
    cluster = ClusterFactory()
    usage_upsert(records=[record(u, cluster, cpu_hours=D("1")) for u in users[1:3]], actor="t")

    def key_lookups(batch):
        with CaptureQueriesContext(connection) as captured:
            usage_upsert(records=batch, actor="t")
        return [q["sql"] for q in captured if "FROM usage_daily u" in q["sql"]]

    assert key_lookups([record(u, cluster, cpu_hours=D("2")) for u in (users[0], users[4])]) == []
    # Inside the range: looked up, the stored rows settled as such, a new one inserted.
    assert key_lookups([record(u, cluster, cpu_hours=D("3")) for u in users[1:4]]) != []
    cpu = dict(UsageDaily.objects.values_list("user_id", "cpu_hours"))
    assert cpu == {
        users[0].pk: D("2"),
        users[1].pk: D("3"),
        users[2].pk: D("3"),
        users[3].pk: D("3"),
        users[4].pk: D("2"),
    }
