"""The usage rollups, monthly per user (`usage_monthly`) and daily per cluster
(`usage_cluster_daily`), each equal a GROUP BY over `usage_daily` after anything that
writes usage: the upsert, reruns, corrections, an operator's raw SQL,
deletes, a user's deletion, TRUNCATE, concurrent writers, and the migration's fill."""

import datetime as dt
import random
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from billing.models import BillingProfile, UsageClusterDaily, UsageDaily, UsageMonthly
from billing.usage import UsageRecord, UsageValidationError, usage_upsert
from tests.concurrency import lock_waits, run_at_once
from tests.factories import ClusterFactory, UserFactory

D = Decimal
TODAY = timezone.now().date()
# Three months ending with this one, so every day is in the past or today.
MONTHS = [(TODAY.replace(day=1) - dt.timedelta(days=31 * n)).replace(day=1) for n in (2, 1, 0)]
SUMS = "cpu_hours, gpu_hours, storage_gb_months, api_calls, total_cost, credits_debited"


def grouped() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT user_id, hopsworks_cluster_id, date_trunc('month', date)::date, billed_via,
                   {", ".join(f"sum({c})" for c in SUMS.split(", "))}, count(*)
            FROM usage_daily GROUP BY 1, 2, 3, 4
            """
        )
        return sorted(cursor.fetchall(), key=str)


def rollup() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT user_id, hopsworks_cluster_id, month, billed_via, {SUMS}, days "
            "FROM usage_monthly"
        )
        return sorted(cursor.fetchall(), key=str)


def grouped_daily() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT hopsworks_cluster_id, date, billed_via,
                   {", ".join(f"sum({c})" for c in SUMS.split(", "))}, count(*)
            FROM usage_daily GROUP BY 1, 2, 3
            """
        )
        return sorted(cursor.fetchall(), key=str)


def rollup_daily() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT hopsworks_cluster_id, date, billed_via, {SUMS}, usage_rows "
            "FROM usage_cluster_daily"
        )
        return sorted(cursor.fetchall(), key=str)


def assert_exact(*context):
    assert rollup() == grouped(), context
    assert rollup_daily() == grouped_daily(), context


def days_in(month: dt.date) -> list[dt.date]:
    following = (month + dt.timedelta(days=32)).replace(day=1)
    return [
        month + dt.timedelta(days=n)
        for n in range((following - month).days)
        if month + dt.timedelta(days=n) <= TODAY
    ]


def random_record(rng, users, clusters):
    month = rng.choice(MONTHS)
    return UsageRecord(
        user_id=rng.choice(users).pk,
        cluster_id=rng.choice(clusters).pk if rng.random() < 0.8 else None,
        date=rng.choice(days_in(month)),
        cpu_hours=D(rng.randint(0, 4800)) / 100,
        gpu_hours=D(rng.choice([0, 0, 1, 3])),
        storage_gb_months=D(rng.randint(0, 900)) / 1000,
        api_calls=rng.randint(0, 50_000),
    )


def dedupe(records):
    return list({r.key: r for r in records}.values())


def raw(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)  # always with parameters: `%%` is `%`


