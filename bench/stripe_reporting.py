"""Benchmark: reporting a day of postpaid usage to Stripe (`usage_report_to_stripe`) for
many users, against the local fake Stripe (v2 meter event stream) served from a process of
its own, so that what the reporting costs (this process's CPU and its database backend's)
is measured apart from what the fake costs (its process's CPU). Then the same day reported
by several worker processes at once, and the fake asked whether any identifier came twice.

It prints figures and asserts nothing. It works in a scratch database of its own (created,
migrated, and dropped at the end unless --keep), so it never touches a real one:

    .venv/bin/python bench/stripe_reporting.py --users 20000 --workers 2,3

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import io
import logging
import multiprocessing
import os
import platform
import pstats
import random
import re
import resource
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scratch

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bench_stripe"
# Stripe's published bound for the v2 meter event stream, the one issue 16 names. The API
# reference (https://docs.stripe.com/api/v2/billing/meter-event-stream/create): "Supports up
# to 10,000 requests per second in livemode" and "up to 100 events per request"; the
# changelog that introduced the stream
# (https://docs.stripe.com/changelog/acacia/2024-09-30/usage-based-billing-v2-meter-events-api):
# "You can send up to 10k events per second to a meter event stream". The stricter
# reading, 10,000 events a second, is what one process must exceed for Stripe, not us, to
# be the bound: at most 100 us of CPU an event, ours and our database backend's together.
STRIPE_LIVE_EVENTS_PER_SECOND = 10_000
STRIPE_LIVE_REQUESTS_PER_SECOND = 10_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Statements whose plan the report shows (EXPLAIN ANALYZE of a later batch's own).
SAMPLED = {
    "months due": "SELECT user_id, month, max(version)",
    "figures": "SELECT p.user_id, p.month, d.first_day",
    "claim": "WITH claimed AS",
    # The decision (from unnest) and the acceptance (from the ids), apart.
    "decision written": "UPDATE billing_stripe_usage_report r\n",
    "acceptance written": "UPDATE billing_stripe_usage_report\n",
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
    parser.add_argument(
        "--workers",
        default="2",
        help="Comma-separated numbers of worker processes reporting the same day at once, "
        "each measured on a freshly collected day (default 2; 0 or empty for none).",
    )
    parser.add_argument(
        "--profile",
        metavar="N",
        type=int,
        default=0,
        help="Also profile one more day's report with cProfile and print its N costliest "
        "functions (by own time and by cumulative time).",
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--keep", action="store_true", help="Leave the database in place.")
    parser.add_argument("--json", help="Write the figures as JSON there.")
    args = parser.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",") if n.strip() and int(n) > 0]
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


# CPU time, ours and the others'


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process on this machine (None if it is not here, as
    for a database on another host)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def backend_pid() -> int:
    """The database backend serving this process's connection (its CPU is ours too)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# The fake Stripe, in a process of its own


