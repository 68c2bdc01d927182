from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.database_check import diagnose


class Command(BaseCommand):
    help = (
        "Connect to the configured database (DATABASE_URL) and explain in plain words what "
        "kind of connection it is and, if it fails, why."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--url",
            help="Check this database URL instead of the configured DATABASE_URL "
            "(for trying a new URL before switching to it).",
        )

    def handle(self, *args, url=None, **options):
        diagnosis = diagnose(url or settings.DATABASE_URL)
        for fact in diagnosis.facts:
            self.stdout.write(fact)
        if diagnosis.ok:
            for advice in diagnosis.advice:
                self.stdout.write(self.style.WARNING(f"Note: {advice}"))
            self.stdout.write(self.style.SUCCESS("Database connection OK."))
            return
        lines = [diagnosis.problem, *(f"- {advice}" for advice in diagnosis.advice)]
        raise CommandError("\n".join(lines))
