"""Benchmark: the console at scale. Builds a large data set into a scratch database with
set-based SQL (`generate_series`), then times every admin page, the dashboard, the user's
own page and every API list endpoint in-process (Django test client), and prints one table
plus JSON. It asserts nothing.

    .venv/bin/python bench/scale.py                          # 100,000 users x 90 days
    .venv/bin/python bench/scale.py --users 2000 --days 30   # a small one, for development
    .venv/bin/python bench/scale.py --users 2000 --days 30 --keep --build-only

See bench/README.md ("scale.py") for the data set, the options and what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scratch

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bench_scale"
GOAL_MS = 150.0
CLUSTERS = 5
PREPAID_EVERY = 5  # one user in 5 is prepaid (their usage also writes credit-ledger rows)
ADMIN_ID = "auth0|bench-admin"
FIRST_NAMES = (  # noqa: SIM905 - names, not a list to edit
    "Amara Bjorn Chen Dana Elif Farid Greta Hiro Ines Jonas Kofi Lena Mateo Nadia Oskar "
    "Priya Quentin Rosa Sven Tariq Ulla Vera Wen Ximena Yusuf Zofia Arjun Beatriz Cyrus "
    "Dagny Emeka Freya Goran Hana Ivo Jana Kenji Lucia Mikko Noor"
).split()
LAST_NAMES = (  # noqa: SIM905 - names, not a list to edit
    "Okafor Lindqvist Tanaka Moreau Kowalski Haddad Novak Silva Fischer Ivanova Mensah "
    "Rossi Nakamura Jensen Duarte Petrov Nilsson Costa Bauer Yilmaz Andersson Kim Laine "
    "Horvat Schmidt Garcia Dubois Berg Lopez Sato Eriksson Murphy Weber Santos Vogel "
    "Park Hansen Romero Keller Ahmed Larsen Varga Ito Moller Reyes Wolf Olsen Marin Kaya "
    "Sousa"
).split()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help=f"Scratch database to create, use and drop (name must start with 'bench'; default "
        f"{DEFAULT_URL}).",
    )
    parser.add_argument("--users", type=int, default=100_000, help="Users (default 100000).")
    parser.add_argument(
        "--days", type=int, default=90, help="Days of usage per user, ending yesterday (90)."
    )
    parser.add_argument(
        "--repeat", type=int, default=7, help="Timed requests per page (default 7)."
    )
    parser.add_argument(
        "--page-budget",
        type=float,
        default=15.0,
        help="Stop timing a page once its samples took this many seconds (at least 2 samples "
        "unless the first took twice as long; default 15).",
    )
    parser.add_argument(
        "--statement-timeout",
        type=int,
        default=30,
        help="statement_timeout (s) for the measured pages; a page that hits it is reported as "
        "'timeout' (default 30).",
    )
    parser.add_argument(
        "--filter-choices",
        type=int,
        default=3,
        help="Choices measured per Django field filter (the project's own filters: all; "
        "default 3).",
    )
    parser.add_argument(
        "--only", metavar="TEXT", help="Measure only pages whose name contains TEXT."
    )
    parser.add_argument("--build-only", action="store_true", help="Build, measure nothing.")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Measure the data set already in --database-url (built with --keep) instead of "
        "building a new one (implies --keep).",
    )
    parser.add_argument("--keep", action="store_true", help="Do not drop the database.")
    parser.add_argument("--json", metavar="PATH", help="Write the figures here, not stdout.")
    parser.add_argument(
        "--baseline",
        metavar="PATH",
        help="The JSON of a run on a smaller data set (--json): each page's time outside its "
        "SQL here is compared with the same page's there (does our Python work grow with the "
        "data?).",
    )
    args = parser.parse_args(argv)
    name = urlsplit(args.database_url).path.lstrip("/")
    if not name.startswith("bench"):
        parser.error(f"the database name must start with 'bench' (it is dropped): {name!r}")
    if args.users < CLUSTERS * PREPAID_EVERY or args.days < 1:
        parser.error(f"--users must be at least {CLUSTERS * PREPAID_EVERY}, --days at least 1")
    if args.reuse:
        args.keep = True
    return args


# The data set ----------------------------------------------------------------------------
#
# Everything below is set-based SQL run on one psycopg connection: a few statements per
# table, so the data set costs minutes, not hours. User i (1..N) is `auth0|scale0000001`,
# `user0000001@example.com`, named FIRST_NAMES[i % 40] LAST_NAMES[(i / 40) % 50], on
# cluster i % 5, prepaid when (i / 5) % 5 = 0 (20 %, spread over the clusters).


def uid_sql(expr: str) -> str:
    return f"'auth0|scale' || lpad(({expr})::text, 7, '0')"


def build(url: str, *, users: int, days: int, cluster_ids: list[str]) -> dict:
    today = dt.datetime.now(dt.UTC).date()
    first_day = today - dt.timedelta(days=days)
    months = max(1, round(days / 30))
    steps = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SELECT setseed(0.42)")

        step = _stepper(conn, steps)

        # Foreign keys are right by construction; skipping their triggers (replica mode)
        # saves one lookup per row. Secondary indexes are dropped and rebuilt around the big
        # loads (one sort per index instead of 9M insertions).
        conn.execute("SET session_replication_role = replica")
        first = [f"'{n}'" for n in FIRST_NAMES]
        last = [f"'{n}'" for n in LAST_NAMES]
        p = {"n": users, "days": days, "first": first_day, "today": today, "months": months}
        p["clusters"] = cluster_ids
        step(
            "users",
            (
                f"""
                INSERT INTO users (id, email, name, created_at, last_login_at, login_count,
                                   status, is_admin, hopsworks_username, stripe_customer_id,
                                   password, is_superuser)
                SELECT {uid_sql("i")}, 'user' || lpad(i::text, 7, '0') || '@example.com',
                       (ARRAY[{",".join(first)}])[i % {len(first)} + 1] || ' ' ||
                       (ARRAY[{",".join(last)}])[(i / {len(first)}) % {len(last)} + 1],
                       %(first)s::timestamptz - make_interval(days => i % 365),
                       CASE WHEN i % 3 = 0 THEN now() - make_interval(hours => i % 500) END,
                       i % 40,
                       CASE WHEN i % 97 = 0 THEN 'suspended' ELSE 'active' END,
                       false, 'user' || i,
                       CASE WHEN i % 10 <> 9 THEN 'cus_S' || lpad(i::text, 7, '0') END,
                       '!', false
                FROM generate_series(1, %(n)s) i
                """,
                p,
            ),
        )
        step(
            "assignments, Hopsworks accounts",
            (
                f"""
                INSERT INTO user_hopsworks_assignments (user_id, hopsworks_cluster_id,
                                                       hopsworks_username, assigned_at)
                SELECT {uid_sql("i")}, (%(clusters)s::uuid[])[i % 5 + 1], 'user' || i,
                       %(first)s::timestamptz - make_interval(days => i % 365)
                FROM generate_series(1, %(n)s) i
                """,
                p,
            ),
            (
                f"""
                INSERT INTO clusters_hopsworks_account (user_id, cluster_id, desired, synced,
                    hopsworks_user_id, hopsworks_username, attempts, last_error, updated_at)
                SELECT {uid_sql("i")}, (%(clusters)s::uuid[])[i % 5 + 1],
                       CASE WHEN i % 97 = 0 THEN 'deactivated' ELSE 'active' END,
                       CASE WHEN i % 211 = 0 THEN 'none'
                            WHEN i % 97 = 0 THEN 'deactivated' ELSE 'active' END,
                       CASE WHEN i % 211 <> 0 THEN i END, 'user' || i,
                       CASE WHEN i % 211 = 0 THEN 2 ELSE 0 END,
                       CASE WHEN i % 211 = 0 THEN 'Hopsworks answered 503' ELSE '' END, now()
                FROM generate_series(1, %(n)s) i
                """,
                p,
            ),
            (
                """
                UPDATE hopsworks_clusters c SET max_users = %(n)s,
                    current_users = (SELECT count(*) FROM user_hopsworks_assignments a
                                     WHERE a.hopsworks_cluster_id = c.id)
                """,
                p,
            ),
        )
        step(
            "billing profiles",
            (
                f"""
                INSERT INTO billing_account (user_id, mode, updated_at, stripe_subscription_id,
                    subscription_status, started_subscription_id, subscription_started_at,
                    subscription_event_created)
                SELECT {uid_sql("i")}, CASE WHEN prepaid THEN 'prepaid' ELSE 'postpaid' END,
                       now(),
                       CASE WHEN prepaid THEN '' ELSE 'sub_S' || lpad(i::text, 7, '0') END,
                       CASE WHEN prepaid THEN '' WHEN i % 53 = 0 THEN 'past_due'
                            ELSE 'active' END,
                       CASE WHEN prepaid THEN '' ELSE 'sub_S' || lpad(i::text, 7, '0') END,
                       CASE WHEN NOT prepaid THEN %(first)s::timestamptz END,
                       CASE WHEN NOT prepaid THEN %(first)s::timestamptz END
                FROM generate_series(1, %(n)s) i,
                     LATERAL (SELECT (i / 5) % 5 = 0 AS prepaid) x
                """,
                p,
            ),
        )
        # Usage: one row per user and day, on the user's cluster. CPU hours 0-48 around a
        # per-user level, GPU hours on 15 % of the users, storage in GB-months, API calls.
        usage_indexes = _drop_secondary_indexes(conn, "usage_daily")
        step(
            "usage_daily",
            (
                f"""
                INSERT INTO usage_daily (id, user_id, hopsworks_cluster_id, date, cpu_hours,
                    gpu_hours, storage_gb_months, api_calls, total_cost, credits_debited,
                    credit_revision, billed_via, created_at, updated_at)
                SELECT gen_random_uuid(), u.uid, u.cluster, d::date, f.cpu, f.gpu, f.storage,
                       f.api, f.cost, CASE WHEN u.prepaid THEN f.cost ELSE 0 END,
                       CASE WHEN u.prepaid THEN 1 ELSE 0 END,
                       CASE WHEN u.prepaid THEN 'credits' ELSE 'stripe' END,
                       d + interval '1 day 2 hours', d + interval '1 day 2 hours'
                FROM generate_series(%(first)s::date, %(today)s::date - 1, '1 day') d,
                     LATERAL (SELECT i, {uid_sql("i")} AS uid,
                                     (%(clusters)s::uuid[])[i % 5 + 1] AS cluster,
                                     (i / 5) % 5 = 0 AS prepaid
                              FROM generate_series(1, %(n)s) i) u,
                     LATERAL (SELECT round((random() * (u.i % 48 + 1))::numeric, 5) AS cpu,
                                     CASE WHEN u.i % 7 = 0 AND random() < 0.6
                                          THEN round((random() * 8)::numeric, 5)
                                          ELSE 0 END AS gpu,
                                     round((u.i % 500 + 1)::numeric / 30, 6) AS storage,
                                     (random() * 100000)::int AS api) r,
                     LATERAL (SELECT r.cpu, r.gpu, r.storage, r.api,
                                     round(r.cpu * 0.10 + r.gpu * 0.50 + r.storage * 0.15
                                           + r.api * 0.00001, 10) AS cost) f
                """,
                p,
            ),
        )
        step("usage_daily: indexes", *((sql, None) for sql in usage_indexes))
        # The load ran with triggers off (replica mode): the monthly rollup the triggers
        # keep is filled here in one GROUP BY, as the migration fills it.
        step("usage_monthly (rollup)", ("SELECT usage_monthly_rebuild()", None))
        # Prepaid users: 2-3 credit purchases each, and one usage entry per usage row, with
        # the running balance after each.
        step(
            "credit purchases",
            (
                f"""
                INSERT INTO billing_credit_purchase (user_id, stripe_checkout_session_id,
                    stripe_payment_intent_id, stripe_charge_id, amount, currency,
                    amount_refunded, amount_disputed, status, created_at, updated_at)
                SELECT {uid_sql("i")}, 'cs_S' || i || '_' || k, 'pi_S' || i || '_' || k,
                       'ch_S' || i || '_' || k, 100 * k + (i % 4) * 50, 'usd',
                       CASE WHEN i % 101 = 0 AND k = 1 THEN 20 ELSE 0 END, 0,
                       CASE WHEN i % 101 = 0 AND k = 1 THEN 'partially_refunded'
                            ELSE 'paid' END,
                       %(first)s::timestamptz + make_interval(days => (k - 1) * %(days)s / 3),
                       %(first)s::timestamptz + make_interval(days => (k - 1) * %(days)s / 3)
                FROM generate_series(1, %(n)s) i, generate_series(1, 2 + i % 2) k
                WHERE (i / 5) % 5 = 0
                """,
                p,
            ),
        )
        ledger_indexes = _drop_secondary_indexes(conn, "billing_credit_ledger")
        step(
            "credit ledger",
            (
                """
                INSERT INTO billing_credit_ledger (kind, amount, balance_after, reference,
                    actor, reason, cpu_hours, gpu_hours, storage_gb_months, created_at,
                    user_id, usage_id)
                SELECT kind, amount,
                       sum(amount) OVER (PARTITION BY user_id ORDER BY created_at, reference),
                       reference, actor, reason, cpu, gpu, storage, created_at, user_id, usage_id
                FROM (
                    SELECT 'purchase' AS kind, amount, 'purchase:' || stripe_checkout_session_id
                           AS reference, 'stripe' AS actor, '' AS reason, 0 AS cpu, 0 AS gpu,
                           0 AS storage, created_at, user_id, NULL::uuid AS usage_id
                    FROM billing_credit_purchase
                    UNION ALL
                    SELECT 'usage', -total_cost, 'usage:' || id || ':r1', 'collector', '',
                           cpu_hours, gpu_hours, storage_gb_months, created_at, user_id, id
                    FROM usage_daily WHERE billed_via = 'credits'
                ) movements
                """,
                None,
            ),
            (
                """
                INSERT INTO user_credits (user_id, total_purchased, total_used, cpu_hours_used,
                    gpu_hours_used, storage_gb_months, updated_at)
                SELECT user_id, sum(amount) FILTER (WHERE kind = 'purchase'),
                       -sum(amount) FILTER (WHERE kind = 'usage'), sum(cpu_hours),
                       sum(gpu_hours), sum(storage_gb_months), now()
                FROM billing_credit_ledger GROUP BY user_id
                """,
                None,
            ),
        )
        step("credit ledger: indexes", *((sql, None) for sql in ledger_indexes))
        # Invoices: one a month per postpaid user, and a receipt per credit purchase.
        step(
            "billing history",
            (
                f"""
                INSERT INTO billing_history (id, user_id, amount, currency, description,
                    stripe_invoice_id, status, stripe_status, created_at, updated_at,
                    hosted_invoice_url, period_start, period_end, stripe_event_created,
                    finalized_at)
                SELECT gen_random_uuid(), {uid_sql("i")}, round((10 + random() * 400)::numeric, 2),
                       'USD', 'Usage ' || to_char(ps, 'YYYY-MM'),
                       'in_S' || lpad(i::text, 7, '0') || '_' || m, st,
                       CASE st WHEN 'failed' THEN 'uncollectible' ELSE st END,
                       ps + interval '1 month 1 hour', ps + interval '1 month 2 hours',
                       'https://invoice.stripe.com/i/in_S' || i || '_' || m,
                       ps, ps + interval '1 month', ps + interval '1 month 2 hours',
                       ps + interval '1 month 1 hour'
                FROM generate_series(1, %(n)s) i, generate_series(1, %(months)s) m,
                     LATERAL (SELECT date_trunc('month', %(today)s::timestamptz)
                                     - make_interval(months => m) AS ps,
                                     CASE WHEN i % 53 = 0 AND m = 1 THEN 'failed'
                                          WHEN i % 89 = 0 AND m = 1 THEN 'pending'
                                          ELSE 'paid' END AS st) x
                WHERE (i / 5) % 5 <> 0
                """,
                p,
            ),
            (
                """
                INSERT INTO billing_history (id, user_id, amount, currency, description,
                    status, stripe_status, created_at, updated_at, hosted_invoice_url,
                    receipt_reference, amount_refunded)
                SELECT gen_random_uuid(), user_id, amount, 'USD', 'Credit purchase', 'paid',
                       '', created_at, created_at, '', 'purchase:' || stripe_checkout_session_id,
                       amount_refunded
                FROM billing_credit_purchase
                """,
                None,
            ),
        )
        # Stripe events: one per invoice and purchase, one per subscription, a few failed.
        step(
            "Stripe events",
            (
                """
                INSERT INTO billing_stripe_event (id, type, created, livemode, payload, status,
                    error, attempts, received_at, processed_at, last_attempt_at)
                SELECT 'evt_S' || lpad(row_number() OVER ()::text, 9, '0'), type, created,
                       false,
                       jsonb_build_object('id', 'evt', 'type', type, 'data',
                                          jsonb_build_object('object', obj)),
                       status, CASE WHEN status = 'failed' THEN 'boom' ELSE '' END,
                       CASE WHEN status = 'failed' THEN 3 ELSE 1 END, created,
                       CASE WHEN status <> 'failed' THEN created END, created
                FROM (
                    SELECT CASE h.status WHEN 'failed' THEN 'invoice.payment_failed'
                                ELSE 'invoice.paid' END AS type, h.created_at AS created,
                           jsonb_build_object('id', h.stripe_invoice_id, 'object', 'invoice',
                               'customer', u.stripe_customer_id, 'amount_due',
                               (h.amount * 100)::int) AS obj,
                           CASE WHEN h.status = 'pending' THEN 'failed'
                                ELSE 'processed' END AS status
                    FROM billing_history h JOIN users u ON u.id = h.user_id
                    WHERE h.stripe_invoice_id IS NOT NULL
                    UNION ALL
                    SELECT 'checkout.session.completed', p.created_at,
                           jsonb_build_object('id', p.stripe_checkout_session_id, 'object',
                               'checkout.session', 'customer', u.stripe_customer_id),
                           'processed'
                    FROM billing_credit_purchase p JOIN users u ON u.id = p.user_id
                    UNION ALL
                    SELECT t, b.subscription_started_at,
                           jsonb_build_object('id', b.stripe_subscription_id, 'object',
                               'subscription', 'customer', u.stripe_customer_id, 'status',
                               b.subscription_status),
                           CASE WHEN t = 'customer.updated' THEN 'ignored'
                                WHEN u.stripe_customer_id IS NULL THEN 'unmatched'
                                ELSE 'processed' END
                    FROM billing_account b JOIN users u ON u.id = b.user_id,
                         unnest(ARRAY['customer.subscription.created',
                                      'customer.updated']) t
                    WHERE b.mode = 'postpaid'
                      AND (t <> 'customer.updated' OR right(b.user_id, 1) = '0')
                ) e
                """,
                None,
            ),
        )
        fill_other_tables(conn, step, p)
        conn.execute("SET session_replication_role = origin")
        step("VACUUM ANALYZE", ("VACUUM ANALYZE", None))
    return steps


def _stepper(conn, steps: dict):
    def step(name, *statements):
        started = time.perf_counter()
        for sql, params in statements:
            # `%` is the modulo operator in these statements, `%(name)s` a parameter.
            conn.execute(sql.replace(" % ", " %% ") if params else sql, params)
        steps[name] = round(time.perf_counter() - started, 2)
        print(f"  {name:<34} {steps[name]:8.2f} s", flush=True)

    return step


def fill_other_tables_on_reuse(url: str) -> dict:
    """A data set built before `OTHER_TABLES` existed gets them now, at its own size."""
    steps = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        users = conn.execute("SELECT count(*) FROM users WHERE id LIKE 'auth0|scale%'").fetchone()[
            0
        ]
        first, last = conn.execute("SELECT min(date), max(date) FROM usage_daily").fetchone()
        clusters = [
            str(c) for (c,) in conn.execute("SELECT id FROM hopsworks_clusters ORDER BY name")
        ]
        p = {"n": users, "days": (last - first).days + 1, "first": first}
        p.update(today=last + dt.timedelta(days=1), clusters=clusters)
        conn.execute("SET session_replication_role = replica")
        fill_other_tables(conn, _stepper(conn, steps), p)
        conn.execute("SET session_replication_role = origin")
        if steps:
            conn.execute("ANALYZE")
    return steps


# Every table the console lists, beside the big ones above: at the size 100,000 users and
# `days` of running would leave, so that each list, filter and change page exists to be
# measured (issue 16: "every change page"). Row counts scale with `n` (users) and the months.
OTHER_TABLES = (
    (
        "auth_group",
        """
        INSERT INTO auth_group (name)
        SELECT unnest(ARRAY['Support', 'Finance', 'Operators']) ON CONFLICT DO NOTHING
        """,
    ),
    (
        "accounts_api_key",
        """
        INSERT INTO accounts_api_key (id, prefix, hashed_key, created, name, revoked,
            expiry_date, scopes, created_by, last_used_at)
        SELECT 'bench' || k || '.key', 'bench' || k, 'hash' || k,
               %(first)s::timestamptz + make_interval(days => k), 'script ' || k, k % 5 = 0,
               NULL, '["usage:write"]'::jsonb, 'bench-admin@example.com',
               now() - make_interval(hours => k)
        FROM generate_series(1, 20) k
        """,
    ),
    (
        "axes_accessattempt",
        """
        INSERT INTO axes_accessattempt (user_agent, ip_address, username, http_accept,
            path_info, attempt_time, get_data, post_data, failures_since_start)
        SELECT 'Mozilla/5.0 bench', ('10.0.' || (k / 250) || '.' || (k % 250))::inet,
               'user' || lpad((k * 37 % %(n)s + 1)::text, 7, '0') || '@example.com',
               'text/html', '/admin/login/', now() - make_interval(mins => k), '', '',
               1 + k % 5
        FROM generate_series(1, greatest(%(n)s / 50, 10)) k
        """,
    ),
    (
        "clusters_capacity_wait",
        f"""
        INSERT INTO clusters_capacity_wait (user_id, reason, detail, since, attempts,
            last_attempt_at)
        SELECT {uid_sql("i")}, CASE WHEN i % 1000 = 0 THEN 'billing' ELSE 'no_capacity' END,
               '', now() - make_interval(hours => i % 72), 1 + i % 7,
               now() - make_interval(mins => i % 60)
        FROM generate_series(500, %(n)s, 500) i
        """,
    ),
    (
        "billing_account_closure",
        f"""
        INSERT INTO billing_account_closure (user_id, closed_at, actor, reason, mode,
            usage_collected_at, usage_reported_at, subscription_id, subscription_canceled_at,
            final_invoice_id, prepaid_balance, slot_released_at, account_deactivated_at,
            finished_at, attempts, last_error, created_at)
        SELECT {uid_sql("i")}, t, 'auth0 log stream', 'user deleted in Auth0',
               CASE WHEN prepaid THEN 'prepaid' ELSE 'postpaid' END, t + interval '1 day',
               CASE WHEN NOT prepaid THEN t + interval '1 day 1 hour' END,
               CASE WHEN NOT prepaid THEN 'sub_S' || lpad(i::text, 7, '0') ELSE '' END,
               CASE WHEN NOT prepaid THEN t + interval '1 day 2 hours' END,
               CASE WHEN NOT prepaid THEN 'in_Sclose' || i ELSE '' END,
               CASE WHEN prepaid THEN 12.5 END, t + interval '1 day 3 hours',
               t + interval '1 day 3 hours',
               CASE WHEN i % 7 <> 0 THEN t + interval '1 day 4 hours' END,
               1 + (i % 7 = 0)::int, CASE WHEN i % 7 = 0 THEN 'Stripe answered 503' ELSE '' END,
               t
        FROM generate_series(7, %(n)s, 100) i,
             LATERAL (SELECT (i / 5) % 5 = 0 AS prepaid,
                             %(first)s::timestamptz + make_interval(days => i % %(days)s) AS t) x
        """,
    ),
    (
        "billing_subscription_end",
        f"""
        INSERT INTO billing_subscription_end (subscription_id, user_id, ended_by, status,
            period_start, ended_at, final_invoice_id, invoiced_cents, attempts, last_error,
            created_at, settled_at)
        SELECT 'sub_Send' || i, {uid_sql("i")}, CASE WHEN i % 2 = 0 THEN 'us' ELSE 'stripe' END,
               (ARRAY['pending', 'invoiced', 'covered', 'nothing_owed'])[i % 4 + 1],
               date_trunc('month', t), t, CASE WHEN i % 4 = 1 THEN 'in_Send' || i ELSE '' END,
               CASE WHEN i % 4 = 1 THEN 1000 + i % 5000 ELSE 0 END, i % 3, '', t,
               CASE WHEN i % 4 <> 0 THEN t + interval '2 hours' END
        FROM generate_series(3, %(n)s, 97) i,
             LATERAL (SELECT %(first)s::timestamptz + make_interval(days => i % %(days)s) AS t) x
        WHERE (i / 5) % 5 <> 0
        """,
    ),
    (
        "billing_auth0_log_event",
        f"""
        INSERT INTO billing_auth0_log_event (log_id, type, user_id, outcome, detail,
            received_at)
        SELECT 'log_S' || lpad(i::text, 7, '0') || '_' || k, CASE k WHEN 3 THEN 'sdu' ELSE 's' END,
               {uid_sql("i")}, CASE k WHEN 3 THEN 'closed' ELSE 'ignored' END, '',
               %(first)s::timestamptz + make_interval(days => (i + k * 13) % %(days)s)
        FROM generate_series(1, %(n)s) i, generate_series(1, 3) k
        WHERE k < 3 OR i % 100 = 7
        """,
    ),
    (
        "billing_adjustment",
        f"""
        INSERT INTO billing_adjustment (user_id, direction, amount, currency, channel, reason,
            actor, reference, stripe_customer_id, stripe_invoice_id, stripe_object_id, status,
            attempts, error, created_at, sent_at)
        SELECT {uid_sql("i")}, CASE WHEN i % 3 = 0 THEN 'debit' ELSE 'credit' END,
               5 + i % 95, 'usd',
               CASE WHEN prepaid THEN 'ledger' ELSE 'stripe_customer_balance' END,
               'goodwill for an outage', 'bench-admin@example.com', 'adjustment:bench:' || i,
               CASE WHEN NOT prepaid THEN 'cus_S' || lpad(i::text, 7, '0') ELSE '' END, '',
               CASE WHEN NOT prepaid THEN 'cbtxn_S' || i ELSE '' END,
               CASE WHEN i % 61 = 0 THEN 'failed' ELSE 'sent' END, 1,
               CASE WHEN i % 61 = 0 THEN 'Stripe answered 402' ELSE '' END, t,
               CASE WHEN i % 61 <> 0 THEN t + interval '1 minute' END
        FROM generate_series(11, %(n)s, 20) i,
             LATERAL (SELECT (i / 5) % 5 = 0 AS prepaid,
                             %(first)s::timestamptz + make_interval(days => i % %(days)s) AS t) x
        """,
    ),
    (
        "billing_reconciliation_run",
        """
        INSERT INTO billing_reconciliation_run (started_at, finished_at, months, users, actor,
            lines, differences, unexplained, errors)
        SELECT d, d + interval '3 minutes', to_char(d - interval '1 month', 'YYYY-MM'), '',
               'scheduler',
               jsonb_build_array(jsonb_build_object(
                   'user_id', 'auth0|scale0000001', 'email', 'user0000001@example.com',
                   'month', to_char(d - interval '1 month', 'YYYY-MM'), 'mode', 'postpaid',
                   'figures', jsonb_build_array(jsonb_build_object(
                       'resource', 'cpu_hour', 'ours', 1234, 'reported', 1234,
                       'pending', NULL, 'adjusted', 0, 'adjusting', 0, 'stripe', 1230,
                       'invoiced', 1230, 'reported_recently', false, 'last_error', '')),
                   'credits', NULL,
                   'differences', jsonb_build_array(jsonb_build_object(
                       'what', 'ours/reported', 'resource', 'cpu_hour', 'cents', 4,
                       'cause', 'rounded per event', 'explained', true, 'repair', '')))),
               1, 0, '[]'::jsonb
        FROM generate_series(%(first)s::timestamptz, %(today)s::timestamptz, '1 day') d
        """,
    ),
    (
        "billing_spending_alert",
        f"""
        INSERT INTO billing_spending_alert (user_id, kind, period, amount, limit_amount,
            created_at, sent_at, attempts, error)
        SELECT {uid_sql("i")}, kind, to_char(m, 'YYYY-MM'), 40 + i % 60, 100,
               m + interval '20 days', m + interval '20 days 1 minute', 1, ''
        FROM generate_series(1, %(n)s, 10) i,
             generate_series(date_trunc('month', %(first)s::timestamptz),
                             %(today)s::timestamptz, '1 month') m,
             unnest(ARRAY['cap_80', 'cap_90']) kind
        """,
    ),
    (
        "billing_spending_limit_change",
        f"""
        INSERT INTO billing_spending_limit_change (user_id, field, old, new, actor, by_user,
            created_at)
        SELECT {uid_sql("i")},
               CASE WHEN (i / 5) % 5 = 0 THEN 'low_balance_threshold'
                    ELSE 'monthly_spending_cap' END,
               CASE WHEN i % 2 = 0 THEN 50 END, 100 + i % 400,
               'user' || lpad(i::text, 7, '0') || '@example.com', true,
               %(first)s::timestamptz + make_interval(days => i % %(days)s)
        FROM generate_series(1, %(n)s, 5) i
        """,
    ),
    (
        "billing_service_stop",
        f"""
        INSERT INTO billing_service_stop (user_id, reason, detail, detected_at, enforce_at,
            stopped_at, resolved_at, resolution, resolution_note, resolved_by, lifted_until)
        SELECT {uid_sql("i")}, 'payment_failed', 'invoice in_S' || i || ' unpaid', t,
               t + interval '3 days', CASE WHEN i % 2 = 0 THEN t + interval '3 days' END,
               CASE WHEN i % 3 = 0 THEN t + interval '5 days' END,
               CASE WHEN i % 3 = 0 THEN 'eligible' ELSE '' END, '',
               CASE WHEN i % 3 = 0 THEN 'stripe' ELSE '' END, NULL
        FROM generate_series(53, %(n)s, 53) i,
             LATERAL (SELECT %(first)s::timestamptz + make_interval(days => i % %(days)s) AS t) x
        WHERE (i / 5) % 5 <> 0
        """,
    ),
    (
        "billing_stripe_catalog",
        """
        INSERT INTO billing_stripe_catalog (resource, event_name, meter_id, product_id,
            price_id, updated_at)
        SELECT r, 'hopsworks_' || r, 'mtr_bench_' || r, 'prod_bench_' || r,
               'price_bench_' || r, now()
        FROM unnest(ARRAY['cpu_hour', 'gpu_hour', 'storage_gb_month', 'api_calls_1k']) r
        ON CONFLICT DO NOTHING
        """,
    ),
    (
        "billing_stripe_usage_report",
        f"""
        INSERT INTO billing_stripe_usage_report (user_id, month, resource, reported_cents,
            events_sent, pending_identifier, pending_cents, pending_since, pending_timestamp,
            last_error, last_reported_at, adjusted_cents)
        SELECT {uid_sql("i")}, m::date, r, (i * 7 + length(r)) % 20000, 1 + i % 30, '',
               NULL, NULL, NULL, '', m + interval '27 days', 0
        FROM generate_series(1, %(n)s) i,
             generate_series(date_trunc('month', %(first)s::timestamptz),
                             %(today)s::timestamptz, '1 month') m,
             unnest(ARRAY['cpu_hour', 'gpu_hour', 'storage_gb_month', 'api_calls_1k']) r
        WHERE (i / 5) % 5 <> 0
        """,
    ),
    (
        "billing_stripe_usage_adjustment",
        f"""
        INSERT INTO billing_stripe_usage_adjustment (user_id, month, cents, resources,
            description, identifier, stripe_invoice_item_id, status, attempts, error,
            created_at, sent_at)
        SELECT {uid_sql("i")}, date_trunc('month', t)::date, -(100 + i % 900),
               '["cpu_hour"]'::jsonb, 'usage corrected after the invoice',
               'adjust:bench:' || i, 'ii_S' || i, 'sent', 1, '', t, t + interval '1 minute'
        FROM generate_series(6, %(n)s, 47) i,
             LATERAL (SELECT %(first)s::timestamptz + make_interval(days => i % %(days)s) AS t) x
        WHERE (i / 5) % 5 <> 0
        """,
    ),
    (
        "billing_usage_collection_run",
        """
        INSERT INTO billing_usage_collection_run (cluster_id, date, status, rows_written,
            unknown_namespaces, notes, error, attempts, started_at, finished_at,
            coverage_minutes, fetched_at, attribution)
        SELECT c, d::date, 'succeeded', %(n)s / 5, '[]'::jsonb, '[]'::jsonb, '', 1,
               d + interval '1 day 1 hour', d + interval '1 day 1 hour 20 seconds', 1440,
               d + interval '1 day 1 hour', '{}'::jsonb
        FROM unnest(%(clusters)s::uuid[]) c,
             generate_series(%(first)s::date, %(today)s::date - 1, '1 day') d
        """,
    ),
    # A week of jobs (succeeded ones are kept a week, `plumbing.jobs.delete_old_jobs`): the
    # periodic ones (about 1,900 a day) and per-user ones (standing checks, mail, Hopsworks
    # accounts), a few failed and waiting; three events each.
    (
        "procrastinate_jobs",
        """
        INSERT INTO procrastinate_jobs (queue_name, task_name, lock, args, status,
            scheduled_at, attempts, queueing_lock, priority, abort_requested, worker_id)
        SELECT q, t, NULL, jsonb_build_object('timestamp', 1764000000 + k),
               s::procrastinate_job_status, NULL, CASE WHEN s = 'failed' THEN 3 ELSE 1 END,
               NULL, 0, false, NULL
        FROM generate_series(1, greatest(%(n)s * 3 / 2, 1000)) k,
             LATERAL (SELECT (ARRAY['maintenance', 'maintenance', 'stripe', 'stripe',
                                    'hopsworks', 'mail', 'collection', 'stripe'])[k % 8 + 1] AS q,
                             (ARRAY['plumbing.retry_stalled_jobs', 'billing.evaluate_standing',
                                    'billing.process_stripe_event', 'billing.report_user_usage',
                                    'clusters.sync_user_accounts', 'billing.send_spending_alerts',
                                    'billing.collect_cluster_day', 'billing.sync_invoices'])
                                 [k % 8 + 1] AS t,
                             CASE WHEN k % 997 = 0 THEN 'failed' WHEN k % 1499 = 0 THEN 'todo'
                                  ELSE 'succeeded' END AS s) x
        """,
    ),
    (
        "procrastinate_events",
        """
        INSERT INTO procrastinate_events (job_id, type, at)
        SELECT j.id, e.type::procrastinate_job_event_type,
               now() - make_interval(secs => (max_id.v - j.id) * 4) + e.offset_s
        FROM procrastinate_jobs j, (SELECT max(id) AS v FROM procrastinate_jobs) max_id,
             LATERAL (VALUES ('deferred', interval '0'), ('started', interval '1 second'),
                             (CASE j.status WHEN 'failed' THEN 'failed' ELSE 'succeeded' END,
                              interval '2 seconds')) e(type, offset_s)
        WHERE j.status <> 'todo' OR e.type = 'deferred'
        """,
    ),
)


def fill_other_tables(conn, step, p) -> None:
    """Fill the console's other tables (`OTHER_TABLES`), each in one statement. A table that
    has rows already is left as it is (a data set built before these were added gets them
    on `--reuse`)."""
    for table, sql in OTHER_TABLES:
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
            continue
        step(table, (sql, p))


def _drop_secondary_indexes(conn, table: str) -> list[str]:
    """Drop the table's indexes that back no constraint; return the statements that make
    them again."""
    rows = conn.execute(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.tablename = %s AND NOT EXISTS (
            SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
        """,
        (table,),
    ).fetchall()
    for name, _ in rows:
        conn.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in rows]