class FakeStripeProcess:
    """tests/fakes/stripe.py served from a forked process (its threads' CPU counted there,
    not in ours), driven over a pipe: add customers, count what it received, audit the
    identifiers it saw."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self._pipe, theirs = context.Pipe()
        self.process = context.Process(target=_serve_fake, args=(theirs,), daemon=True)
        self.process.start()
        self.api_base, self.api_key = self._pipe.recv()

    def call(self, name: str, *args):
        self._pipe.send((name, args))
        ok, value = self._pipe.recv()
        if not ok:
            raise RuntimeError(f"the fake Stripe failed to {name}: {value}")
        return value

    def add_customers(self, count: int) -> list[str]:
        return self.call("add_customers", count)

    def counts(self) -> dict:
        return self.call("counts")

    def audit(self) -> dict:
        return self.call("audit")

    def stop(self) -> None:
        if self.process.is_alive():
            self.call("stop")
        self.process.join(10)


def _serve_fake(pipe) -> None:
    from tests.fakes.server import local_server
    from tests.fakes.stripe import reset

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with local_server() as server:
        fake = reset(server)
        pipe.send((fake.api_base, fake.api_key))
        while True:
            name, args = pipe.recv()
            if name == "stop":
                pipe.send((True, None))
                return
            try:
                value = FAKE_COMMANDS[name](fake, *args)
            except Exception as error:  # reported to the parent
                pipe.send((False, repr(error)))
            else:
                pipe.send((True, value))


def _fake_counts(fake) -> dict:
    cpu = own_cpu()  # first: what follows is the asking, not the serving
    with fake._lock:
        return {
            "cpu": cpu,
            "requests": len(fake.requests),
            "stream_requests": len(fake.stream_requests()),
            "events_accepted": len(fake.meter_events),
        }


def _fake_audit(fake) -> dict:
    """Every identifier of every stream request the fake received (answered or not): how
    many, how many distinct, and those that came more than once."""
    with fake._lock:
        streamed = Counter(fake.streamed_identifiers())
        accepted = len(fake.meter_events)
    twice = sorted(i for i, n in streamed.items() if n > 1)
    return {
        "identifiers_streamed": sum(streamed.values()),
        "distinct_identifiers": len(streamed),
        "identifiers_sent_twice": len(twice),
        "examples_sent_twice": twice[:5],
        "events_accepted": accepted,
    }


FAKE_COMMANDS = {
    "add_customers": lambda fake, n: [fake.add_customer()["id"] for _ in range(n)],
    "counts": _fake_counts,
    "audit": _fake_audit,
}


def build_world(args, fake, rng: random.Random) -> list[str]:
    from django.core.management import call_command

    from accounts.models import User
    from billing.models import BillingProfile

    call_command("setup_stripe_billing", verbosity=0, stdout=io.StringIO())
    started = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    user_ids = [f"auth0|bench{i:06d}" for i in range(1, args.users + 1)]
    customers = fake.add_customers(len(user_ids))
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


class SendClock:
    """Wall and CPU time (this thread's) inside `MeterEventStream.send`: the SDK, the JSON,
    the HTTP client, and (wall only) waiting for the fake's answer."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self):
        from billing import stripe_gateway as gateway

        self._original = original = gateway.MeterEventStream.send
        clock = self

        @functools.wraps(original)
        def send(stream, events):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(stream, events)
            finally:
                clock.cpu += time.thread_time() - cpu
                clock.wall += time.perf_counter() - wall

        gateway.MeterEventStream.send = send
        return self

    def __exit__(self, *exc) -> None:
        from billing import stripe_gateway as gateway

        gateway.MeterEventStream.send = self._original


def dash(value) -> object:
    return "-" if value is None else value


def per_event_us(seconds: float | None, events: int) -> float | None:
    return round(seconds / events * 1e6, 1) if seconds is not None and events else None


def rate(count: float, seconds: float | None) -> int | None:
    return round(count / seconds) if seconds else None


def _throughput(events, requests, seconds, cpu, db_cpu, fake_before, fake_after) -> dict:
    """The figures a single run and concurrent workers both report."""
    ours = cpu + (db_cpu or 0.0)
    return {
        "events_sent": events,
        "events_accepted_by_fake": fake_after["events_accepted"] - fake_before["events_accepted"],
        "stream_requests": requests,
        "events_per_second": rate(events, seconds),
        "requests_per_second": rate(requests, seconds),
        "our_cpu_seconds": round(cpu, 2),
        "db_backend_cpu_seconds": round(db_cpu, 2) if db_cpu is not None else None,
        "fake_cpu_seconds": round(fake_after["cpu"] - fake_before["cpu"], 2),
        "us_per_event_ours_and_db": per_event_us(ours, events),
    }


def measured_run(fake: FakeStripeProcess, *, label: str, profile: int = 0) -> dict:
    from django.db import connection

    from billing.stripe_reporting import usage_report_to_stripe

    meter = Meter()
    pid = backend_pid()
    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU, not waits
    fake_before = fake.counts()
    db_before, cpu_before = process_cpu(pid), own_cpu()
    start = time.perf_counter()
    with SendClock() as sending, connection.execute_wrapper(meter):
        if profiler is not None:
            profiler.enable()
        run = usage_report_to_stripe()
        if profiler is not None:
            profiler.disable()
    seconds = time.perf_counter() - start
    cpu, db_after = own_cpu() - cpu_before, process_cpu(pid)
    fake_after = fake.counts()
    db_cpu = db_after - db_before if db_before is not None and db_after is not None else None
    events = run.sent_events
    requests = fake_after["stream_requests"] - fake_before["stream_requests"]
    ours = cpu + (db_cpu or 0.0)
    # Were Stripe to answer at once, a run would take its wall time less the time spent
    # waiting inside `send` (our CPU inside it stays).
    instant = seconds - sending.wall + sending.cpu
    figures = {
        "label": label,
        "profiled": bool(profiler),
        "seconds": round(seconds, 2),
        "batches": run.batches or "-",
        "queries": meter.queries,
        "queries_per_batch": round(meter.queries / run.batches, 1) if run.batches else None,
        "db_seconds": round(meter.db_seconds, 2),  # wall, as seen from here
        **_throughput(events, requests, seconds, cpu, db_cpu, fake_before, fake_after),
        "send_wall_seconds": round(sending.wall, 2),
        "send_our_cpu_seconds": round(sending.cpu, 2),
        "us_per_event_ours": per_event_us(cpu, events),
        "us_per_event_db": per_event_us(db_cpu, events),
        "events_per_cpu_second_ours_and_db": rate(events, ours),
        "events_per_second_if_stripe_answered_at_once": rate(events, instant),
        "errors": run.errors[:3],
        "db_seconds_by_statement": {
            k: round(v, 2) for k, v in sorted(meter.kinds.items(), key=lambda kv: -kv[1])
        },
        "plans": {name: explain(*seen[-1]) for name, seen in meter.samples.items()},
    }
    if profiler is not None:
        figures["profile"] = profile_lines(profiler, profile)
    return figures


def profile_lines(profiler: cProfile.Profile, count: int) -> list[str]:
    lines = []
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(count)
        text = out.getvalue()
        lines += [f"by {order}:", *text[text.index("ncalls") :].rstrip().splitlines()]
    return lines


def concurrent_run(fake: FakeStripeProcess, *, workers: int, label: str) -> dict:
    """`workers` processes (forked) each running `usage_report_to_stripe` at once, started
    together once each has its database connection; the aggregate is all their events over
    the time from the start until the last one finished."""
    from django.db import connections

    connections.close_all()  # a forked child must not share this process's connection
    context = multiprocessing.get_context("fork")
    ready, results = context.Barrier(workers + 1), context.Queue()
    children = [
        context.Process(target=_report_worker, args=(ready, results)) for _ in range(workers)
    ]
    fake_before = fake.counts()
    for child in children:
        child.start()
    ready.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in every process
    reports = [results.get(timeout=3600) for _ in children]
    for child in children:
        child.join()
    fake_after = fake.counts()
    seconds = max(r["finished"] for r in reports) - start
    events = sum(r["sent_events"] for r in reports)
    requests = fake_after["stream_requests"] - fake_before["stream_requests"]
    cpu = sum(r["cpu"] for r in reports)
    db_cpu = (
        sum(r["db_cpu"] for r in reports) if all(r["db_cpu"] is not None for r in reports) else None
    )
    return {
        "label": label,
        "workers": workers,
        "seconds": round(seconds, 2),
        **_throughput(events, requests, seconds, cpu, db_cpu, fake_before, fake_after),
        "per_worker": [
            {k: r[k] for k in ("sent_events", "batches", "skipped_locked", "seconds", "errors")}
            for r in reports
        ],
    }


def _report_worker(ready, results) -> None:
    from django.db import connection

    from billing import stripe_gateway as gateway
    from billing.stripe_reporting import usage_report_to_stripe

    gateway._build_client.cache_clear()  # the parent's HTTP connections stay the parent's
    pid = backend_pid()
    ready.wait()
    start, cpu, db = time.perf_counter(), own_cpu(), process_cpu(pid)
    run = usage_report_to_stripe()
    finished = time.perf_counter()
    db_after = process_cpu(pid)
    results.put(
        {
            "sent_events": run.sent_events,
            "batches": run.batches,
            "skipped_locked": run.skipped_locked,
            "errors": run.errors[:3],
            "seconds": round(finished - start, 2),
            "finished": finished,
            "cpu": own_cpu() - cpu,
            "db_cpu": db_after - db if db is not None and db_after is not None else None,
        }
    )
    connection.close()


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

    fake = FakeStripeProcess()  # forked before this process opens a database connection
    try:
        return _benchmark(args, fake, settings, call_command)
    finally:
        fake.stop()


def _benchmark(args, fake, settings, call_command) -> dict:
    call_command("migrate", verbosity=0)
    rng = random.Random(args.seed)
    figures = {
        "users": args.users,
        "days_before": args.days,
        "batch": args.batch,
        "rate": args.rate,
        "stripe_live_events_per_second": STRIPE_LIVE_EVENTS_PER_SECOND,
        "stripe_live_requests_per_second": STRIPE_LIVE_REQUESTS_PER_SECOND,
        "commit": scratch.measured_commit("billing", "bench", "tests/fakes", "plumbing"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
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
    if args.profile:
        upsert(day_records(user_ids, today, rng))  # the day collected again: all due
        runs.append(measured_run(fake, label="day again, profiled", profile=args.profile))
    figures["runs"] = runs
    together = []
    for workers in args.workers:
        upsert(day_records(user_ids, today, rng))
        together.append(concurrent_run(fake, workers=workers, label=f"{workers} workers at once"))
    figures["concurrent"] = together
    figures["audit"] = fake.audit()
    figures["fake_requests"] = fake.counts()["requests"]
    figures["load_after"] = os.getloadavg()
    return figures


def report(figures: dict) -> str:
    lines = [
        f"Reporting to Stripe (fake in its own process, v2 meter event stream): "
        f"{figures['users']:,} postpaid users, batches of {figures['batch']}, pace "
        f"{figures['rate']:g} requests/s (commit {figures['commit']}, {figures['cpus']} CPUs, "
        f"load {figures['load_before'][0]:.1f} -> {figures['load_after'][0]:.1f})",
        f"loading {figures['days_before']} days: {figures['load_seconds']} s; "
        f"collecting the day: {figures['collect_day_seconds']} s",
        f"Stripe's published live bound: {STRIPE_LIVE_EVENTS_PER_SECOND:,} events/s "
        f"(100 us an event), {STRIPE_LIVE_REQUESTS_PER_SECOND:,} requests/s",
        "",
        f"{'run':<26}{'s':>7}{'q/batch':>8}{'events':>8}{'ev/s':>7}{'req/s':>7}"
        f"{'cpu s':>7}{'db cpu':>7}{'fake':>6}{'send':>6}{'in send':>8}"
        f"{'us/ev':>7}{'+db':>7}{'ev/cpu-s':>9}{'instant':>8}",
    ]
    for run in figures["runs"]:
        lines.append(
            f"{run['label']:<26}{run['seconds']:>7}{run['queries_per_batch'] or '-':>8}"
            f"{run['events_sent']:>8}{run['events_per_second'] or '-':>7}"
            f"{run['requests_per_second'] or '-':>7}{run['our_cpu_seconds']:>7}"
            f"{dash(run['db_backend_cpu_seconds']):>7}"
            f"{run['fake_cpu_seconds']:>6}{run['send_wall_seconds']:>6}"
            f"{run['send_our_cpu_seconds']:>8}{run['us_per_event_ours'] or '-':>7}"
            f"{run['us_per_event_ours_and_db'] or '-':>7}"
            f"{run['events_per_cpu_second_ours_and_db'] or '-':>9}"
            f"{run['events_per_second_if_stripe_answered_at_once'] or '-':>8}"
        )
        if run["errors"]:
            lines.append(f"   errors: {run['errors']}")
    lines += [
        "",
        "(cpu s: this process; db cpu: its database backend; fake: the fake's process; send: "
        "wall time inside MeterEventStream.send; in send: our CPU in it; us/ev: our CPU an "
        "event, +db: with the backend's; ev/cpu-s: events per CPU-second of ours and the "
        "backend's; instant: events/s were Stripe to answer at once, wall less the waiting "
        "in send)",
    ]
    if figures["concurrent"]:
        lines += [
            "",
            f"{'at once':<20}{'s':>7}{'events':>8}{'accepted':>9}{'ev/s':>7}{'req/s':>7}"
            f"{'cpu s':>7}{'db cpu':>7}{'fake':>6}{'us/ev+db':>9}  per worker (events, skipped)",
        ]
        for run in figures["concurrent"]:
            each = ", ".join(
                f"{w['sent_events']} ({w['skipped_locked']})" for w in run["per_worker"]
            )
            lines.append(
                f"{run['label']:<20}{run['seconds']:>7}{run['events_sent']:>8}"
                f"{run['events_accepted_by_fake']:>9}{run['events_per_second'] or '-':>7}"
                f"{run['requests_per_second'] or '-':>7}{run['our_cpu_seconds']:>7}"
                f"{dash(run['db_backend_cpu_seconds']):>7}"
                f"{run['fake_cpu_seconds']:>6}{run['us_per_event_ours_and_db'] or '-':>9}  {each}"
            )
            for worker in run["per_worker"]:
                if worker["errors"]:
                    lines.append(f"   errors: {worker['errors']}")
    audit = figures["audit"]
    lines += [
        "",
        f"the fake saw {audit['identifiers_streamed']:,} identifiers streamed, "
        f"{audit['distinct_identifiers']:,} distinct, {audit['identifiers_sent_twice']} sent "
        f"more than once {audit['examples_sent_twice']}; {audit['events_accepted']:,} events "
        "accepted",
    ]
    measured = [r for r in figures["runs"] if r["events_sent"] and not r["profiled"]]
    for run in measured[-1:]:
        lines += ["", f"database time by statement ({run['label']}):"]
        lines += [f"   {s:>6} s  {kind}" for kind, s in run["db_seconds_by_statement"].items()]
        for name, plan in run["plans"].items():
            lines += ["", f"plan of one batch's {name} ({run['label']}):"]
            lines += [f"   {line}" for line in plan]
    for run in figures["runs"]:
        if run.get("profile"):
            lines += ["", f"profile ({run['label']}; cProfile slows it down):"]
            lines += [f"   {line}" for line in run["profile"]]
    return "\n".join(lines)


def setup_django(url: str) -> None:
    scratch.setup_django(url)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("billing").setLevel(logging.WARNING)


def main(argv=None) -> int:
    args = parse_args(argv)
    return scratch.run_in_scratch(args, setup=setup_django, benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
