"""Benchmark: jobs through Procrastinate, with real worker processes.

It prints figures and asserts nothing. It works in a scratch database of its own (created,
migrated, and dropped at the end unless --keep), so it never touches a real one:

    .venv/bin/python bench/jobs.py

1. Throughput of a no-op job (`plumbing.ping`) with one and with two worker processes.
2. Throughput of usage collection (`billing.collect_cluster_day`, one cluster-day each) with
   one and two workers, against local fakes of OpenCost (behind the Kubernetes API) and
   Hopsworks, over TLS, served from this process.
3. The delay from deferring a job to its start, with a worker already waiting: with
   LISTEN/NOTIFY, and with polling only (`--no-listen-notify`).

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import logging
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scratch

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bench_jobs"
NOOP_QUEUE = "bench_noop"
LATENCY_QUEUE = "bench_latency"
COLLECTION_QUEUE = "collection"  # billing.collect_cluster_day's own queue
JOB_TABLES = (
    "procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers, procrastinate_workers"
)
# Procrastinate's default: how long a worker without LISTEN/NOTIFY (or between
# notifications) waits before it looks for a job again.
POLLING_INTERVAL = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The in-process profile of one cluster-day: a warm-up day (not reported), then DEBUG off
# (production) and on (as the workers run here), three times each, alternating.
PROFILE_RUNS = (None, False, True, False, True, False, True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help="Scratch database to create, use and drop (its name must start with 'bench'; "
        f"default {DEFAULT_URL}).",
    )
    parser.add_argument(
        "--noop-jobs", type=int, default=2000, help="No-op jobs per throughput run (2000)."
    )
    parser.add_argument("--clusters", type=int, default=2, help="Clusters to collect (2).")
    parser.add_argument(
        "--namespaces",
        type=int,
        default=1000,
        help="Namespaces per cluster, each a project of its own user (1000).",
    )
    parser.add_argument("--days", type=int, default=5, help="Days collected per cluster (5).")
    parser.add_argument(
        "--samples",
        type=int,
        default=50,
        help="Jobs deferred one at a time to measure the delay to their start (50).",
    )
    parser.add_argument(
        "--poll-samples",
        type=int,
        default=20,
        help="The same without LISTEN/NOTIFY; each takes about 5 s, the polling interval (20).",
    )
    parser.add_argument(
        "--real-account-sync",
        action="store_true",
        help="Make the users' Hopsworks accounts with hopsworks_accounts_sync() (its cost grows "
        "with the square of the users per cluster: minutes for 1,000) instead of directly.",
    )
    parser.add_argument(
        "--collection-scale",
        action="store_true",
        help="Measure only one day of usage collection at scale (--scale-users on "
        "--scale-clusters clusters), in this process, first run and rerun.",
    )
    parser.add_argument("--scale-users", type=int, default=100_000, help="Users (100000).")
    parser.add_argument("--scale-clusters", type=int, default=5, help="Clusters (5).")
    parser.add_argument(
        "--scale-workers",
        type=int,
        default=1,
        help="Cluster-days collected at once, each by a thread with its own database "
        "connection, as that many job workers would (1: cluster by cluster).",
    )
    parser.add_argument(
        "--scale-fakes-in-process",
        action="store_true",
        help="Serve the fakes from this process's threads, as before 2026-12-06 06:00 UTC "
        "(their handlers then take turns with the collector for this process's interpreter "
        "lock); by default they run in a process of their own, as real servers do.",
    )
    parser.add_argument(
        "--scale-one-by-one",
        action="store_true",
        help="With one at a time, collect each cluster-day with usage_collect_day (what one "
        "job does) instead of usage_collect_each (what collect_usage runs: the next "
        "cluster-day's answers asked for while one is written).",
    )
    parser.add_argument(
        "--scale-walk-fakes",
        action="store_true",
        help="Leave the fakes' data (20,000 projects and allocations a cluster) in this "
        "process's garbage collector, as before 2026-12-06: its full collections then walk "
        "the fakes' heap too, which a worker's (the fakes being other processes) does not.",
    )
    parser.add_argument("--seed", type=int, default=20240601, help="Random seed of the data.")
    parser.add_argument("--keep", action="store_true", help="Do not drop the database.")
    parser.add_argument("--json", metavar="PATH", help="Write the figures here, not stdout.")
    args = parser.parse_args(argv)
    name = urlsplit(args.database_url).path.lstrip("/")
    if not name.startswith("bench"):
        parser.error(f"the database name must start with 'bench' (it is dropped): {name!r}")
    for option in (
        "noop_jobs",
        "clusters",
        "namespaces",
        "days",
        "samples",
        "poll_samples",
        "scale_workers",
    ):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    return args


# The scratch database --------------------------------------------------------------------


def setup_django(url: str) -> None:
    scratch.setup_django(url)
    # One line per request served by the fakes, per job queued: noise here.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("clusters").setLevel(logging.WARNING)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    # Prepaid users without credit go negative at the first collection: a line each.
    logging.getLogger("billing.credits").setLevel(logging.ERROR)


def sql_all(query: str, params=()) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall()


def sql_run(query: str, params=()) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params)


def empty_job_tables() -> None:
    sql_run(f"TRUNCATE {JOB_TABLES} CASCADE")


# Worker processes ------------------------------------------------------------------------


def worker_env(url: str) -> dict:
    # DEBUG=1: the settings refuse to start without production secrets otherwise. No
    # periodic job is queued at start (JOBS_PERIODIC_MAX_DELAY=0): the runs queue their own.
    return {**os.environ, "DEBUG": "1", "DATABASE_URL": url, "JOBS_PERIODIC_MAX_DELAY": "0"}


class Workers:
    """`manage.py worker` processes on one queue, started together."""

    # Every worker started, so that none outlives the benchmark (see main).
    started_processes: list[subprocess.Popen] = []

    def __init__(self, *, url: str, queue: str, count: int, one_shot: bool, listen: bool = True):
        self.url, self.queue, self.count = url, queue, count
        self.one_shot, self.listen = one_shot, listen
        self.processes: list[subprocess.Popen] = []
        self._logs = Path(tempfile.mkdtemp(prefix="bench-jobs-workers-"))
        self.started_epoch = self.started = self.ended = 0.0

    def start(self) -> None:
        self.started_epoch, self.started = time.time(), time.perf_counter()
        for n in range(self.count):
            command = [sys.executable, "manage.py", "worker"]
            command += ["--name", f"bench-{n + 1}", "--queues", self.queue]
            command += ["--one-shot"] if self.one_shot else []
            command += [] if self.listen else ["--no-listen-notify"]
            # The worker writes its log there; this process reads it only if the worker fails.
            with (self._logs / f"worker-{n + 1}.log").open("wb") as log:
                process = subprocess.Popen(
                    command,
                    cwd=PROJECT,
                    env=worker_env(self.url),
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            self.processes.append(process)
            self.started_processes.append(process)

    def running(self) -> bool:
        return any(p.poll() is None for p in self.processes)

    def wait(self, *, meter: CpuMeter | None = None, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"workers on {self.queue} still running after {timeout} s")
            if meter is not None:
                meter.sample()
            time.sleep(0.1)
        self.ended = time.perf_counter()
        self._check()

    def stop(self) -> None:
        """A graceful stop (SIGTERM), as a deployment does."""
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.processes:
            p.wait(timeout=60)
        self.ended = time.perf_counter()
        # A worker still starting has no signal handler yet: SIGTERM ends it at once.
        self._check(ok=(0, -signal.SIGTERM))

    def kill(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> list[str]:
        """The last lines each worker wrote (its log, INFO and up)."""
        tails = []
        for path in sorted(self._logs.glob("worker-*.log")):
            tails += [f"{path.stem}: {line}" for line in path.read_text().splitlines()[-lines:]]
        return tails

    def _check(self, ok: tuple[int, ...] = (0,)) -> None:
        for n, p in enumerate(self.processes, start=1):
            if p.returncode not in ok:
                log = (self._logs / f"worker-{n}.log").read_text(errors="replace")
                raise RuntimeError(f"worker {n} exited with {p.returncode}:\n{log[-3000:]}")
        shutil.rmtree(self._logs, ignore_errors=True)

    @classmethod
    def kill_all(cls) -> None:
        for p in cls.started_processes:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


# CPU accounting --------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float | None:
    """utime + stime of a live process, in seconds (None if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds spent during a stretch, by whom: the worker processes (exact, from the
    kernel's accounting of reaped children), this process (the fake servers' threads and the
    benchmark's own queries), the PostgreSQL backends connected to the scratch database
    (sampled from /proc every 0.1 s; a backend's last < 0.1 s before it exits is missed),
    and the whole machine (so what other programs took shows as "other")."""

    def __init__(self):
        self._backends: dict[int, list[float]] = {}
        self._pids_read = 0.0

    def __enter__(self) -> CpuMeter:
        self._wall = time.perf_counter()
        self._own = time.process_time()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = children.ru_utime + children.ru_stime
        self._machine = _machine_jiffies()
        self._backends.clear()
        self.sample(first=True)
        return self

    def sample(self, *, first: bool = False) -> None:
        now = time.monotonic()
        if first or now - self._pids_read > 0.5:
            self._pids_read = now
            rows = sql_all(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
            for (pid,) in rows:
                if pid not in self._backends:
                    # A backend first seen now was started during the stretch (or at its
                    # very start), so all its CPU counts.
                    cpu = _proc_cpu(pid)
                    if cpu is not None:
                        self._backends[pid] = [cpu if first else 0.0, cpu]
        for pid, times in self._backends.items():
            cpu = _proc_cpu(pid)
            if cpu is not None:
                times[1] = cpu

    def __exit__(self, *exc) -> None:
        self.sample()
        wall = time.perf_counter() - self._wall
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy, total = _machine_jiffies()
        machine_busy = (busy - self._machine[0]) / CLK_TCK
        machine_total = (total - self._machine[1]) / CLK_TCK
        self.figures = {
            "wall_s": wall,
            "workers_s": children.ru_utime + children.ru_stime - self._children,
            "this_process_s": time.process_time() - self._own,
            "postgres_s": sum(last - start for start, last in self._backends.values()),
            "machine_busy_s": machine_busy,
            "machine_cpus": machine_total / wall if wall else 0.0,
        }
        mine = sum(self.figures[k] for k in ("workers_s", "this_process_s", "postgres_s"))
        self.figures["other_s"] = max(machine_busy - mine, 0.0)


# Timings from Procrastinate's events -----------------------------------------------------


def job_timings(queue: str, task_name: str) -> list[dict]:
    """Per job: deferred, first started, finished (epoch seconds), status, attempts."""
    rows = sql_all(
        """
        SELECT j.id, j.status, j.attempts,
               extract(epoch FROM min(e.at) FILTER (WHERE e.type = 'deferred')),
               extract(epoch FROM min(e.at) FILTER (WHERE e.type = 'started')),
               extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'started')),
               extract(epoch FROM max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed')))
        FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id
        WHERE j.queue_name = %s AND j.task_name = %s
        GROUP BY j.id ORDER BY j.id
        """,
        [queue, task_name],
    )
    return [
        {
            "id": job_id,
            "status": status,
            "attempts": attempts,
            "deferred": float(deferred) if deferred is not None else None,
            "started": float(started) if started is not None else None,
            "last_started": float(last_started) if last_started is not None else None,
            "finished": float(finished) if finished is not None else None,
        }
        for job_id, status, attempts, deferred, started, last_started, finished in rows
    ]


def throughput_figures(jobs: list[dict], workers: Workers, meter: CpuMeter) -> dict:
    done = [j for j in jobs if j["finished"] is not None]
    first_start = min(j["started"] for j in done)
    last_end = max(j["finished"] for j in done)
    window = last_end - first_start
    ends = sorted(j["finished"] for j in done)
    # The middle 80 % of the jobs (by the time they ended): no start-up, no tail.
    lo, hi = int(len(ends) * 0.1), int(len(ends) * 0.9) - 1
    steady = (hi - lo) / (ends[hi] - ends[lo]) if hi > lo and ends[hi] > ends[lo] else None
    run_times = [j["finished"] - j["last_started"] for j in done]
    return {
        "jobs": len(jobs),
        "succeeded": sum(j["status"] == "succeeded" for j in jobs),
        "retried": sum(j["attempts"] > 1 for j in jobs),
        "wall_s": workers.ended - workers.started,
        "startup_s": first_start - workers.started_epoch,
        "processing_s": window,
        "shutdown_s": workers.ended - workers.started - (last_end - workers.started_epoch),
        "jobs_per_s": len(done) / window if window > 0 else None,
        "steady_jobs_per_s": steady,
        "job_ms": {
            "median": statistics.median(run_times) * 1000,
            "p95": _p95(run_times) * 1000,
            "max": max(run_times) * 1000,
        },
        # Sum of the jobs' run times over the window: how many ran at once, on average.
        "jobs_running_at_once": sum(run_times) / window if window > 0 else None,
        "cpu": meter.figures,
    }


def _p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


# 1. No-op throughput ---------------------------------------------------------------------


def noop_run(url: str, *, jobs: int, workers: int) -> dict:
    from django.db import transaction

    from plumbing.jobs import ping

    empty_job_tables()
    deferrer = ping.configure(queue=NOOP_QUEUE)
    start = time.perf_counter()
    with transaction.atomic():
        for _ in range(jobs):
            deferrer.defer()
    defer_s = time.perf_counter() - start
    sql_run("VACUUM ANALYZE procrastinate_jobs")  # as autovacuum would after such an insert
    pool = Workers(url=url, queue=NOOP_QUEUE, count=workers, one_shot=True)
    with CpuMeter() as meter:
        pool.start()
        pool.wait(meter=meter)
    figures = throughput_figures(job_timings(NOOP_QUEUE, "plumbing.ping"), pool, meter)
    figures.update(workers=workers, defer_s=defer_s, defer_jobs_per_s=jobs / defer_s)
    return figures


def empty_queue_run(url: str) -> dict:
    """A one-shot worker with nothing to do: start-up, one fetch, shut-down."""
    pool = Workers(url=url, queue=NOOP_QUEUE, count=1, one_shot=True)
    with CpuMeter() as meter:
        pool.start()
        pool.wait(meter=meter)
    return {"wall_s": pool.ended - pool.started, "cpu_s": meter.figures["workers_s"]}


# 2. Collection throughput ----------------------------------------------------------------


class FakeTimer:
    """Time spent answering inside the fake servers' request handlers (this process), by
    wrapping the handlers at class level before the fakes are made. Wall time includes
    waiting for the GIL; CPU time is the handler thread's own."""

    def __init__(self):
        self._lock = threading.Lock()
        self.totals: dict[str, list[float]] = {}  # name -> [requests, wall, cpu]
        self.spans: list[tuple[float, float]] = []  # (start, end) of every answer
        self._undo = []

    def install(self) -> None:
        from tests.fakes.hopsworks import FakeHopsworks
        from tests.fakes.kubernetes import FakeKubernetes

        for owner, attribute, name in (
            (FakeHopsworks, "_handle", "Hopsworks"),
            (FakeKubernetes, "_allocation", "OpenCost"),
        ):
            original = getattr(owner, attribute)
            setattr(owner, attribute, self._wrap(original, name))
            self._undo.append((owner, attribute, original))

    def _wrap(self, handler, name: str):
        @functools.wraps(handler)
        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return handler(*args, **kwargs)
            finally:
                end = time.perf_counter()
                wall, cpu = end - start, time.thread_time() - cpu
                with self._lock:
                    self.spans.append((start, end))
                    totals = self.totals.setdefault(name, [0, 0.0, 0.0])
                    totals[0] += 1
                    totals[1] += wall
                    totals[2] += cpu

        return timed

    def take(self) -> dict:
        with self._lock:
            taken = {
                name: {"requests": n, "wall_s": wall, "cpu_s": cpu}
                for name, (n, wall, cpu) in self.totals.items()
            }
            self.totals.clear()
            self.spans.clear()
        return taken

    def answering_s(self) -> float:
        """Wall time during which at least one fake was answering (the union of their
        answers' spans): when requests overlap (OpenCost and Hopsworks asked at once,
        several workers), the sum of their times would count the same seconds twice."""
        with self._lock:
            spans = sorted(self.spans)
        seconds, reach = 0.0, None
        for start, end in spans:
            if reach is not None and start < reach:
                start = reach
            if end > start:
                seconds += end - start
                reach = end
        return seconds

    def uninstall(self) -> None:
        for owner, attribute, original in reversed(self._undo):
            setattr(owner, attribute, original)
        self._undo.clear()

    # The fakes' handlers run in this process: their CPU is inside this process's.
    in_process = True

    def collect(self) -> tuple[float, dict, float | None]:
        """(wall time some fake was answering, per fake, the fakes' process CPU: None here)."""
        answering = self.answering_s()
        return answering, self.take(), None


def build_world(stack: contextlib.ExitStack, args, rng: random.Random) -> dict:
    """Clusters, each with its own fake Hopsworks and fake Kubernetes API (OpenCost), over
    TLS with a test CA; `--namespaces` users per cluster, assigned with the real service,
    their Hopsworks accounts made by the real sync, one project (namespace) each."""
    from django.conf import settings

    from accounts.models import User
    from clusters.account_sync import hopsworks_accounts_sync, pending_accounts
    from clusters.models import HopsworksCluster
    from clusters.services import assignment_create
    from tests.fakes.hopsworks import OAUTH_CLIENT_ID, reset
    from tests.fakes.kubernetes import FakeKubernetes, kubeconfig_for
    from tests.fakes.server import local_server
    from tests.fakes.tls import make_test_ca

    timings = {}
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-jobs-")))
    ca = make_test_ca(tmp / "tls")
    settings.HOPSWORKS_OAUTH_CLIENT_ID = OAUTH_CLIENT_ID  # what the fake Hopsworks expects
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    days = [yesterday - dt.timedelta(days=n) for n in range(args.days)][::-1]
    # More days, before those, for the in-process profile (see PROFILE_RUNS).
    profile_days = [days[0] - dt.timedelta(days=n) for n in range(1, len(PROFILE_RUNS) + 1)]

    start = time.perf_counter()
    clusters = []
    for c in range(1, args.clusters + 1):
        hopsworks = reset(stack.enter_context(local_server(ca)))
        k8s = FakeKubernetes.on(stack.enter_context(local_server(ca)))
        stack.callback(hopsworks.release)
        stack.callback(k8s.release)
        cluster = HopsworksCluster.objects.create(
            name=f"bench-{c}",
            api_url=hopsworks.api_url,
            api_key=hopsworks.api_key,
            ca_bundle=ca.ca_path.read_text(),
            kubeconfig=kubeconfig_for(k8s, ca),
            max_users=args.namespaces,
        )
        users = User.objects.bulk_create(
            [
                User(
                    id=f"auth0|bench-{c}-{n:06d}",
                    email=f"bench-{c}-{n:06d}@example.com",
                    name=f"Bench User{n}",
                    password="!",
                )
                for n in range(1, args.namespaces + 1)
            ],
            batch_size=1000,
        )
        clusters.append({"cluster": cluster, "hopsworks": hopsworks, "k8s": k8s, "users": users})
    timings["clusters_and_users_s"] = time.perf_counter() - start

    start = time.perf_counter()
    for entry in clusters:
        for user in entry["users"]:
            assignment_create(user=user, cluster=entry["cluster"], actor="bench")
    timings["assignment_create_s"] = time.perf_counter() - start

    start = time.perf_counter()
    if args.real_account_sync:
        report = hopsworks_accounts_sync()
        if report.failed:
            raise RuntimeError(f"account sync failed: {report.errors[:3]}")
        accounts = report.synced
    else:
        accounts = sum(accounts_put_in_place(entry) for entry in clusters)
    timings["accounts_s"] = time.perf_counter() - start
    if pending_accounts().exists():
        raise RuntimeError("some Hopsworks accounts are still pending after the setup")
    empty_job_tables()  # the account-sync jobs the assignments queued: done above

    start = time.perf_counter()
    for entry in clusters:
        namespaces = []
        for n, user in enumerate(entry["users"], start=1):
            namespace = f"bench-ns-{n:06d}"
            entry["hopsworks"].add_project(
                f"bench_project_{n:06d}", user.email, namespace=namespace
            )
            namespaces.append(namespace)
        for day in profile_days + days:
            entry["k8s"].set_allocations(day, allocations(namespaces, rng))
    timings["projects_and_allocations_s"] = time.perf_counter() - start
    return {
        "clusters": clusters,
        "days": days,
        "profile_days": profile_days,
        "timings": timings,
        "accounts": accounts,
        "real_account_sync": args.real_account_sync,
    }


def accounts_put_in_place(entry: dict) -> int:
    """What `hopsworks_accounts_sync` leaves for each new user, made directly: their OAuth
    account on the (fake) cluster, and our account row synced with its id and username (the
    username also on the assignment and the user). The real sync looks every account up by
    paging through the cluster's whole user list (Hopsworks has no email filter), so for n
    new users it reads about n^2 / 200 pages: minutes for 1,000 (--real-account-sync)."""
    from django.conf import settings

    fake, cluster = entry["hopsworks"], entry["cluster"]
    ids, remote_ids, usernames = [], [], []
    for user in entry["users"]:
        given, surname = user.name.split(None, 1)
        remote = fake.add_user(
            email=user.email,
            firstname=given,
            lastname=surname,
            subject=user.pk,
            max_num_projects=settings.HOPSWORKS_MAX_NUM_PROJECTS,
        )
        ids.append(user.pk)
        remote_ids.append(remote.id)
        usernames.append(remote.username)
    params = [ids, remote_ids, usernames, cluster.pk]
    sql_run(
        """
        UPDATE clusters_hopsworks_account a
        SET synced = a.desired, hopsworks_user_id = v.remote_id,
            hopsworks_username = v.username, attempts = a.attempts + 1,
            last_attempt_at = now(), last_error = '', leased_until = NULL
        FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS v(user_id, remote_id, username)
        WHERE a.user_id = v.user_id AND a.cluster_id = %s
        """,
        params,
    )
    sql_run(
        """
        UPDATE user_hopsworks_assignments a SET hopsworks_username = v.username
        FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS v(user_id, remote_id, username)
        WHERE a.user_id = v.user_id AND a.hopsworks_cluster_id = %s
        """,
        params,
    )
    sql_run(
        """
        UPDATE users u SET hopsworks_username = v.username
        FROM unnest(%s::text[], %s::text[]) AS v(user_id, username) WHERE u.id = v.user_id
        """,
        [ids, usernames],
    )
    return len(ids)


def allocations(namespaces: list[str], rng: random.Random) -> dict:
    """A day of OpenCost allocations: every namespace used something; system namespaces too."""
    day = {}
    for namespace in namespaces:
        gpu = rng.random() < 0.15
        day[namespace] = {
            "cpuCoreHours": Decimal(rng.randint(0, 4_800_000)).scaleb(-5),
            "gpuHours": Decimal(rng.randint(0, 800_000)).scaleb(-5) if gpu else Decimal(0),
            "pvByteHours": Decimal(rng.randint(0, 500) * 24 * 10**9),
        }
    for system in ("kube-system", "opencost", "__idle__"):
        day[system] = {"cpuCoreHours": Decimal(rng.randint(0, 9_600_000)).scaleb(-5)}
    return day


def empty_collection_tables() -> None:
    sql_run("TRUNCATE usage_daily, billing_usage_collection_run CASCADE")
    empty_job_tables()


def collection_run(url: str, world: dict, *, workers: int, fakes: FakeTimer) -> dict:
    from django.db import transaction

    from billing.models import UsageCollectionRun, UsageDaily
    from billing.tasks import collection_defer

    empty_collection_tables()
    start = time.perf_counter()
    with transaction.atomic():
        for entry in world["clusters"]:
            for day in world["days"]:
                collection_defer(cluster=entry["cluster"], day=day)
    defer_s = time.perf_counter() - start
    sql_run("VACUUM ANALYZE procrastinate_jobs")  # as in noop_run
    fakes.take()
    pool = Workers(url=url, queue=COLLECTION_QUEUE, count=workers, one_shot=True)
    with CpuMeter() as meter:
        pool.start()
        pool.wait(meter=meter)
    jobs = job_timings(COLLECTION_QUEUE, "billing.collect_cluster_day")
    figures = throughput_figures(jobs, pool, meter)
    rows = UsageDaily.objects.count()
    runs = UsageCollectionRun.objects.filter(status=UsageCollectionRun.Status.SUCCEEDED)
    figures.update(
        workers=workers,
        defer_s=defer_s,
        usage_rows=rows,
        runs_succeeded=runs.count(),
        rows_per_s=rows / figures["processing_s"] if figures["processing_s"] else None,
        fakes=fakes.take(),
    )
    return figures


class StepTimer:
    """Wall time of the collector's steps, in this process (see profile_collection)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._undo = []

    def wrap(self, owner, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                with self._lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + elapsed

        setattr(owner, attribute, timed)
        self._undo.append((owner, attribute, original))

    def uninstall(self) -> None:
        for owner, attribute, original in reversed(self._undo):
            setattr(owner, attribute, original)
        self._undo.clear()


def profile_collection(world: dict, *, fakes: FakeTimer) -> list[dict]:
    """One cluster-day at a time collected in this process (no job, no worker), by step."""
    from django.conf import settings

    from billing import collection
    from clusters.hopsworks import HopsworksClient

    entry = world["clusters"][0]
    profiles = []
    for day, debug in zip(world["profile_days"], PROFILE_RUNS, strict=True):
        timer = StepTimer()
        timer.wrap(collection, "fetch_day_allocations", "OpenCost: fetch_day_allocations")
        timer.wrap(HopsworksClient, "list_projects", "Hopsworks: list_projects")
        timer.wrap(collection, "attribute", "attribute (namespaces -> users)")
        timer.wrap(collection, "usage_upsert", "usage_upsert")
        fakes.take()
        settings.DEBUG = bool(debug)
        try:
            start = time.perf_counter()
            run = collection.usage_collect_day(cluster=entry["cluster"], day=day, actor="bench")
            total = time.perf_counter() - start
        finally:
            settings.DEBUG = False
            timer.uninstall()
        steps = dict(timer.seconds)
        steps["rest (run record, stale rows, commit)"] = total - sum(steps.values())
        if debug is None:
            continue  # the warm-up
        profiles.append(
            {
                "debug": debug,
                "day": day.isoformat(),
                "status": run.status,
                "rows": run.rows_written,
                "total_s": total,
                "steps_s": steps,
                "fakes": fakes.take(),
            }
        )
    return profiles


# 4. Collection at scale (--collection-scale) ---------------------------------------------


def scale_world(stack: contextlib.ExitStack, args, rng: random.Random) -> dict:
    """`--scale-clusters` clusters with their own fakes; `--scale-users` users spread evenly
    over them, built set-based (generate_series), each assigned to their cluster and owning
    one project whose namespace OpenCost reports for the day; one user in five prepaid.
    The fakes are served from a process of their own (`ScaleFakes`), or from this one's
    threads with --scale-fakes-in-process; the same data either way (the same seed)."""
    from django.conf import settings
    from django.db import connections

    from clusters.models import HopsworksCluster
    from tests.fakes.hopsworks import OAUTH_CLIENT_ID
    from tests.fakes.kubernetes import kubeconfig_for
    from tests.fakes.tls import make_test_ca

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
    ca = make_test_ca(tmp / "tls")
    settings.HOPSWORKS_OAUTH_CLIENT_ID = OAUTH_CLIENT_ID
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    per_cluster = args.scale_users // args.scale_clusters
    if args.scale_fakes_in_process:
        fakes = None
        served = _scale_fakes_up(stack, ca, args.scale_clusters, per_cluster, day, rng)
    else:
        connections.close_all()  # the fork must not share this process's connection
        fakes = ScaleFakes(
            ca, clusters=args.scale_clusters, per_cluster=per_cluster, day=day, seed=args.seed
        )
        stack.callback(fakes.stop)
        served = fakes.served
    started = time.perf_counter()
    clusters = []
    for c, fake in enumerate(served, start=1):
        cluster = HopsworksCluster.objects.create(
            name=f"scale-{c}",
            api_url=fake["api_url"],
            api_key=fake["api_key"],
            ca_bundle=ca.ca_path.read_text(),
            kubeconfig=kubeconfig_for(
                SimpleNamespace(url=fake["k8s_url"], token=fake["token"]), ca
            ),
            max_users=per_cluster,
        )
        clusters.append({"cluster": cluster})
    ids = [str(entry["cluster"].pk) for entry in clusters]
    # User i is on cluster (i - 1) % clusters + 1, the n-th of its cluster.
    params = {"n": per_cluster * len(clusters), "clusters": ids, "c": len(clusters)}
    user_id = "'auth0|scale' || lpad(i::text, 7, '0')"
    for statement in (
        f"""INSERT INTO users (id, email, name, password)
            SELECT {user_id}, 'scale' || lpad(i::text, 7, '0') || '@example.com',
                   'Scale User ' || i, '!'
            FROM generate_series(1, %(n)s) i""",
        f"""INSERT INTO user_hopsworks_assignments (user_id, hopsworks_cluster_id,
                hopsworks_username, assigned_at)
            SELECT {user_id}, (%(clusters)s::uuid[])[(i - 1) %% %(c)s + 1], 'scale' || i, now()
            FROM generate_series(1, %(n)s) i""",
        f"""INSERT INTO billing_account (user_id, mode, updated_at, stripe_subscription_id,
                subscription_status, started_subscription_id)
            SELECT {user_id}, CASE WHEN i %% 5 = 0 THEN 'prepaid' ELSE 'postpaid' END, now(),
                   '', '', ''
            FROM generate_series(1, %(n)s) i""",
        "ANALYZE users, user_hopsworks_assignments, billing_account",
    ):
        sql_run(statement, params)
    return {
        "clusters": clusters,
        "day": day,
        "per_cluster": per_cluster,
        "fakes": fakes,
        "timings": {
            "users_s": time.perf_counter() - started,
            "projects_and_allocations_s": served[0]["setup_s"],
        },
    }


def _scale_fakes_up(stack, ca, clusters: int, per_cluster: int, day, rng) -> list[dict]:
    """A fake Hopsworks and a fake Kubernetes API (OpenCost) per cluster, in this process,
    with the cluster's projects and the day's allocations; what a cluster row needs."""
    from tests.fakes.hopsworks import reset
    from tests.fakes.kubernetes import FakeKubernetes
    from tests.fakes.server import local_server

    started = time.perf_counter()
    served = []
    for c in range(1, clusters + 1):
        hopsworks = reset(stack.enter_context(local_server(ca)))
        k8s = FakeKubernetes.on(stack.enter_context(local_server(ca)))
        stack.callback(hopsworks.release)
        stack.callback(k8s.release)
        namespaces = []
        for n in range(per_cluster):
            i = n * clusters + c
            namespace = f"scale-ns-{i:07d}"
            # No Hopsworks user behind the creator: the fake would look each one up in a
            # list; the collector finds the owner by the creator's email instead.
            hopsworks.add_project(
                f"scale_project_{i:07d}", f"scale{i:07d}@example.com", namespace=namespace
            )
            namespaces.append(namespace)
        k8s.set_allocations(day, allocations(namespaces, rng))
        served.append(
            {
                "api_url": hopsworks.api_url,
                "api_key": hopsworks.api_key,
                "k8s_url": k8s.url,
                "token": k8s.token,
            }
        )
    for entry in served:
        entry["setup_s"] = time.perf_counter() - started
    return served


class ScaleFakes:
    """The clusters' fakes served from a forked process of their own, as the real servers
    are other processes (other machines): their handlers' CPU is counted there, and they
    do not take turns with the collector for this process's interpreter lock. The fakes'
    answering spans are measured there (FakeTimer) on the monotonic clock, which both
    processes share; driven over a pipe."""

    in_process = False

    def __init__(self, ca, *, clusters: int, per_cluster: int, day, seed: int):
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._pipe, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve_scale_fakes,
            args=(theirs, ca, clusters, per_cluster, day, seed),
            daemon=True,
        )
        self.process.start()
        ok, value = self._pipe.recv()
        if not ok:
            raise RuntimeError(f"the fakes' process failed to start: {value}")
        self.served = value

    def _call(self, name: str):
        self._pipe.send(name)
        ok, value = self._pipe.recv()
        if not ok:
            raise RuntimeError(f"the fakes' process failed to {name}: {value}")
        return value

    def collect(self) -> tuple[float, dict, float | None]:
        """(wall time some fake was answering, per fake, the fakes' process CPU since the
        last collect)."""
        return self._call("collect")

    def take(self) -> None:
        self._call("collect")

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError, EOFError, RuntimeError):
                self._call("stop")
        self.process.join(10)


def _serve_scale_fakes(pipe, ca, clusters: int, per_cluster: int, day, seed: int) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    timer = FakeTimer()
    timer.install()
    try:
        with contextlib.ExitStack() as stack:
            try:
                served = _scale_fakes_up(stack, ca, clusters, per_cluster, day, random.Random(seed))
            except Exception as error:  # reported to the parent
                pipe.send((False, repr(error)))
                return
            gc.collect()
            gc.freeze()  # their data lives to the end
            pipe.send((True, served))
            cpu = _own_cpu()
            while True:
                name = pipe.recv()
                if name == "stop":
                    pipe.send((True, None))
                    return
                answering = timer.answering_s()
                now = _own_cpu()
                pipe.send((True, (answering, timer.take(), now - cpu)))
                cpu = now
    finally:
        timer.uninstall()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wal_lsn() -> str:
    return sql_all("SELECT pg_current_wal_lsn()")[0][0]


def _wal_bytes_since(lsn: str) -> int:
    return int(sql_all("SELECT pg_current_wal_lsn() - %s::pg_lsn", [lsn])[0][0])


def scale_pass(
    world: dict, *, fakes, label: str, workers: int = 1, one_by_one: bool = False
) -> dict:
    """Every cluster's day collected in this process through the real collector in
    background mode (the job's and the command's deadlines). One at a time: through
    `usage_collect_each`, what `collect_usage` runs (the next cluster-day's answers asked
    for while one is written), or with `one_by_one` (or code before it) `usage_collect_day`
    per cluster-day, what one job runs. With `workers` > 1: that many threads at once,
    each with its own database connection, each taking one cluster-day at a time with
    `usage_collect_day`, as that many workers take one cluster-day job each (a job locks
    its cluster, so two clusters are what runs at once)."""
    from django.db import connection

    from billing import collection
    from clusters.hopsworks import HopsworksClient
    from plumbing import outbound

    timer = StepTimer()
    timer.wrap(collection, "fetch_day_allocations", "OpenCost: fetch_day_allocations")
    timer.wrap(HopsworksClient, "list_projects", "Hopsworks: list_projects")
    timer.wrap(collection, "attribute", "attribute (namespaces -> users)")
    timer.wrap(collection, "usage_upsert", "usage_upsert")
    fakes.take()
    clusters, errors = [], []
    waiting = list(world["clusters"])
    lock = threading.Lock()
    in_turn = getattr(collection, "usage_collect_each", None)
    pipelined = workers == 1 and not one_by_one and in_turn is not None

    def record(run, *, seconds: float, lsn: str) -> None:
        with lock:
            clusters.append(
                {
                    "cluster": run.cluster.name,
                    "status": run.status,
                    "error": run.error,
                    "rows": run.rows_written,
                    "seconds": seconds,
                    # The server's WAL: with workers, the others' writes too.
                    "wal_bytes": _wal_bytes_since(lsn),
                }
            )

    def work() -> None:
        try:
            with outbound.background_work():
                if pipelined:
                    # Per cluster-day: from the last one's end to its own (they overlap).
                    lsn, t0 = _wal_lsn(), time.perf_counter()
                    for collected in in_turn(
                        [(entry["cluster"], world["day"]) for entry in waiting], actor="bench"
                    ):
                        if collected.error is not None:
                            raise collected.error
                        record(collected.run, seconds=time.perf_counter() - t0, lsn=lsn)
                        lsn, t0 = _wal_lsn(), time.perf_counter()
                    return
                while True:
                    with lock:
                        if not waiting:
                            return
                        entry = waiting.pop(0)
                    lsn, t0 = _wal_lsn(), time.perf_counter()
                    run = collection.usage_collect_day(
                        cluster=entry["cluster"], day=world["day"], actor="bench"
                    )
                    record(run, seconds=time.perf_counter() - t0, lsn=lsn)
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            if workers > 1:
                connection.close()

    try:
        started, cpu, lsn = time.perf_counter(), time.process_time(), _wal_lsn()
        if workers == 1:
            work()
        else:
            threads = [threading.Thread(target=work) for _ in range(workers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
        wal = _wal_bytes_since(lsn)
    finally:
        timer.uninstall()
    if errors:
        raise errors[0]
    fake_s, answering, fakes_process_cpu = fakes.collect()
    # In this process, the fakes' handlers' CPU is inside ours: taken out.
    fake_cpu = sum(f["cpu_s"] for f in answering.values()) if fakes.in_process else 0.0
    return {
        "label": label,
        "workers": workers,
        "how": (
            "usage_collect_each (next cluster-day fetched while one is written)"
            if pipelined
            else "usage_collect_day per cluster-day"
        ),
        "total_s": total,
        # Wall time during which some fake was answering, and the rest.
        "fakes_s": fake_s,
        "ours_s": total - fake_s,
        "our_cpu_s": cpu - fake_cpu,
        "fakes_process_cpu_s": fakes_process_cpu,
        "wal_bytes": wal,
        "steps_s": dict(timer.seconds),
        "fakes": answering,
        "clusters": sorted(clusters, key=lambda c: c["cluster"]),
    }


def collection_scale(args) -> dict:
    from django.core.management import call_command

    from billing.models import CreditLedgerEntry, UsageDaily

    rng = random.Random(args.seed)
    started = time.perf_counter()
    env = environment()
    call_command("migrate", verbosity=0)
    timer = FakeTimer()
    if args.scale_fakes_in_process:
        timer.install()
    try:
        with contextlib.ExitStack() as stack:
            print("collection at scale: setting up ...", file=sys.stderr, flush=True)
            world = scale_world(stack, args, rng)
            fakes = world["fakes"] or timer
            if not args.scale_walk_fakes:
                # The fakes (when here) hold millions of objects (their projects, the
                # allocations they answer with) that live to the end: frozen out of the
                # cyclic collector, so that our collections walk what a worker's would.
                gc.collect()
                gc.freeze()
            sql_run("CHECKPOINT")
            print("collection at scale: collecting ...", file=sys.stderr, flush=True)
            passes = [
                scale_pass(
                    world,
                    fakes=fakes,
                    label=label,
                    workers=args.scale_workers,
                    one_by_one=args.scale_one_by_one,
                )
                for label in ("first collection", "rerun (nothing changes)")
            ]
    finally:
        timer.uninstall()
    return {
        "mode": "collection-scale",
        "parameters": {
            "users": world["per_cluster"] * args.scale_clusters,
            "clusters": args.scale_clusters,
            "workers": args.scale_workers,
            "fakes_in_process": args.scale_fakes_in_process,
            "fakes_heap_walked": args.scale_walk_fakes,
            "namespaces_per_cluster": world["per_cluster"],
            "day": world["day"].isoformat(),
            "seed": args.seed,
        },
        "environment": env,
        "setup": world["timings"],
        "passes": passes,
        "usage_rows": UsageDaily.objects.count(),
        "ledger_entries": CreditLedgerEntry.objects.count(),
        "total_s": time.perf_counter() - started,
        "load_average_1m_end": round(os.getloadavg()[0], 2),
    }


def scale_report(figures: dict) -> str:
    p, env = figures["parameters"], figures["environment"]
    lines = [
        "usage collection at scale (one day, in this process)",
        "=" * 78,
        f"when            {env['date_utc']}  (load {env['load_average_1m']} at start, "
        f"{figures['load_average_1m_end']} at end)",
        f"project         commit {env['commit']}",
        f"sizes           {p['users']:,} users on {p['clusters']} clusters, "
        f"{p['namespaces_per_cluster']:,} namespaces each, day {p['day']}",
        "fakes           "
        + (
            "in this process (--scale-fakes-in-process), their heap "
            + (
                "walked by its garbage collector (--scale-walk-fakes)"
                if p.get("fakes_heap_walked")
                else "frozen out of its garbage collector"
            )
            if p.get("fakes_in_process", True)
            else "in a process of their own"
        ),
        f"setup           users {figures['setup']['users_s']:.1f} s (set-based), fake projects "
        f"and allocations {figures['setup']['projects_and_allocations_s']:.1f} s",
        f"written         {figures['usage_rows']:,} usage rows, "
        f"{figures['ledger_entries']:,} ledger entries",
        "",
    ]
    for run in figures["passes"]:
        lines += [
            f"{run['label']} ({run['workers']} at once, {run.get('how', '')}): "
            f"{run['total_s']:.1f} s in all; "
            f"a fake answering {run['fakes_s']:.1f} s, none (client, attribution, database) "
            f"{run['ours_s']:.1f} s ({run['ours_s'] / run['total_s']:.0%}); our CPU "
            f"{run['our_cpu_s']:.1f} s; WAL {run['wal_bytes'] / 2**20:.1f} MB"
            + (
                f"; the fakes' process CPU {run['fakes_process_cpu_s']:.1f} s"
                if run.get("fakes_process_cpu_s") is not None
                else ""
            ),
            # Their CPU too: in this process a fake's answer also waits for the GIL while
            # our threads hold it, and that wait is inside "a fake answering".
            "  fakes: "
            + ", ".join(
                f"{name} {f['requests']} requests {f['wall_s']:.1f} s (CPU {f['cpu_s']:.1f} s)"
                for name, f in run["fakes"].items()
            ),
            "  steps (wall, all clusters): "
            + ", ".join(f"{name} {s:.1f} s" for name, s in run["steps_s"].items()),
        ]
        for c in run["clusters"]:
            lines.append(
                f"  {c['cluster']:<10} {c['status']:<10} {c['rows']:>7,} rows "
                f"{c['seconds']:>6.1f} s   WAL {c['wal_bytes'] / 2**20:>7.1f} MB"
                + (f"   {c['error'][:80]}" if c["error"] else "")
            )
    return "\n".join(lines)


# 3. Delay from defer to start ------------------------------------------------------------


# A sample not started after three polling intervals is "late": what the worker and the job
# went through is kept in the figures, and the wait goes on until STUCK_AFTER.
LATE_AFTER = 3 * POLLING_INTERVAL
STUCK_AFTER = 120.0


def wait_for_job(job_id: int, *, timeout: float) -> str:
    """The job's status once it has ended, or when `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        (status,) = sql_all("SELECT status FROM procrastinate_jobs WHERE id = %s", [job_id])[0]
        if status in ("succeeded", "failed", "cancelled", "aborted"):
            return status
        if time.monotonic() > deadline:
            return status
        time.sleep(0.01)


def job_history(job_id: int, pool: Workers) -> dict:
    events = sql_all(
        "SELECT type::text, at FROM procrastinate_events WHERE job_id = %s ORDER BY id", [job_id]
    )
    return {
        "job_id": job_id,
        "events": [(kind, at.isoformat()) for kind, at in events],
        "workers": [list(row) for row in sql_all("SELECT * FROM procrastinate_workers")],
        "worker_log_tail": pool.log_tail(),
    }


def latency_run(url: str, *, samples: int, listen: bool, rng: random.Random) -> dict:
    """One worker waiting on an empty queue; jobs deferred one at a time, each committed on
    its own, the next one only once the last has finished, after a random pause (so jobs
    arrive at any point of the worker's polling cycle)."""
    from django.db import transaction

    from plumbing.jobs import ping

    empty_job_tables()
    deferrer = ping.configure(queue=LATENCY_QUEUE)
    pool = Workers(url=url, queue=LATENCY_QUEUE, count=1, one_shot=False, listen=listen)
    pool.start()
    ids, late, stuck = [], [], None
    try:
        with transaction.atomic():
            warm_up = deferrer.defer()
        if wait_for_job(warm_up, timeout=120) != "succeeded":  # the worker is up
            raise RuntimeError(f"the warm-up job: {job_history(warm_up, pool)}")
        time.sleep(1.0)  # and its LISTEN connection is open by now
        pause = (0.02, 0.2) if listen else (0.0, POLLING_INTERVAL)
        for _ in range(samples):
            time.sleep(rng.uniform(*pause))
            with transaction.atomic():
                job_id = deferrer.defer()
            status = wait_for_job(job_id, timeout=LATE_AFTER)
            if status != "succeeded":
                late.append(job_history(job_id, pool))
                status = wait_for_job(job_id, timeout=STUCK_AFTER)
            if status != "succeeded":
                stuck = job_history(job_id, pool)
                break
            ids.append(job_id)
    finally:
        pool.stop()
    by_id = {j["id"]: j for j in job_timings(LATENCY_QUEUE, "plumbing.ping")}
    to_start = [(by_id[i]["started"] - by_id[i]["deferred"]) * 1000 for i in ids]
    to_end = [(by_id[i]["finished"] - by_id[i]["deferred"]) * 1000 for i in ids]
    return {
        "listen_notify": listen,
        "samples": len(ids),
        "to_start_ms": _summary(to_start) if ids else None,
        "to_finish_ms": _summary(to_end) if ids else None,
        "late": late,
        "stuck": stuck,
    }


def _summary(values: list[float]) -> dict:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "p95": _p95(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


# Environment -----------------------------------------------------------------------------


def environment() -> dict:
    from importlib.metadata import version

    from django import get_version

    pg_version, shared_buffers, sync_commit = sql_all(
        "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
        "current_setting('synchronous_commit')"
    )[0]
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    commit = scratch.measured_commit("billing", "clusters", "plumbing")
    return {
        "commit": commit,
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gb": round(mem_kb / 2**20, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "django": get_version(),
        "procrastinate": version("procrastinate"),
        "psycopg": psycopg.__version__,
        "postgresql": pg_version,
        "shared_buffers": shared_buffers,
        "synchronous_commit": sync_commit,
    }


# Report ----------------------------------------------------------------------------------


def _rate(value) -> str:
    return f"{value:,.1f}" if value is not None else "-"


def _throughput_lines(title: str, runs: list[dict], unit: str, startup_cpu: float) -> list[str]:
    lines = [
        title,
        f"  {'workers':<8}{'jobs':>6}{'start-up':>10}{'processing':>12}{'shut-down':>11}"
        f"{'wall':>8}{unit + '/s':>10}{'steady':>9}{'at once':>9}{'job median':>12}"
        f"{'job p95':>9}",
    ]
    for r in runs:
        lines.append(
            f"  {r['workers']:<8}{r['jobs']:>6,}{r['startup_s']:>9.2f}s{r['processing_s']:>11.2f}s"
            f"{r['shutdown_s']:>10.2f}s{r['wall_s']:>7.2f}s{_rate(r['jobs_per_s']):>10}"
            f"{_rate(r['steady_jobs_per_s']):>9}{r['jobs_running_at_once']:>9.2f}"
            f"{r['job_ms']['median']:>10.1f}ms{r['job_ms']['p95']:>7.1f}ms"
        )
    if len(runs) > 1 and runs[0]["jobs_per_s"] and runs[-1]["jobs_per_s"]:
        gain = runs[-1]["jobs_per_s"] / runs[0]["jobs_per_s"]
        lines.append(f"  {runs[-1]['workers']} workers / 1 worker: x{gain:.2f}")
    lines.append(
        "  CPU seconds during the run: workers / PostgreSQL (bench db) / this process / "
        "other programs; machine busy; CPU ms per job (workers less their start-up, PostgreSQL)"
    )
    for r in runs:
        c = r["cpu"]
        lines.append(
            f"    {r['workers']} worker(s): {c['workers_s']:6.2f} / {c['postgres_s']:6.2f} / "
            f"{c['this_process_s']:6.2f} / {c['other_s']:6.2f}   busy {c['machine_busy_s']:.2f}"
            f" of {c['machine_cpus'] * c['wall_s']:.2f} s ({c['machine_busy_s'] / c['wall_s']:.2f}"
            f" of {c['machine_cpus']:.0f} CPUs)   per job "
            f"{(c['workers_s'] - r['workers'] * startup_cpu) / r['jobs'] * 1000:.1f}"
            f" + {c['postgres_s'] / r['jobs'] * 1000:.1f} ms"
        )
    return lines


def report(figures: dict) -> str:
    p, env = figures["parameters"], figures["environment"]
    noop, coll, world = figures["noop"], figures["collection"], figures["world"]
    lines = [
        "jobs benchmark (Procrastinate)",
        "=" * 78,
        f"when            {env['date_utc']}  (load {env['load_average_1m']} at start, "
        f"{figures['load_average_1m_end']} at end)",
        f"machine         {env['cpus']} CPUs ({env['cpus_usable']} usable), {env['cpu_model']},"
        f" {env['memory_gb']} GB RAM",
        f"software        PostgreSQL {env['postgresql']} (shared_buffers {env['shared_buffers']},"
        f" synchronous_commit {env['synchronous_commit']}), Python {env['python']}, "
        f"Django {env['django']},",
        f"                Procrastinate {env['procrastinate']}, psycopg {env['psycopg']}",
        f"project         commit {env['commit']}",
        f"sizes           {p['noop_jobs']:,} no-op jobs; {p['clusters']} clusters x {p['days']}"
        f" days, {p['namespaces']:,} namespaces (users) per cluster; {p['samples']} + "
        f"{p['poll_samples']} delay samples",
        f"total run       {figures['total_s']:.0f} s",
        "",
        f"a one-shot worker on an empty queue (start, connect, one fetch, stop): "
        f"{noop['empty_queue']['wall_s']:.2f} s, {noop['empty_queue']['cpu_s']:.2f} s CPU",
        "",
    ]
    first = noop["runs"][0]
    lines += _throughput_lines(
        f"1. no-op jobs (plumbing.ping), {p['noop_jobs']:,} queued in one transaction "
        f"({first['defer_s']:.2f} s, {first['defer_jobs_per_s']:,.0f} defers/s)",
        noop["runs"],
        "jobs",
        noop["empty_queue"]["cpu_s"],
    )
    t = world["timings"]
    lines += [
        "",
        f"2. usage collection (billing.collect_cluster_day): {p['clusters']} clusters x "
        f"{p['days']} days = {p['clusters'] * p['days']} jobs, {p['namespaces']:,} namespaces each",
        f"  setup: clusters+users {t['clusters_and_users_s']:.1f} s, assignment_create "
        f"{t['assignment_create_s']:.1f} s, {world['accounts']:,} Hopsworks accounts "
        f"{'by hopsworks_accounts_sync' if world['real_account_sync'] else 'put in place'} "
        f"{t['accounts_s']:.1f} s, projects+allocations {t['projects_and_allocations_s']:.1f} s",
    ]
    lines += _throughput_lines("", coll["runs"], "jobs", noop["empty_queue"]["cpu_s"])[1:]
    for r in coll["runs"]:
        fakes = ", ".join(
            f"{name} {f['requests']} requests {f['wall_s']:.2f} s wall / {f['cpu_s']:.2f} s CPU"
            for name, f in sorted(r["fakes"].items())
        )
        lines.append(
            f"  {r['workers']} worker(s): {r['usage_rows']:,} usage rows "
            f"({_rate(r['rows_per_s'])} rows/s), {r['runs_succeeded']} runs succeeded, "
            f"{r['retried']} retried; fakes answering: {fakes}"
        )
    profiles = coll["profile"]
    modes = [[pr for pr in profiles if not pr["debug"]], [pr for pr in profiles if pr["debug"]]]
    lines += [
        "",
        f"  one cluster-day in this process, by step (seconds; median of {len(modes[0])} runs "
        "each, alternating):",
        f"    {'step':<40}{'DEBUG off':>12}{'DEBUG on':>12}",
    ]

    def median_of(runs, value) -> str:
        return f"{statistics.median(value(pr) for pr in runs):>12.3f}"

    for label in profiles[0]["steps_s"]:
        cells = "".join(median_of(runs, lambda pr, k=label: pr["steps_s"][k]) for runs in modes)
        lines.append(f"    {label:<40}{cells}")
    cells = "".join(median_of(runs, lambda pr: pr["total_s"]) for runs in modes)
    lines.append(f"    {'total':<40}{cells}")
    for name in sorted(profiles[0]["fakes"]):
        cells = "".join(
            median_of(runs, lambda pr, n=name: pr["fakes"].get(n, {}).get("cpu_s", 0.0))
            for runs in modes
        )
        lines.append(f"    {'  of which the fake ' + name + ' (its CPU)':<40}{cells}")
    failed = [pr["day"] for pr in profiles if pr["status"] != "succeeded"]
    lines.append(
        f"    {len(profiles)} runs of {profiles[0]['rows']:,} rows; "
        + (f"FAILED on {', '.join(failed)}" if failed else "all succeeded")
    )
    lines += ["", "3. delay from defer (committed) to start, one worker waiting (ms)"]
    lines.append(
        f"  {'mode':<28}{'samples':>8}{'min':>9}{'median':>9}{'p95':>9}{'max':>9}"
        f"{'to finish (median)':>20}"
    )
    for r in figures["latency"]:
        mode = "LISTEN/NOTIFY" if r["listen_notify"] else f"polling ({POLLING_INTERVAL:.0f} s)"
        s = r["to_start_ms"]
        if s is None:
            lines.append(f"  {mode:<28}{0:>8}")
        else:
            lines.append(
                f"  {mode:<28}{r['samples']:>8}{s['min']:>9.1f}{s['median']:>9.1f}"
                f"{s['p95']:>9.1f}{s['max']:>9.1f}{r['to_finish_ms']['median']:>20.1f}"
            )
        for incident in r["late"]:
            lines.append(
                f"    late: job {incident['job_id']} not done after {LATE_AFTER:.0f} s; its "
                f"events then: {incident['events']} (worker log in the JSON)"
            )
        if r["stuck"]:
            lines.append(
                f"    STUCK: job {r['stuck']['job_id']} not done after {STUCK_AFTER:.0f} s more; "
                "the run stopped there (events and worker log in the JSON)"
            )
    return "\n".join(lines)


# Main ------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.collection_scale:
        return scratch.run_in_scratch(
            args, setup=setup_django, benchmark=collection_scale, report=scale_report
        )
    return scratch.run_in_scratch(
        args, setup=setup_django, benchmark=benchmark, report=report, cleanup=Workers.kill_all
    )


def benchmark(args) -> dict:
    from django.core.management import call_command

    rng = random.Random(args.seed)
    started = time.perf_counter()
    env = environment()
    call_command("migrate", verbosity=0)
    url = args.database_url

    print("no-op jobs ...", file=sys.stderr, flush=True)
    empty_queue = empty_queue_run(url)
    noop = [noop_run(url, jobs=args.noop_jobs, workers=n) for n in (1, 2)]

    fakes = FakeTimer()
    fakes.install()
    try:
        with contextlib.ExitStack() as stack:
            print("collection: setting up the clusters ...", file=sys.stderr, flush=True)
            world = build_world(stack, args, rng)
            print("collection: workers ...", file=sys.stderr, flush=True)
            collection = [collection_run(url, world, workers=n, fakes=fakes) for n in (1, 2)]
            profile = profile_collection(world, fakes=fakes)
    finally:
        fakes.uninstall()

    print("delay from defer to start ...", file=sys.stderr, flush=True)
    latency = [
        latency_run(url, samples=args.samples, listen=True, rng=rng),
        latency_run(url, samples=args.poll_samples, listen=False, rng=rng),
    ]
    return {
        "parameters": {
            "noop_jobs": args.noop_jobs,
            "clusters": args.clusters,
            "namespaces": args.namespaces,
            "days": args.days,
            "samples": args.samples,
            "poll_samples": args.poll_samples,
            "real_account_sync": args.real_account_sync,
            "seed": args.seed,
        },
        "environment": env,
        "noop": {"empty_queue": empty_queue, "runs": noop},
        "world": {
            "timings": world["timings"],
            "accounts": world["accounts"],
            "real_account_sync": world["real_account_sync"],
            "days": [d.isoformat() for d in world["days"]],
        },
        "collection": {"runs": collection, "profile": profile},
        "latency": latency,
        "total_s": time.perf_counter() - started,
        "load_average_1m_end": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    sys.exit(main())