def create_clusters_and_admin() -> list[str]:
    from accounts.models import User
    from clusters.models import HopsworksCluster

    User.objects.create_superuser(email="bench-admin@example.com", id=ADMIN_ID, name="Bench")
    clusters = [
        HopsworksCluster.objects.create(
            name=f"bench-{region}-1",
            api_url=f"https://bench-{region}-1.example.com",
            api_key=f"bench-{region}-api-key",
            max_users=1,
        )
        for region in ("eu", "us", "ap", "sa", "af")[:CLUSTERS]
    ]
    return [str(c.pk) for c in clusters]


def table_counts() -> dict:
    from django.db import connection

    tables = (
        "users",
        "user_hopsworks_assignments",
        "clusters_hopsworks_account",
        "billing_account",
        "usage_daily",
        "usage_monthly",
        "usage_cluster_daily",
        "billing_credit_ledger",
        "billing_credit_purchase",
        "billing_history",
        "billing_stripe_event",
        *(table for table, _ in OTHER_TABLES),
    )
    counts = {}
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute("SELECT to_regclass(%s)", [table])
            if cursor.fetchone()[0] is None:  # a database built before the table existed
                continue
            cursor.execute(f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}")
            rows, size = cursor.fetchone()
            counts[table] = {"rows": rows, "mb": round(size / 2**20, 1)}
    return counts