@pytest.mark.django_db
@pytest.mark.parametrize("seed", range(4))
def test_the_rollup_equals_the_group_by_after_any_mix_of_writes(seed):
    rng = random.Random(seed)
    users = [UserFactory() for _ in range(4)]
    BillingProfile.objects.create(user=users[0], mode=BillingProfile.Mode.PREPAID)
    clusters = [ClusterFactory(), ClusterFactory()]
    batches = []
    for step in range(14):
        kind = rng.choice(["new", "new", "rerun", "correct", "sql", "delete", "insert"])
        if kind == "new" or not batches:
            batch = dedupe(random_record(rng, users, clusters) for _ in range(rng.randint(1, 25)))
            usage_upsert(records=batch, actor="test")
            batches.append(batch)
        elif kind == "rerun":
            usage_upsert(records=rng.choice(batches), actor="test")
        elif kind == "correct":
            batch = [
                UsageRecord(
                    user_id=r.user_id,
                    cluster_id=r.cluster_id,
                    date=r.date,
                    cpu_hours=D(rng.randint(0, 100)),
                    api_calls=None,
                )
                for r in rng.choice(batches)
            ]
            usage_upsert(records=batch, actor="test")
        elif kind == "sql":  # an operator on Supabase: figures, keys and channel moved
            raw(
                "UPDATE usage_daily SET cpu_hours = cpu_hours * 2, total_cost = total_cost + 1 "
                "WHERE api_calls %% 3 = 0"
            )
            raw(
                "UPDATE usage_daily SET date = date - 1 WHERE api_calls %% 7 = 1 "
                "AND date - 1 > %s AND NOT EXISTS (SELECT 1 FROM usage_daily o "
                "WHERE o.user_id = usage_daily.user_id AND o.date = usage_daily.date - 1 "
                "AND o.hopsworks_cluster_id IS NOT DISTINCT FROM usage_daily.hopsworks_cluster_id)",
                [MONTHS[0]],
            )
            raw("UPDATE usage_daily SET billed_via = 'credits' WHERE api_calls %% 5 = 2")
            raw("UPDATE usage_daily SET updated_at = now()")  # no figure changes
        elif kind == "delete":
            raw(
                "DELETE FROM billing_credit_ledger WHERE usage_id IN "
                "(SELECT id FROM usage_daily WHERE api_calls %% 4 = 0)"
            )
            raw("DELETE FROM usage_daily WHERE api_calls %% 4 = 0")
        elif kind == "insert":  # a multi-row INSERT by hand, NULL cluster included
            raw(
                "INSERT INTO usage_daily (user_id, hopsworks_cluster_id, date, cpu_hours, "
                "total_cost) SELECT %s, c, d, 1.5, 0.25 FROM unnest(%s::uuid[]) c, "
                "generate_series(%s::date, %s::date, '1 day') d ON CONFLICT DO NOTHING",
                [
                    rng.choice(users).pk,
                    [clusters[0].pk, None],
                    MONTHS[1],
                    MONTHS[1] + dt.timedelta(3),
                ],
            )
        assert_exact(step, kind)
    # A user deleted (their usage first, as the PROTECT foreign key asks).
    gone = users[1]
    raw("DELETE FROM billing_credit_ledger WHERE user_id = %s", [gone.pk])
    UsageDaily.objects.filter(user=gone).delete()
    gone.delete()
    assert_exact()
    assert not UsageMonthly.objects.filter(user_id=gone.pk).exists()


@pytest.mark.django_db
def test_keys_left_without_a_day_are_removed_and_a_truncate_empties_the_rollup():
    user, cluster = UserFactory(), ClusterFactory()
    usage_upsert(
        records=[UsageRecord(user_id=user.pk, cluster_id=cluster.pk, date=TODAY, cpu_hours=D(2))],
        actor="t",
    )
    assert UsageMonthly.objects.get().days == 1
    UsageDaily.objects.all().delete()
    assert not UsageMonthly.objects.exists()
    assert not UsageClusterDaily.objects.exists()

    usage_upsert(records=[UsageRecord(user_id=user.pk, date=TODAY, api_calls=5)], actor="t")
    assert UsageClusterDaily.objects.get().hopsworks_cluster_id is None
    raw("SET CONSTRAINTS ALL IMMEDIATE")  # TRUNCATE refuses pending foreign-key checks
    raw("TRUNCATE usage_daily CASCADE")
    assert not UsageMonthly.objects.exists()
    assert not UsageClusterDaily.objects.exists()


