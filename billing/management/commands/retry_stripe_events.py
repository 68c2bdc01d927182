from django.core.management.base import BaseCommand, CommandError

from billing.stripe_events import stripe_events_retry


class Command(BaseCommand):
    help = "Process again every stored Stripe event that failed (or was never processed)."

    def handle(self, *args, **options):
        events = stripe_events_retry()
        failed = [e for e in events if e.status == e.Status.FAILED]
        self.stdout.write(f"{len(events) - len(failed)} event(s) processed, {len(failed)} failed.")
        for event in failed:
            self.stdout.write(self.style.WARNING(f"{event.id} {event.type}: {event.error}"))
        if failed:
            raise CommandError(f"{len(failed)} event(s) still fail.")