# Measuring -------------------------------------------------------------------------------


class Recorder:
    """Every statement of a request, with its parameters and time (an execute wrapper), so
    the slowest one can be EXPLAINed as it ran."""

    def __init__(self):
        self.statements = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.statements.append((time.perf_counter() - started, sql, params, many))


def percentile(values, share):
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 1))  # nearest rank
    return ordered[int(rank) - 1]


def rows_shown(response) -> int | None:
    """The rows a page shows: an admin list's result rows, an API list's items; None for a
    page that is not a list."""
    content = getattr(response, "content", b"")
    kind = response.get("Content-Type", "") if hasattr(response, "get") else ""
    if kind.startswith("application/json"):
        try:
            data = json.loads(content)
        except ValueError:
            return None
        if isinstance(data, dict):
            data = data.get("results")
        return len(data) if isinstance(data, list) else None
    start = content.find(b'id="result_list"')
    if start < 0:
        return None
    body = content[start : content.find(b"</table>", start)]
    return max(body.count(b"<tr") - 1, 0)  # less the header row


def measure(name, call, *, args, group):
    """Time `call()` (a warm-up, then up to --repeat samples within --page-budget)."""
    from django.db import OperationalError, connection
    from django.db.utils import DatabaseError
    from django.test.utils import CaptureQueriesContext

    samples, counts, status, error, rows = [], [], None, None, None
    slowest, sql_ms, outside = None, [], []
    for attempt in range(args.repeat + 1):
        recorder = Recorder()
        # CaptureQueriesContext slices the connection's query log, a deque of at most 9,000
        # entries that only a request_started signal (which it mutes) would empty.
        connection.queries_log.clear()
        try:
            with (
                CaptureQueriesContext(connection) as captured,
                connection.execute_wrapper(recorder),
            ):
                started = time.perf_counter()
                response = call()
                elapsed = time.perf_counter() - started
        except (OperationalError, DatabaseError) as exc:
            error = "timeout" if "statement timeout" in str(exc) else type(exc).__name__
            # The statement that failed is the recorder's last (and slowest) one.
            slowest = max(recorder.statements, key=lambda s: s[0], default=slowest)
            connection.close()
            break
        status = getattr(response, "status_code", None)
        if attempt == 0:
            rows = rows_shown(response)
        if attempt == 0 and elapsed < 1 and args.repeat > 1:
            continue  # warm-up (caches, the first connection); kept when it was slow
        samples.append(elapsed * 1000)
        counts.append(len(captured.captured_queries))
        sql_ms.append(sum(s[0] for s in recorder.statements) * 1000)
        outside.append(samples[-1] - sql_ms[-1])
        top = max(recorder.statements, key=lambda s: s[0], default=None)
        if top and (slowest is None or top[0] > slowest[0]):
            slowest = top
        spent = sum(samples) / 1000
        if spent > args.page_budget and (len(samples) >= 2 or spent > 2 * args.page_budget):
            break
    result = {"group": group, "page": name, "status": status, "error": error, "n": len(samples)}
    if samples:
        result.update(
            median_ms=round(statistics.median(samples), 1),
            p95_ms=round(percentile(samples, 0.95), 1),
            sql_ms=round(statistics.median(sql_ms), 1),
            # The page's own Python work: each sample's time less its statements' time.
            outside_sql_ms=round(statistics.median(outside), 1),
            queries=max(counts),
            queries_min=min(counts),
            rows=rows,
        )
    if slowest:
        result["slowest_ms"] = round(slowest[0] * 1000, 1)
        result["slowest_sql"] = slowest[1]
        if error or result.get("p95_ms", 0) > GOAL_MS:
            # A statement that hit the timeout would hit it again under ANALYZE.
            result["plan"] = explain(*slowest[1:], analyze=not error)
    marker = "" if not samples else ("  MISS" if result["p95_ms"] > GOAL_MS else "")
    print(
        f"  {name[:70]:<70} {result.get('median_ms', '-'):>9} {result.get('p95_ms', '-'):>9} "
        f"{result.get('queries', '-'):>4} {error or status}{marker}",
        flush=True,
    )
    return result


