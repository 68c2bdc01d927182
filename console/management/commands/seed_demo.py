from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from accounts import demo as accounts_demo
from billing import demo as billing_demo
from clusters import demo as clusters_demo
from plumbing.database import is_local_host

# Each app seeds its own tables, bottom up; the console, on top, runs them in order.
DEMO_MODULES = (accounts_demo, clusters_demo, billing_demo)


def not_the_demo_database(settings_dict: dict) -> str | None:
    """Why this database may not get demo data, or None if it is `make run`'s own.

    Two things must hold, each on its own enough to keep production safe: `make run` said
    so (DEMO_DATABASE=1, which it sets only with the DATABASE_URL it chose itself), and the
    database is on this machine (PostgreSQL on a socket or loopback).
    A production .env can carry neither by accident: its DATABASE_URL names a remote host,
    and nothing but `make run` sets DEMO_DATABASE.
    """
    if not settings.DEMO_DATABASE:
        return (
            "this is not the demo database: DEMO_DATABASE is not set, and only `make run` "
            "sets it, for the local database it made. Demo data (an admin with a published "
            "password) does not belong anywhere else; run `make run` instead."
        )
    host = settings_dict.get("HOST") or ""
    if is_local_host(host):
        return None
    return (
        f"this is not the demo database: it is on {host}, not this "
        "machine, although DEMO_DATABASE is set. Demo data goes only into a local database."
    )


class Command(BaseCommand):
    help = (
        "Load demo data for a local run (idempotent: running it again changes nothing). "
        "Only into the local database `make run` made for the demo (DEMO_DATABASE=1); "
        "refuses to run with DEBUG off unless --force is given."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--force",
            action="store_true",
            help="Run even though DEBUG is off (never on a database other than the demo one).",
        )

    def handle(self, *args, force=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError(
                "DEBUG is off: this looks like a real deployment, and demo data (with a "
                "known admin password) does not belong there. Use --force if you mean it."
            )
        problem = not_the_demo_database(connection.settings_dict)
        if problem:
            raise CommandError(f"Refusing to seed demo data: {problem}")
        for module in DEMO_MODULES:
            for line in module.seed():
                self.stdout.write(line)
        login = f"{accounts_demo.DEMO_ADMIN_EMAIL} / {accounts_demo.DEMO_ADMIN_PASSWORD}"
        self.stdout.write(
            self.style.SUCCESS(f"Admin login: {login} at http://127.0.0.1:8000/admin/")
        )