@pytest.mark.django_db
def test_one_insert_adding_to_stored_months_new_months_and_one_month_twice_stays_exact():
    """The insert trigger adds to the rows it finds with an UPDATE and inserts the rest
    (billing 0042): one statement mixing both, with two rows of one new user-month and two
    of one stored user-month, each with and without a cluster, counts each row once."""
    stored, fresh, cluster = UserFactory(), UserFactory(), ClusterFactory()
    month = MONTHS[1]
    usage_upsert(
        records=[
            UsageRecord(user_id=stored.pk, cluster_id=cluster.pk, date=month, cpu_hours=D(1)),
            UsageRecord(user_id=stored.pk, date=month, api_calls=7),
        ],
        actor="t",
    )
    rows = [
        (u.pk, c, month + dt.timedelta(days=day), D(day) / 4)
        for u in (stored, fresh)
        for c in (cluster.pk, None)
        for day in (1, 2)
    ]
    raw(
        """
        INSERT INTO usage_daily (id, user_id, hopsworks_cluster_id, date, cpu_hours,
            gpu_hours, storage_gb_months, api_calls, total_cost, credits_debited,
            credit_revision, billed_via, created_at, updated_at)
        SELECT gen_random_uuid(), r.user_id, r.cluster_id, r.date, r.cpu, 0, 0, 3, r.cpu, 0,
               0, 'stripe', now(), now()
        FROM unnest(%s::text[], %s::uuid[], %s::date[], %s::numeric[])
          AS r(user_id, cluster_id, date, cpu)
        """,
        [[r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]],
    )
    assert_exact()
    assert UsageMonthly.objects.get(user=stored, hopsworks_cluster=cluster).days == 3
    assert UsageMonthly.objects.get(user=fresh, hopsworks_cluster=None).days == 2
    assert UsageMonthly.objects.count() == 4


