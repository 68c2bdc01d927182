from django.core.management.base import BaseCommand, CommandError

from billing import stripe_gateway as gateway
from billing.stripe_reporting import usage_report_to_stripe
from plumbing import outbound


class Command(BaseCommand):
    help = (
        "Send postpaid usage to Stripe as meter events (v2 meter event stream), in batches: "
        "for every month, only the "
        "difference between our figures and what Stripe has accepted (negative for a "
        "correction); for a month Stripe no longer bills (invoice finalized, before the "
        "subscription, too old) as an invoice item on the next invoice. Safe to rerun and "
        "to run twice at once. Exits non-zero on errors."
    )

    def handle(self, *args, **options):
        if not gateway.is_configured():
            raise CommandError("Stripe is not configured (STRIPE_SECRET_KEY is empty).")
        with outbound.background_work():  # cron: the longer deadline and retries per call
            run = usage_report_to_stripe()
        self.stdout.write(
            f"{run.sent_events} meter event(s) sent, {run.sent_cents} cents in all "
            f"({run.confirmed_events} found already at Stripe); {run.adjustments} invoice "
            f"item(s) for closed months, {run.adjusted_cents} cents; "
            f"{run.skipped_locked} user-month(s) left to a concurrent run; "
            f"{run.batches} batch(es), {run.stream_requests} meter event stream request(s)."
        )
        for error in run.errors:
            self.stdout.write(self.style.WARNING(error))
        if run.errors:
            raise CommandError(f"{len(run.errors)} problem(s); the next run retries them.")
