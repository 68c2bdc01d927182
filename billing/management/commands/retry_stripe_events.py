from django.core.management.base import BaseCommand, CommandError

from billing.stripe_events import (
    RETRY_BATCH,
    RETRY_MAX_ATTEMPTS,
    stripe_events_retry,
    stripe_events_worn_out,
)
from plumbing import outbound


class Command(BaseCommand):
    help = (
        "Process again the stored Stripe events that failed (or were never processed), the "
        "one whose last attempt is oldest first. Events that failed too often, and events "
        "about customers we do not know (unmatched), are left to an operator: select them "
        "in the admin and use 'Process again'."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--limit", type=int, default=RETRY_BATCH, help="At most this many events a run."
        )
        parser.add_argument(
            "--max-attempts",
            type=int,
            default=RETRY_MAX_ATTEMPTS,
            help="Leave events that failed this many times to an operator.",
        )

    def handle(self, *args, limit, max_attempts, **options):
        with outbound.background_work():  # cron: the longer deadline and retries per call
            events = stripe_events_retry(limit=limit, max_attempts=max_attempts)
        failed = [e for e in events if e.status == e.Status.FAILED]
        self.stdout.write(f"{len(events) - len(failed)} event(s) processed, {len(failed)} failed.")
        for event in failed:
            self.stdout.write(self.style.WARNING(f"{event.id} {event.type}: {event.error}"))
        worn_out = stripe_events_worn_out(max_attempts=max_attempts).count()
        if worn_out:
            self.stdout.write(
                self.style.WARNING(
                    f"{worn_out} event(s) failed {max_attempts} times or more and are no "
                    "longer retried: see the Stripe events admin."
                )
            )
        if failed:
            raise CommandError(f"{len(failed)} event(s) still fail.")
