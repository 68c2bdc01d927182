"""Benchmark: reporting a day of postpaid usage to Stripe (`report_usage_to_stripe`) for
many users, against the local fake Stripe (v2 meter event stream) served from this process.

It prints figures and asserts nothing. It works in a scratch database of its own (created,
migrated, and dropped at the end unless --keep), so it never touches a real one:

    .venv/bin/python bench/stripe_reporting.py --users 20000

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import io
import logging
import platform
import random
import re
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scratch

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bench_stripe"
# Statements whose plan the report shows (EXPLAIN ANALYZE of a later batch's own).
SAMPLED = {
    "months due": "SELECT user_id, month, max(version)",
    "figures": "SELECT p.user_id, p.month, d.first_day",
    "claim": "WITH claimed AS",
    "report rows written": "UPDATE billing_stripe_usage_report",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help="Scratch database to create, use and drop (its name must start with 'bench'; "
        f"default {DEFAULT_URL}).",
    )
    parser.add_argument("--users", type=int, default=20000, help="Postpaid users (20000).")
    parser.add_argument(
        "--days", type=int, default=3, help="Days of usage already reported this month (3)."
    )
    parser.add_argument("--batch", type=int, default=500, help="User-months per batch (500).")
    parser.add_argument(
        "--rate",
        type=float,
        default=10_000,
        help="Stream requests a second (STRIPE_METER_STREAM_REQUESTS_PER_SECOND; default "
        "10000, Stripe's live limit).",
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--keep", action="store_true", help="Leave the database in place.")
    parser.add_argument("--json", help="Write the figures as JSON there.")
    args = parser.parse_args(argv)
    if not args.database_url.rsplit("/", 1)[-1].startswith("bench"):
        parser.error("the scratch database's name must start with 'bench'")
    return args


def statement_kind(sql: str) -> str:
    """E.g. "UPDATE billing_stripe_usage_report", "SELECT usage_daily"."""
    words = sql.split()
    verb = words[0].upper() if words else "?"
    found = re.search(r'(?:FROM|INTO|UPDATE|JOIN)\s+"?(\w+)"?', sql, re.IGNORECASE)
    table = found.group(1) if found else "?"
    if verb == "WITH":
        verb = "SELECT ... FOR UPDATE"
    if table in ("unnest", "SELECT"):
        later = re.findall(r'(?:FROM|JOIN)\s+"?(\w+)"?', sql)
        table = next((t for t in later if t not in ("unnest", "SELECT")), table)
    return f"{verb} {table}"


class Meter:
    """Counts and times database statements (an execute wrapper) and the calls it wraps."""

    def __init__(self):
        self.queries = 0
        self.db_seconds = 0.0
        self.calls: dict[str, list[float]] = {}
        self.samples: dict[str, tuple] = {}  # the second batch's statements, to explain
        self.kinds: dict[
            str, float
        ] = {}  # statement kind -> seconds  # the second batch's statements, to explain

    def __call__(self, execute, sql, params, many, context):
        for name, opening in SAMPLED.items():
            if sql.lstrip().startswith(opening):
                seen = self.samples.setdefault(name, [])
                if len(seen) < 2:
                    seen.append((sql, params))
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.queries += 1
            took = time.perf_counter() - start
            self.db_seconds += took
            kind = statement_kind(sql)
            self.kinds[kind] = self.kinds.get(kind, 0.0) + took

    def wrap(self, owner, name: str, label: str):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls.setdefault(label, []).append(time.perf_counter() - start)

        setattr(owner, name, timed)


def build_world(args, fake, rng: random.Random) -> list[str]:
    from django.core.management import call_command

    from accounts.models import User
    from billing.models import BillingProfile

    call_command("setup_stripe_billing", verbosity=0, stdout=io.StringIO())
    started = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    user_ids = [f"auth0|bench{i:06d}" for i in range(1, args.users + 1)]
    customers = [fake.add_customer()["id"] for _ in user_ids]
    User.objects.bulk_create(
        [
            User(
                id=uid, email=f"bench{n}@example.com", name="B", password="!", stripe_customer_id=c
            )
            for n, (uid, c) in enumerate(zip(user_ids, customers, strict=True))
        ],
        batch_size=2000,
    )
    BillingProfile.objects.bulk_create(
        [
            BillingProfile(
                user_id=uid,
                stripe_subscription_id=f"sub_{n}",
                subscription_status="active",
                subscription_started_at=started,
                started_subscription_id=f"sub_{n}",
            )
            for n, uid in enumerate(user_ids)
        ],
        batch_size=2000,
    )
    return user_ids


def day_records(user_ids, day, rng):
    from billing.usage import UsageRecord

    return [
        UsageRecord(
            user_id=uid,
            date=day,
            cpu_hours=Decimal(rng.randrange(0, 4_800_000)) / 100_000,
            gpu_hours=Decimal(rng.randrange(0, 800)) / 100 if rng.random() < 0.15 else Decimal(0),
            storage_gb_months=Decimal(rng.randrange(0, 2_000_000)) / 1_000 / 31,
            api_calls=rng.randrange(0, 100_001),
        )
        for uid in user_ids
    ]


def upsert(records):
    from billing.usage import usage_upsert

    for start in range(0, len(records), 5000):
        usage_upsert(records=records[start : start + 5000], actor="bench")


def measured_run(fake, *, label: str) -> dict:
    from django.db import connection

    from billing import stripe_gateway as gateway
    from billing.stripe_reporting import usage_report_to_stripe

    meter = Meter()
    # The code before the v2 stream (one v1 request per event) is measured the same way,
    # with this script copied into a checkout of it.
    sender = getattr(gateway, "MeterEventStream", gateway)
    sending = "send" if sender is not gateway else "send_meter_event"
    serving = "_process_v2" if hasattr(type(fake), "_process_v2") else "_process"
    meter.wrap(sender, sending, "stream.send")
    meter.wrap(type(fake), serving, "fake server")
    requests_before, events_before = len(event_requests(fake)), len(fake.meter_events)
    start = time.perf_counter()
    with connection.execute_wrapper(meter):
        run = usage_report_to_stripe()
    seconds = time.perf_counter() - start
    setattr(sender, sending, getattr(sender, sending).__wrapped__)
    setattr(type(fake), serving, getattr(type(fake), serving).__wrapped__)
    batches = getattr(run, "batches", None)
    plans = {name: explain(*seen[-1]) for name, seen in meter.samples.items()}
    stream = sum(meter.calls.get("stream.send", []))
    server = sum(meter.calls.get("fake server", []))
    return {
        "label": label,
        "seconds": round(seconds, 2),
        "batches": batches or "-",
        "queries": meter.queries,
        "queries_per_batch": round(meter.queries / batches, 1) if batches else None,
        "db_seconds": round(meter.db_seconds, 2),
        "events_sent": run.sent_events,
        "events_per_second": round(run.sent_events / seconds) if seconds else None,
        "stream_requests": len(event_requests(fake)) - requests_before,
        "events_counted_by_fake": len(fake.meter_events) - events_before,
        "stream_send_seconds": round(stream, 2),
        "fake_server_seconds": round(server, 2),
        "python_seconds": round(seconds - meter.db_seconds - stream, 2),
        "errors": run.errors[:3],
        "db_seconds_by_statement": {
            k: round(v, 2) for k, v in sorted(meter.kinds.items(), key=lambda kv: -kv[1])
        },
        "plans": plans,
    }


def event_requests(fake) -> list:
    if hasattr(fake, "stream_requests"):
        return fake.stream_requests()
    return fake.requests_to("POST", "/v1/billing/meter_events")


def explain(sql: str, params) -> list[str]:
    """EXPLAIN ANALYZE of a statement, in a transaction rolled back (a claim locks rows)."""
    from django.db import connection, transaction

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + sql, params)
            lines = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    return lines


def benchmark(args) -> dict:
    from django.conf import settings
    from django.core.management import call_command

    from tests.fakes.server import local_server
    from tests.fakes.stripe import reset

    call_command("migrate", verbosity=0)
    rng = random.Random(args.seed)
    figures = {
        "users": args.users,
        "days_before": args.days,
        "batch": args.batch,
        "rate": args.rate,
        "commit": scratch.measured_commit("billing", "bench", "tests/fakes"),
        "python": platform.python_version(),
        "cpus": __import__("os").cpu_count(),
    }
    with local_server() as server:
        fake = reset(server)
        settings.STRIPE_SECRET_KEY = fake.api_key
        settings.STRIPE_API_BASE = fake.api_base
        settings.STRIPE_METER_EVENTS_API_BASE = fake.api_base
        settings.STRIPE_METER_STREAM_REQUESTS_PER_SECOND = args.rate
        settings.STRIPE_REPORT_BATCH_SIZE = args.batch
        settings.OUTBOUND_ALLOW_LOCAL = True
        user_ids = build_world(args, fake, rng)
        today = dt.datetime.now(dt.UTC).date()
        first = today.replace(day=1)
        days = [first + dt.timedelta(days=n) for n in range(min(args.days, today.day - 1))]
        start = time.perf_counter()
        for day in days:
            upsert(day_records(user_ids, day, rng))
        figures["load_seconds"] = round(time.perf_counter() - start, 1)
        runs = []
        if days:
            runs.append(measured_run(fake, label=f"first report ({len(days)} days)"))
        start = time.perf_counter()
        upsert(day_records(user_ids, today, rng))
        figures["collect_day_seconds"] = round(time.perf_counter() - start, 1)
        runs.append(measured_run(fake, label="report one more day"))
        runs.append(measured_run(fake, label="rerun, nothing due"))
        figures["runs"] = runs
        figures["fake_requests"] = len(fake.requests)
    return figures


def report(figures: dict) -> str:
    lines = [
        f"Reporting to Stripe (fake, v2 meter event stream): {figures['users']:,} postpaid "
        f"users, batches of {figures['batch']}, pace {figures['rate']:g} requests/s "
        f"(commit {figures['commit']}, {figures['cpus']} CPUs)",
        f"loading {figures['days_before']} days: {figures['load_seconds']} s; "
        f"collecting the day: {figures['collect_day_seconds']} s",
        "",
        f"{'run':<28}{'s':>8}{'batches':>9}{'queries':>9}{'q/batch':>9}{'db s':>7}"
        f"{'events':>9}{'ev/s':>8}{'reqs':>6}{'send s':>8}{'fake s':>8}{'py s':>7}",
    ]
    for run in figures["runs"]:
        lines.append(
            f"{run['label']:<28}{run['seconds']:>8}{run['batches']:>9}{run['queries']:>9}"
            f"{run['queries_per_batch'] or '-':>9}{run['db_seconds']:>7}{run['events_sent']:>9}"
            f"{run['events_per_second'] or '-':>8}{run['stream_requests']:>6}"
            f"{run['stream_send_seconds']:>8}{run['fake_server_seconds']:>8}"
            f"{run['python_seconds']:>7}"
        )
        if run["errors"]:
            lines.append(f"   errors: {run['errors']}")
    for run in figures["runs"][-2:-1]:
        lines += ["", f"database time by statement ({run['label']}):"]
        lines += [f"   {s:>6} s  {kind}" for kind, s in run["db_seconds_by_statement"].items()]
        for name, plan in run["plans"].items():
            lines += ["", f"plan of one batch's {name} ({run['label']}):"]
            lines += [f"   {line}" for line in plan]
    return "\n".join(lines)


def setup_django(url: str) -> None:
    scratch.setup_django(url)
    logging.getLogger("stripe").setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("billing").setLevel(logging.WARNING)


def main(argv=None) -> int:
    args = parse_args(argv)
    return scratch.run_in_scratch(args, setup=setup_django, benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