def explain(sql, params, many, *, analyze=True):
    from django.db import connection

    if many or not sql.lstrip().upper().startswith(("SELECT", "WITH")):
        return None
    try:
        with connection.cursor() as cursor:
            prefix = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
            cursor.execute(prefix + sql, params)
            return "\n".join(row[0] for row in cursor.fetchall())
    except Exception as exc:
        connection.close()
        return f"(no plan: {exc})"


def sample_objects(users: int):
    """The user whose pages and searches are measured (a prepaid one, so it has ledger rows
    and purchases) and some ids to search for."""
    from accounts.models import User
    from billing.models import BillingHistory, StripeEvent

    i = (users // 2) // 25 * 25 or 25  # (i / 5) % 5 == 0: prepaid
    user = User.objects.get(pk=f"auth0|scale{i:07d}")
    postpaid = User.objects.get(pk=f"auth0|scale{i + 5:07d}")
    invoice = BillingHistory.objects.filter(user=postpaid, stripe_invoice_id__isnull=False)
    return {
        "user": user,
        "postpaid": postpaid,
        "email": user.email,
        "auth0": user.pk,
        "customer": user.stripe_customer_id,
        "invoice": invoice.values_list("stripe_invoice_id", flat=True).first(),
        "event": StripeEvent.objects.order_by("pk").values_list("pk", flat=True)[
            StripeEvent.objects.count() // 2
        ],
        "partial_name": user.name.split()[-1][1:5].lower(),
    }


def stripe_id_for(model, sample) -> str:
    name = model._meta.model_name
    if name == "stripeevent":
        return sample["event"]
    if name == "billinghistory":
        return sample["invoice"]
    return sample["customer"]


def admin_pages(client, sample, args):
    """(group, name, callable) for every admin list (unfiltered, sorted, each filter's first
    choices, the four searches) and every change page."""
    from django.contrib import admin
    from django.contrib.admin.utils import quote
    from django.test import RequestFactory
    from django.urls import NoReverseMatch, reverse

    admin_user = sample["admin"]
    pages = []
    for model, model_admin in sorted(
        admin.site._registry.items(), key=lambda item: item[0]._meta.label
    ):
        opts = model._meta
        label = f"{opts.app_label}.{opts.model_name}"
        try:
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        except NoReverseMatch:
            continue

        def get(query, url=url):
            return lambda: client.get(url + ("?" + urlencode(query) if query else ""))

        pages.append(("admin list", f"{label}", get({})))
        if len(model_admin.get_list_display(None) or ()) > 1:
            pages.append(("admin list", f"{label} sorted by column 2", get({"o": "2"})))
        # Each filter's choices, as the changelist offers them (its sidebar's links, less
        # "All"), so no filter is left out when one is added.
        request = RequestFactory().get(url)
        request.user = admin_user
        try:
            changelist = model_admin.get_changelist_instance(request)
            specs = changelist.filter_specs
        except Exception as exc:
            pages.append(("admin list", f"{label} (filters: {type(exc).__name__})", None))
            specs = []
        for spec in specs:
            # A project's own filter: every choice (each is a query someone wrote); Django's
            # field filters: the first three (for dates: today, past 7 days, this month).
            limit = 99 if isinstance(spec, admin.SimpleListFilter) else args.filter_choices
            taken = 0
            for choice in spec.choices(changelist):
                query = choice.get("query_string", "?")
                if choice.get("selected") or query in ("?", "") or taken == limit:
                    continue
                taken += 1
                text = str(choice.get("display", "")).strip()[:30] or query
                pages.append(
                    (
                        "admin filter",
                        f"{label} filter {getattr(spec, 'title', '')}={text}",
                        lambda u=url + query: client.get(u),
                    )
                )
        if model_admin.get_search_fields(request):
            for kind, term in (
                ("email", sample["email"]),
                ("Auth0 id", sample["auth0"]),
                ("Stripe id", stripe_id_for(model, sample)),
                ("partial name", sample["partial_name"]),
            ):
                pages.append(("admin search", f"{label} search {kind}", get({"q": term})))
        obj = _object_for(model, sample)
        if obj is not None:
            change = reverse(
                f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)]
            )
            pages.append(("admin change", f"{label} change", lambda u=change: client.get(u)))
    return pages


