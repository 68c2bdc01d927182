from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts import demo as accounts_demo
from billing import demo as billing_demo
from clusters import demo as clusters_demo

# Each app seeds its own tables, bottom up; the console, on top, runs them in order.
DEMO_MODULES = (accounts_demo, clusters_demo, billing_demo)


class Command(BaseCommand):
    help = (
        "Load demo data for a local run (idempotent: running it again changes nothing). "
        "Refuses to run with DEBUG off unless --force is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Run even though DEBUG is off.")

    def handle(self, *args, force=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError(
                "DEBUG is off: this looks like a real deployment, and demo data (with a "
                "known admin password) does not belong there. Use --force if you mean it."
            )
        for module in DEMO_MODULES:
            for line in module.seed():
                self.stdout.write(line)
        login = f"{accounts_demo.DEMO_ADMIN_EMAIL} / {accounts_demo.DEMO_ADMIN_PASSWORD}"
        self.stdout.write(
            self.style.SUCCESS(f"Admin login: {login} at http://127.0.0.1:8000/admin/")
        )
