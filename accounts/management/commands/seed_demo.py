from importlib import import_module

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD


def demo_modules():
    """Each of our apps may have a `demo` module with `seed()`, run in app order
    (accounts, clusters, billing), so accounts needs to import nothing of the others."""
    for config in apps.get_app_configs():
        if not config.path.startswith(str(settings.BASE_DIR)):
            continue
        try:
            yield import_module(f"{config.name}.demo")
        except ModuleNotFoundError as error:
            if error.name != f"{config.name}.demo":
                raise


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
        for module in demo_modules():
            for line in module.seed():
                self.stdout.write(line)
        self.stdout.write(
            self.style.SUCCESS(
                f"Admin login: {DEMO_ADMIN_EMAIL} / {DEMO_ADMIN_PASSWORD} "
                "at http://127.0.0.1:8000/admin/"
            )
        )