def _object_for(model, sample):
    """The sample user's object of this model, else any."""
    fields = {f.name for f in model._meta.get_fields()}
    rows = model._default_manager.all()
    if model._meta.model_name == "user":
        return sample["user"]
    if "user" in fields:
        mine = rows.filter(user=sample["user"]).first()
        if mine is not None:
            return mine
    if "hopsworks_cluster" in fields or model._meta.model_name == "hopsworkscluster":
        pass
    return rows.order_by("pk").first()


def api_pages(client, sample, users, days):
    today = dt.datetime.now(dt.UTC).date()
    user = sample["user"]
    usage = "/api/v1/usage"
    last_page = min(1000, users * days // 50)

    def get(path, **query):
        return lambda: client.get(path + ("?" + urlencode(query) if query else ""))

    return [
        ("api", "GET /api/v1/users", get("/api/v1/users")),
        ("api", "GET /api/v1/users?email=", get("/api/v1/users", email=user.email)),
        ("api", "GET /api/v1/users/<id>", get(f"/api/v1/users/{user.pk}")),
        ("api", "GET /api/v1/clusters", get("/api/v1/clusters")),
        ("api", "GET /api/v1/usage", get(usage)),
        ("api", "GET /api/v1/usage?user=<id>", get(usage, user=user.pk)),
        ("api", "GET /api/v1/usage?user=<email>", get(usage, user=user.email)),
        (
            "api",
            "GET /api/v1/usage?user=<id>&from&to (30 days)",
            get(usage, user=user.pk, **{"from": today - dt.timedelta(days=30), "to": today}),
        ),
        ("api", "GET /api/v1/usage?cluster=<name>", get(usage, cluster="bench-eu-1")),
        (
            "api",
            "GET /api/v1/usage?from&to (yesterday)",
            get(usage, **{"from": today - dt.timedelta(days=1), "to": today}),
        ),
        ("api", f"GET /api/v1/usage?page={last_page}", get(usage, page=last_page)),
    ]


def own_pages(client):
    return [
        ("own", "GET / (the user's own page)", lambda: client.get("/")),
        ("own", "GET /api/v1/me", lambda: client.get("/api/v1/me")),
        ("own", "GET /api/v1/me/usage", lambda: client.get("/api/v1/me/usage")),
        ("own", "GET /api/v1/me/billing", lambda: client.get("/api/v1/me/billing")),
    ]


def floor_pages(operator, person):
    """The fixed floor: views that do nothing, through the same middleware (session,
    authentication, axes, CSP, messages, WhiteNoise...), added to the URL patterns of this
    process only. A bare Django view; an admin view that builds the admin's context (the
    app list) and one that also renders the admin's base template (header, nav sidebar);
    a DRF view with the API's authentication, permission, throttle and renderer classes.
    A page cannot answer faster than its floor, whatever its SQL."""
    from django.contrib import admin
    from django.http import HttpResponse
    from django.template.response import TemplateResponse
    from django.urls import clear_url_caches, get_resolver, path
    from rest_framework.response import Response
    from rest_framework.views import APIView

    def nothing(request):
        return HttpResponse("")

    def admin_context(request):
        admin.site.each_context(request)
        return HttpResponse("")

    def admin_base(request):
        return TemplateResponse(request, "admin/base_site.html", admin.site.each_context(request))

    class ApiNothing(APIView):
        def get(self, request):
            return Response({})

    get_resolver().url_patterns[:0] = [
        path("bench-floor/nothing", nothing),
        path("bench-floor/admin-context", admin.site.admin_view(admin_context)),
        path("bench-floor/admin-base", admin.site.admin_view(admin_base)),
        path("bench-floor/api", ApiNothing.as_view()),
    ]
    clear_url_caches()
    return [
        ("floor", "floor: a view that does nothing (operator)", "/bench-floor/nothing", operator),
        ("floor", "floor: a view that does nothing (user)", "/bench-floor/nothing", person),
        ("floor", "floor: admin context (app list)", "/bench-floor/admin-context", operator),
        ("floor", "floor: admin base template", "/bench-floor/admin-base", operator),
        ("floor", "floor: DRF view that does nothing", "/bench-floor/api", operator),
    ]


def month_to_date(repeat: int) -> dict:
    """billing.selectors.month_to_date_by_user() for all users against the bare GROUP BY."""
    from django.db import connection

    from billing.selectors import month_start, month_to_date_by_user

    start = month_start()
    bare = (
        "SELECT user_id, sum(total_cost) FROM usage_daily WHERE date >= %s "
        "GROUP BY user_id ORDER BY user_id"
    )
    figures = {}
    for name, run in (
        ("month_to_date_by_user()", lambda: len(list(month_to_date_by_user()))),
        ("bare GROUP BY", lambda: _fetch(bare, [start])),
    ):
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            rows = run()
            times.append((time.perf_counter() - started) * 1000)
        figures[name] = {"rows": rows, "median_ms": round(statistics.median(times), 1)}
        figures[name]["min_ms"] = round(min(times), 1)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + bare, [start])
        figures["bare GROUP BY"]["plan"] = "\n".join(r[0] for r in cursor.fetchall())
    figures["ratio"] = round(
        figures["month_to_date_by_user()"]["median_ms"] / figures["bare GROUP BY"]["median_ms"],
        2,
    )
    return figures


