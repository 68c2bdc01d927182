"""`python manage.py worker`: runs the jobs of every app, and outlives the database dropping
its connections (plumbing/worker.py). Its options are the ones of `procrastinate worker` that a
deployment sets (`--help`); that command's environment variables are not read."""

import asyncio

import psycopg
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError, connection
from procrastinate.contrib.django import app, django_connector
from procrastinate.jobs import DeleteJobCondition

from plumbing.worker import run_worker


def queue_names(value: str) -> list[str] | None:
    return [name for name in (part.strip() for part in value.split(",")) if name] or None


class Command(BaseCommand):
    help = (
        "Run a worker for the background jobs (all queues unless --queues); it starts again "
        "by itself when the database drops its connections. Ctrl-C or SIGTERM stops it "
        "after its running jobs."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", "-n", help="the worker's name, shown in the job list")
        parser.add_argument(
            "--queues", "-q", type=queue_names, help="comma-separated queues (default: all)"
        )
        parser.add_argument("--concurrency", "-c", type=int, help="jobs run at once (default: 1)")
        parser.add_argument(
            "--one-shot",
            action="store_true",
            help="stop when no job is left instead of waiting for new ones",
        )
        parser.add_argument(
            "--no-listen-notify",
            action="store_true",
            help="poll only, without LISTEN/NOTIFY (behind a transaction pooler)",
        )
        parser.add_argument(
            "--fetch-job-polling-interval",
            type=float,
            help="seconds between polls for new jobs (default: 5)",
        )
        parser.add_argument(
            "--shutdown-graceful-timeout",
            type=float,
            help="seconds a stop waits for running jobs before aborting them (default: no limit)",
        )
        parser.add_argument(
            "--delete-jobs",
            choices=[condition.value for condition in DeleteJobCondition],
            help="delete jobs when they end (default: never)",
        )

    def handle(self, *args, **options):
        worker_options = {
            key: options[key]
            for key in (
                "name",
                "queues",
                "concurrency",
                "fetch_job_polling_interval",
                "shutdown_graceful_timeout",
                "delete_jobs",
            )
            if options[key] is not None
        }
        if "delete_jobs" in worker_options:
            worker_options["delete_jobs"] = DeleteJobCondition(worker_options["delete_jobs"])
        worker_options["wait"] = not options["one_shot"]
        worker_options["listen_notify"] = not options["no_listen_notify"]
        # As `manage.py procrastinate worker` does: the Django connector cannot LISTEN, so
        # the worker gets a psycopg one on the same database.
        connector = app.connector
        if isinstance(connector, django_connector.DjangoConnector):
            connector = connector.get_worker_connector()
        # Once started, the worker outlives the database going away; a database it cannot
        # reach at all at the start is a setting to fix, said at once (the connection pool
        # alone would wait 30 s, then say only that it is incomplete).
        try:
            connection.ensure_connection()
        except OperationalError as exc:
            raise CommandError(unreachable(exc)) from exc
        finally:
            connection.close()
        with app.replace_connector(connector) as worker_app:
            asyncio.run(self._run(worker_app, worker_options))

    @staticmethod
    async def _run(worker_app, worker_options):
        try:
            await worker_app.open_async()
        except psycopg.OperationalError as exc:  # the pool's timeout among them
            raise CommandError(unreachable(exc)) from exc
        try:
            await run_worker(worker_app, **worker_options)
        finally:
            await worker_app.close_async()


def unreachable(exc: Exception) -> str:
    reason = " ".join(str(exc).split())[:500]
    return (
        f"The worker cannot reach the database ({reason}). Check DATABASE_URL and that "
        "PostgreSQL is up."
    )