@pytest.mark.django_db
def test_a_month_of_api_calls_past_the_integer_range_still_adds_up():
    user = UserFactory()
    usage_upsert(
        records=[
            UsageRecord(user_id=user.pk, date=day, api_calls=2**31 - 1)
            for day in days_in(MONTHS[1])
        ],
        actor="t",
    )
    assert UsageMonthly.objects.get().api_calls == (2**31 - 1) * len(days_in(MONTHS[1]))
    assert_exact()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_concurrent_writers_of_one_user_month_leave_it_exact():
    user, cluster = UserFactory(), ClusterFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    month = MONTHS[1]
    days = days_in(month)

    def write(n):
        # Each writer: days of its own, days shared with the others (new or corrections),
        # with and without a cluster.
        rng = random.Random(n)
        picked = rng.sample(days, 8) + days[:3]
        records = dedupe(
            UsageRecord(
                user_id=user.pk,
                cluster_id=rng.choice([cluster.pk, None]),
                date=day,
                cpu_hours=D(rng.randint(1, 40)),
                api_calls=rng.randint(0, 100),
            )
            for day in picked
        )
        for _ in range(3):
            usage_upsert(records=records, actor=f"writer {n}")
            records = [
                UsageRecord(
                    user_id=r.user_id,
                    cluster_id=r.cluster_id,
                    date=r.date,
                    cpu_hours=r.cpu_hours + 1,
                )
                for r in records
            ]

    failures = []

    def writer(n):
        try:
            write(n)
        except Exception as error:
            failures.append(f"writer {n}: {error!r}")
            raise

    try:
        run_at_once(writer, list(range(6)))
    finally:
        assert failures == []
    assert_exact()
    assert sum(m.days for m in UsageMonthly.objects.all()) == UsageDaily.objects.count()
    assert not UsageClusterDaily.objects.filter(usage_rows=0).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_concurrent_writers_of_other_users_on_the_same_cluster_days_do_not_deadlock():
    # Each writer has users of its own; all write the same cluster-days (both clusters,
    # none, both channels). A call first inserts some cluster-days' rows, then updates
    # others': a writer inserting on day 1 and updating on day 2 meets one doing the
    # reverse, unless both lock the rollup's rows in one order before writing.
    clusters = [ClusterFactory(), ClusterFactory()]
    days = days_in(MONTHS[1])[:4]
    writers = []
    for n in range(6):
        users = [UserFactory(), UserFactory()]
        if n % 2:
            BillingProfile.objects.create(user=users[0], mode=BillingProfile.Mode.PREPAID)
        writers.append(users)

    def write(n):
        rng = random.Random(n)
        keys = [(u, c, d) for u in writers[n] for c in [*clusters, None] for d in days]
        for round_ in range(1, 5):
            # A random quarter, half, three quarters, all: some rows new, some corrections.
            picked = rng.sample(keys, len(keys) * round_ // 4)
            records = [
                UsageRecord(
                    user_id=u.pk,
                    cluster_id=c.pk if c else None,
                    date=d,
                    cpu_hours=D(rng.randint(1, 40) + round_),
                    api_calls=rng.randint(0, 100),
                )
                for u, c, d in picked
            ]
            usage_upsert(records=records, actor=f"writer {n}")

    failures = []

    def writer(n):
        try:
            write(n)
        except Exception as error:
            failures.append(f"writer {n}: {error!r}")
            raise

    try:
        run_at_once(writer, list(range(len(writers))))
    finally:
        assert failures == []
    assert_exact()
    assert sum(r.usage_rows for r in UsageClusterDaily.objects.all()) == UsageDaily.objects.count()
    assert not UsageClusterDaily.objects.filter(usage_rows=0).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_the_migration_fills_the_rollup_from_the_usage_already_there():
    user, cluster = UserFactory(), ClusterFactory()
    executor = MigrationExecutor(connection)
    executor.migrate([("billing", "0029_usage_monthly")])  # no triggers, no rollups yet
    raw(
        "INSERT INTO usage_daily (user_id, hopsworks_cluster_id, date, cpu_hours, api_calls, "
        "total_cost, billed_via) SELECT %s, CASE WHEN n %% 3 = 0 THEN NULL ELSE %s::uuid END, "
        "%s::date + n, n, n * 10, n * 0.1, CASE WHEN n %% 2 = 0 THEN 'stripe' ELSE 'credits' END "
        "FROM generate_series(0, 70) n",
        [user.pk, cluster.pk, MONTHS[0]],
    )
    assert rollup() == []
    assert "usage_cluster_daily" not in connection.introspection.table_names()

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert len(rollup()) > 3
    assert len(rollup_daily()) > 3
    assert_exact()
    # And the triggers keep it from there.
    with transaction.atomic():
        raw("UPDATE usage_daily SET cpu_hours = cpu_hours + 1 WHERE hopsworks_cluster_id IS NULL")
    assert_exact()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_an_operator_locking_usage_rows_before_writing_them_does_not_deadlock_with_a_writer():
    # An operator's SQL (or any writer outside the service) locks usage rows first and
    # reaches the rollups through the triggers, at the end of its statement. A writer
    # that held rollup rows while waiting for those usage rows would deadlock with it.
    user, cluster = UserFactory(), ClusterFactory()
    day = days_in(MONTHS[1])[0]
    record = UsageRecord(user_id=user.pk, cluster_id=cluster.pk, date=day, cpu_hours=D(2))
    usage_upsert(records=[record], actor="t")
    row_id = UsageDaily.objects.get().pk

    operator = connection.get_new_connection(connection.get_connection_params())
    operator.autocommit = False
    failures = []

    def write():
        try:
            usage_upsert(
                records=[
                    UsageRecord(user_id=user.pk, cluster_id=cluster.pk, date=day, cpu_hours=D(5))
                ],
                actor="writer",
            )
        except Exception as error:
            failures.append(repr(error))
        finally:
            connection.close()

    thread = threading.Thread(target=write)
    try:
        with operator.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (own_pid,) = cursor.fetchone()
            cursor.execute("SELECT 1 FROM usage_daily WHERE id = %s FOR UPDATE", [row_id])
            thread.start()
            # The writer is waiting for the row the operator holds.
            for _ in range(300):
                if lock_waits(cursor, besides=own_pid):
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the writer never waited for the operator's lock")
            cursor.execute(
                "UPDATE usage_daily SET cpu_hours = cpu_hours + 1 WHERE id = %s", [row_id]
            )
        operator.commit()
    except Exception as error:
        failures.append(f"operator: {error!r}")
        operator.rollback()
    finally:
        thread.join(timeout=60)
        operator.close()
    assert failures == []
    assert UsageDaily.objects.get().cpu_hours == 5
    assert_exact()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_a_key_an_outside_writer_inserts_during_the_plain_insert_is_settled_once():
    # The upsert inserts new rows with a plain INSERT (its turns keep other upserts away);
    # a writer outside the turns (an operator's SQL) may still insert one of its keys. The
    # insert then waits for that writer, fails on the key, is rolled back to its savepoint
    # and retried with ON CONFLICT: the outside row is settled like a stored one.
    from django.test.utils import CaptureQueriesContext

    from billing.models import CreditLedgerEntry, UserCredits

    user, other, cluster = UserFactory(), UserFactory(), ClusterFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    day = days_in(MONTHS[1])[0]

    operator = connection.get_new_connection(connection.get_connection_params())
    operator.autocommit = False
    failures, statements = [], []

    def write():
        try:
            with CaptureQueriesContext(connection) as captured:
                usage_upsert(
                    records=[
                        UsageRecord(user_id=u.pk, cluster_id=cluster.pk, date=day, cpu_hours=D(5))
                        for u in (user, other)
                    ],
                    actor="writer",
                )
            statements.extend(q["sql"] for q in captured)
        except Exception as error:
            failures.append(repr(error))
        finally:
            connection.close()

    thread = threading.Thread(target=write)
    try:
        with operator.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (own_pid,) = cursor.fetchone()
            # Not taken from credits by the operator: the upsert debits the whole cost.
            cursor.execute(
                "INSERT INTO usage_daily (user_id, hopsworks_cluster_id, date, cpu_hours, "
                "billed_via) VALUES (%s, %s, %s, 2, 'credits')",
                [user.pk, cluster.pk, day],
            )
            thread.start()
            for _ in range(300):  # the writer waits for the operator's key
                if lock_waits(cursor, besides=own_pid):
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the writer never waited for the operator's row")
        operator.commit()
    except Exception as error:
        failures.append(f"operator: {error!r}")
        operator.rollback()
    finally:
        thread.join(timeout=60)
        operator.close()
    assert failures == []
    # The fallback ran: the COPY rolled back, then the ON CONFLICT insert.
    writes = [s for s in statements if "INSERT INTO usage_daily" in s or "COPY usage_daily" in s]
    assert [s.split()[0] for s in writes] == ["COPY", "INSERT"]
    assert "ON CONFLICT" in writes[1]
    assert any(s.startswith("ROLLBACK TO SAVEPOINT") for s in statements)
    rows = {r.user_id: r for r in UsageDaily.objects.all()}
    assert len(rows) == 2
    assert rows[user.pk].cpu_hours == 5 and rows[other.pk].cpu_hours == 5
    cost = rows[user.pk].total_cost
    assert cost > 0 and rows[user.pk].credits_debited == cost
    entries = list(CreditLedgerEntry.objects.filter(user=user))
    assert [e.amount for e in entries] == [-cost]
    assert entries[0].usage_id == rows[user.pk].id
    assert UserCredits.objects.get(user=user).total_used == cost
    assert_exact()


@pytest.mark.django_db
@pytest.mark.usefixtures("default_rate_card")
def test_new_rows_are_written_by_one_copy_when_no_one_else_took_their_keys():
    """COPY, not INSERT ... SELECT FROM unnest(arrays): PostgreSQL fills the heap a page at
    a time (one WAL record per page, not per row) and parses no array literals (5,000 rows
    in 64.6 ms against 82.8 ms, paired; bench/README.md, "eighth pass")."""
    from django.test.utils import CaptureQueriesContext

    users, cluster = UserFactory.create_batch(3), ClusterFactory()
    day = days_in(MONTHS[1])[0]
    with CaptureQueriesContext(connection) as captured:
        usage_upsert(
            records=[
                UsageRecord(user_id=u.pk, cluster_id=cluster.pk, date=day, cpu_hours=D(1))
                for u in users
            ],
            actor="t",
        )
    assert not [q for q in captured if "INSERT INTO usage_daily" in q["sql"]]
    assert [q["sql"].split("(")[0] for q in captured if "COPY" in q["sql"]] == ["COPY usage_daily "]
    assert UsageDaily.objects.count() == 3
    assert_exact()


def _forty_users_twenty_days():
    """800 new rows on one cluster: more than psycopg sends to PostgreSQL at once (32 kB)."""
    cluster = ClusterFactory()
    users = sorted(UserFactory.create_batch(40), key=lambda u: u.pk)
    days = days_in(MONTHS[1])[:20]
    records = [
        UsageRecord(user_id=u.pk, cluster_id=cluster.pk, date=day, cpu_hours=D("1.5"))
        for u in users
        for day in days
    ]
    return users, cluster, records


@pytest.mark.django_db
@pytest.mark.usefixtures("default_rate_card")
def test_new_rows_reach_the_copy_while_the_rest_of_the_batch_is_still_being_priced(
    monkeypatch,
):
    """The new rows are priced as the COPY takes them: PostgreSQL inserts the rows sent so
    far while the next ones are priced, instead of waiting for the whole batch (bench/
    README.md, "ninth pass"). Seen from a second connection: when the last record is
    priced, the COPY into usage_daily has taken rows already."""
    from billing import usage

    _, _, records = _forty_users_twenty_days()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (writer,) = cursor.fetchone()
    watcher = connection.get_new_connection(connection.get_connection_params())
    watcher.autocommit = True
    taken_when_last_priced, priced = [], iter(range(len(records), 0, -1))
    cost_of = usage.cost_of

    def watched_cost_of(*args):
        if next(priced) == 1:  # the batch's last record
            with watcher.cursor() as cursor:
                for _ in range(250):
                    cursor.execute(
                        "SELECT coalesce(max(tuples_processed), 0) FROM pg_stat_progress_copy "
                        "WHERE pid = %s AND relid = 'usage_daily'::regclass",
                        [writer],
                    )
                    (taken,) = cursor.fetchone()
                    if taken:
                        break
                    time.sleep(0.02)
            taken_when_last_priced.append(taken)
        return cost_of(*args)

    monkeypatch.setattr(usage, "cost_of", watched_cost_of)
    try:
        usage_upsert(records=records, actor="t")
    finally:
        watcher.close()
    assert len(taken_when_last_priced) == 1
    assert 0 < taken_when_last_priced[0] < len(records)
    assert UsageDaily.objects.count() == len(records)
    assert_exact()


@pytest.mark.django_db
@pytest.mark.usefixtures("default_rate_card")
def test_a_record_without_a_price_late_in_a_batch_of_new_rows_writes_nothing():
    """The COPY has taken hundreds of rows when a record late in the batch turns out to
    have no price: the COPY is abandoned, nothing is written, and the error names the
    record by its place in the caller's list."""
    users, cluster, records = _forty_users_twenty_days()
    # Before the rate card's first day: no price. Its user sorts last, so it is priced
    # (and sent) after every other user's rows.
    records.insert(
        3,
        UsageRecord(
            user_id=users[-1].pk, cluster_id=cluster.pk, date=dt.date(2019, 6, 1), cpu_hours=D(1)
        ),
    )
    with pytest.raises(UsageValidationError) as raised:
        usage_upsert(records=records, actor="t")
    assert list(raised.value.errors) == [3]
    assert "no cpu_hour price on 2019-06-01" in raised.value.errors[3][0]
    assert not UsageDaily.objects.exists()
    assert not UsageMonthly.objects.exists() and not UsageClusterDaily.objects.exists()


def _outside_writer_holding(sql, params):
    """A connection outside the upsert's turns (an operator's SQL) that has run `sql` and
    not committed yet, and its backend pid."""
    operator = connection.get_new_connection(connection.get_connection_params())
    operator.autocommit = False
    with operator.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
        cursor.execute(sql, params)
    return operator, pid


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_a_rerun_racing_an_outside_change_neither_waits_nor_overwrites_nor_debits_twice():
    """A rerun locks only the rows it changes: one that holds the figures already is left
    unlocked, so an outside writer changing it meanwhile neither blocks the rerun nor is
    undone by it (the rerun is ordered before that change); nothing is debited twice."""
    from billing.models import CreditLedgerEntry, UserCredits

    user, cluster = UserFactory(), ClusterFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    day = days_in(MONTHS[1])[0]
    records = [
        UsageRecord(user_id=user.pk, cluster_id=cluster.pk, date=d, cpu_hours=D(5))
        for d in (day, day + dt.timedelta(days=1))
    ]
    usage_upsert(records=records, actor="t")
    first = UsageDaily.objects.get(date=day)
    cost = first.total_cost

    operator, _ = _outside_writer_holding(
        "UPDATE usage_daily SET cpu_hours = 7 WHERE id = %s", [first.pk]
    )
    failures, done = [], threading.Event()

    def rerun():
        try:
            usage_upsert(records=records, actor="rerun")
        except Exception as error:
            failures.append(repr(error))
        finally:
            done.set()
            connection.close()

    thread = threading.Thread(target=rerun)
    try:
        thread.start()
        # The rerun finishes while the outside writer still holds its row.
        assert done.wait(timeout=30), "the rerun waited for the outside writer's row"
        operator.commit()
    finally:
        thread.join(timeout=60)
        operator.close()
    assert failures == []
    assert UsageDaily.objects.get(pk=first.pk).cpu_hours == 7  # the outside change is kept
    assert [e.amount for e in CreditLedgerEntry.objects.filter(user=user)] == [-cost, -cost]
    assert UserCredits.objects.get(user=user).total_used == 2 * cost
    assert_exact()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_a_recollection_racing_an_outside_change_settles_against_what_it_left():
    """A row the re-collection changes is locked and read again: an outside change made
    after the unlocked read is settled against, not overwritten blindly nor debited twice."""
    from billing.models import CreditLedgerEntry, UserCredits

    user, cluster = UserFactory(), ClusterFactory()
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    day = days_in(MONTHS[1])[0]

    def batch(cpu):
        return [UsageRecord(user_id=user.pk, cluster_id=cluster.pk, date=day, cpu_hours=D(cpu))]

    usage_upsert(records=batch(5), actor="t")
    row = UsageDaily.objects.get()
    # The outside writer also takes the row's debit back to the credits as if refunded by
    # hand: what the upsert settles against must be what the row holds when locked.
    operator, pid = _outside_writer_holding(
        "UPDATE usage_daily SET cpu_hours = 7, credits_debited = 0 WHERE id = %s", [row.pk]
    )
    failures = []

    def recollect():
        try:
            usage_upsert(records=batch(9), actor="recollect")
        except Exception as error:
            failures.append(repr(error))
        finally:
            connection.close()

    thread = threading.Thread(target=recollect)
    try:
        thread.start()
        for _ in range(300):  # the re-collection waits for the row it changes
            if lock_waits(besides=pid):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the re-collection never waited for the outside writer")
        operator.commit()
    finally:
        thread.join(timeout=60)
        operator.close()
    assert failures == []
    row = UsageDaily.objects.get()
    assert row.cpu_hours == 9
    # Settled against credits_debited = 0 (the outside writer's): the whole new cost.
    assert row.credits_debited == row.total_cost
    amounts = [e.amount for e in CreditLedgerEntry.objects.filter(user=user).order_by("id")]
    assert len(amounts) == 2 and amounts[1] == -row.total_cost
    assert UserCredits.objects.get(user=user).total_used == -sum(amounts)
    assert_exact()