def _fetch(sql, params):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return len(cursor.fetchall())


def post_usage(client, users: int) -> list[dict]:
    """POST /api/v1/usage with 5,000 records: a new day (today) for the first 5,000 users,
    then the same batch again (nothing changes)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    today = dt.datetime.now(dt.UTC).date().isoformat()
    records = [
        {
            "user": f"auth0|scale{i:07d}",
            "cluster": f"bench-{('eu', 'us', 'ap', 'sa', 'af')[i % 5]}-1",
            "date": today,
            "cpu_hours": str(Decimal(i % 48) + Decimal("0.25")),
            "gpu_hours": "0",
            "storage_gb_months": "0.1",
            "api_calls": i,
        }
        for i in range(1, min(users, 5000) + 1)
    ]
    body = json.dumps({"records": records})
    results = []
    for name in ("new day", "same batch again"):
        connection.queries_log.clear()
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.post("/api/v1/usage", body, content_type="application/json")
            elapsed = (time.perf_counter() - started) * 1000
        results.append(
            {
                "page": f"POST /api/v1/usage, {len(records):,} records, {name}",
                "status": response.status_code,
                "ms": round(elapsed, 1),
                "queries": len(captured.captured_queries),
            }
        )
        print(f"  {results[-1]['page']:<70} {elapsed:9.1f} {len(captured):>14}", flush=True)
    return results


def benchmark(args) -> dict:
    from django.db import connection
    from django.test import Client

    # The API's per-key throttle would refuse the repeated requests of one session.
    from plumbing.api import PerKeyThrottle

    PerKeyThrottle.allow_request = lambda self, request, view: True
    logging.disable(logging.INFO)  # a log line per login, job deferred, ...: noise here
    figures = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_at_start": round(os.getloadavg()[0], 2),
        "machine": _machine(),
        "commit": scratch.measured_commit("accounts", "billing", "clusters", "console"),
        "users": args.users,
        "days": args.days,
    }
    started = time.perf_counter()
    if args.reuse:  # the size is the database's, not the options'
        figures["build_s"] = fill_other_tables_on_reuse(args.database_url)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM users WHERE id LIKE 'auth0|scale%%'")
            args.users = figures["users"] = cursor.fetchone()[0]
            cursor.execute("SELECT max(date) - min(date) + 1 FROM usage_daily")
            args.days = figures["days"] = cursor.fetchone()[0]
    else:
        print(f"building {args.users:,} users x {args.days} days", flush=True)
        cluster_ids = create_clusters_and_admin()
        connection.close()
        figures["build_s"] = build(
            args.database_url, users=args.users, days=args.days, cluster_ids=cluster_ids
        )
    figures["build_total_s"] = round(time.perf_counter() - started, 1)
    figures["tables"] = table_counts()
    if args.build_only:
        return figures

    from accounts.models import User

    sample = sample_objects(args.users)
    sample["admin"] = User.objects.get(pk=ADMIN_ID)
    figures["sample"] = {k: str(v) for k, v in sample.items() if k not in ("user", "admin")}
    connection.close()
    os.environ["PGOPTIONS"] = f"-c statement_timeout={args.statement_timeout * 1000}"

    operator = Client()
    operator.force_login(sample["admin"])
    person = Client()
    person.force_login(sample["user"])
    pages = [
        (group, name, lambda u=url, c=client: c.get(u))
        for group, name, url, client in floor_pages(operator, person)
    ]
    pages += [("dashboard", "GET /admin/ (dashboard)", lambda: operator.get("/admin/"))]
    pages += own_pages(person)
    pages += api_pages(operator, sample, args.users, args.days)
    pages += admin_pages(operator, sample, args)
    # As the web worker does once its application is loaded (platform_site/wsgi.py): what
    # was loaded at start is frozen out of the garbage collector's way.
    from platform_site.runtime import freeze_startup_objects

    freeze_startup_objects()
    print(f"\nmeasuring {len(pages)} pages (median / p95 ms, queries)", flush=True)
    results = []
    for group, name, call in pages:
        if args.only and args.only.lower() not in name.lower():
            continue
        if call is None:
            results.append({"group": group, "page": name, "error": "not measured", "n": 0})
            continue
        results.append(measure(name, call, args=args, group=group))
    figures["pages"] = results
    if not args.only:
        figures["month_to_date"] = month_to_date(5)
        figures["post_usage"] = post_usage(operator, args.users)
    figures["load_at_end"] = round(os.getloadavg()[0], 2)
    figures["total_s"] = round(time.perf_counter() - started, 1)
    return figures


def _machine() -> dict:
    memory = None
    try:
        with open("/proc/meminfo") as meminfo:
            memory = round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "memory_gb": memory, "python": platform.python_version()}


# Reporting -------------------------------------------------------------------------------


def report(figures: dict) -> str:
    lines = ["", "console at scale benchmark", "=" * 110]
    machine = figures["machine"]
    lines.append(
        f"when     {figures['when']}  ({machine['cpus']} CPUs, {machine['memory_gb']} GB RAM, "
        f"load {figures['load_at_start']} at start, {figures.get('load_at_end', '-')} at end)"
    )
    lines.append(f"project  commit {figures['commit']}")
    lines.append(f"data     {figures['users']:,} users x {figures['days']} days")
    for table, size in figures["tables"].items():
        lines.append(f"         {table:<30} {size['rows']:>12,} rows {size['mb']:>10,} MB")
    if "build_s" in figures:
        build_s = figures["build_s"]
        lines.append(
            f"build    {figures['build_total_s']} s: "
            + ", ".join(f"{k} {v}" for k, v in build_s.items())
        )
    pages = figures.get("pages")
    if pages is None:
        return "\n".join(lines)
    header = (
        f"{'page':<72} {'median':>8} {'p95':>8} {'SQL':>8} {'xSQL':>5} {'queries':>7} "
        f"{'n':>3}  goal"
    )
    lines += ["", f"pages (ms; goal: p95 under {GOAL_MS:.0f} ms)", header, "-" * len(header)]
    for r in pages:
        if "median_ms" not in r:
            lines.append(f"{r['page'][:72]:<72} {r.get('error') or 'no samples':>8}")
            continue
        verdict = "ok" if r["p95_ms"] <= GOAL_MS else "MISS"
        if r.get("status") not in (200, None):
            verdict += f" (HTTP {r['status']})"
        ratio = f"{r['median_ms'] / r['sql_ms']:.1f}" if r["sql_ms"] else "-"
        queries = (
            str(r["queries"])
            if r["queries"] == r["queries_min"]
            else f"{r['queries_min']}-{r['queries']}"
        )
        lines.append(
            f"{r['page'][:72]:<72} {r['median_ms']:>8,.0f} {r['p95_ms']:>8,.0f} "
            f"{r['sql_ms']:>8,.0f} {ratio:>5} {queries:>7} {r['n']:>3}  {verdict}"
        )
    floor = [r for r in pages if r.get("group") == "floor"]
    pages = [r for r in pages if r.get("group") != "floor"]
    missed = [r for r in pages if r.get("error") or r.get("p95_ms", 0) > GOAL_MS]
    lines.append(f"\n{len(pages) - len(missed)} of {len(pages)} pages meet the goal")
    within = [r for r in pages if r.get("sql_ms") and r["median_ms"] <= 2 * r["sql_ms"]]
    lines.append(f"{len(within)} of {len(pages)} pages within x2 of their own SQL (median / SQL)")
    if floor:
        lines.append(
            "floor (views that do nothing, same middleware): "
            + "; ".join(f"{r['page'][7:]} {r.get('median_ms', '-')} ms" for r in floor)
        )
    if "month_to_date" in figures:
        mtd = figures["month_to_date"]
        ours, bare = mtd["month_to_date_by_user()"], mtd["bare GROUP BY"]
        lines.append(
            f"\nmonth to date, all users: month_to_date_by_user() {ours['median_ms']} ms "
            f"({ours['rows']:,} rows), bare GROUP BY {bare['median_ms']} ms: "
            f"x{mtd['ratio']} (goal within x2)"
        )
    if figures.get("baseline"):
        lines += against_baseline(figures, pages)
    for post in figures.get("post_usage", []):
        lines.append(
            f"{post['page']}: {post['ms']:,.0f} ms, {post['queries']:,} queries "
            f"(HTTP {post['status']})"
        )
    if missed:
        lines += ["", "slowest statement of each page that misses the goal"]
        for r in missed:
            lines += ["", f"## {r['page']}: {r.get('slowest_ms', '-')} ms"]
            lines.append("   " + " ".join(str(r.get("slowest_sql", "")).split())[:600])
            if r.get("plan"):
                lines += ["   " + line for line in r["plan"].splitlines()]
    lines.append(f"\ntotal {figures.get('total_s', '-')} s")
    return "\n".join(lines)


def against_baseline(figures: dict, pages: list[dict]) -> list[str]:
    """Each page's time outside its SQL here against the same page on the baseline's
    (smaller) data set: what grows with the data outside the database is our Python work."""
    base = figures["baseline"]
    there = {r["page"]: r for r in base["pages"] if "outside_sql_ms" in r}
    pairs = [(r, there[r["page"]]) for r in pages if "outside_sql_ms" in r and r["page"] in there]
    grew = [(r, b) for r, b in pairs if r["outside_sql_ms"] > 2 * b["outside_sql_ms"]]
    same_rows = [(r, b) for r, b in pairs if r.get("rows") == b.get("rows")]
    grew_same_rows = [(r, b) for r, b in grew if r.get("rows") == b.get("rows")]
    ratios = sorted(
        r["outside_sql_ms"] / b["outside_sql_ms"] for r, b in pairs if b["outside_sql_ms"]
    )
    lines = [
        "",
        f"time outside SQL against the baseline ({base['users']:,} users x {base['days']} days, "
        f"commit {base['commit']}, {base['when']}):",
        f"{len(pairs) - len(grew)} of {len(pairs)} pages within x2 of the baseline's "
        f"(median ratio {statistics.median(ratios):.2f}); "
        f"of the {len(same_rows)} pages showing as many rows at both sizes, "
        f"{len(same_rows) - len(grew_same_rows)} within x2",
    ]
    if grew:
        lines.append(
            f"{'over x2 (ms outside SQL: baseline -> here; rows shown)':<72} {'base':>6} "
            f"{'here':>6} {'rows':>11}"
        )
        for r, b in sorted(grew, key=lambda p: p[0]["outside_sql_ms"] / p[1]["outside_sql_ms"]):
            shown = f"{b.get('rows')}->{r.get('rows')}"
            lines.append(
                f"{r['page'][:72]:<72} {b['outside_sql_ms']:>6} {r['outside_sql_ms']:>6} "
                f"{shown:>11}"
            )
    return lines


def with_baseline(figures: dict, path: str | None) -> dict:
    if path:
        base = json.loads(Path(path).read_text())
        figures["baseline"] = {k: base.get(k) for k in ("users", "days", "commit", "when")}
        figures["baseline"]["pages"] = [
            {k: r[k] for k in ("page", "outside_sql_ms", "rows") if k in r}
            for r in base.get("pages", [])
        ]
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reuse:
        scratch.setup_django(args.database_url)
        figures = with_baseline(benchmark(args), args.baseline)
        print(report(figures))
        text = json.dumps(figures, indent=2, default=str)
        if args.json:
            Path(args.json).write_text(text + "\n")
        else:
            print("\n" + text)
        return 0

    def setup(url):
        from django.core.management import call_command

        scratch.setup_django(url)
        call_command("migrate", verbosity=0)

    return scratch.run_in_scratch(
        args,
        setup=setup,
        benchmark=lambda args: with_baseline(benchmark(args), args.baseline),
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
