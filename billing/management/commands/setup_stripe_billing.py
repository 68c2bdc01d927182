from django.core.management.base import BaseCommand, CommandError

from billing import stripe_gateway as gateway
from billing.catalog import catalog_setup
from plumbing import outbound


class Command(BaseCommand):
    help = (
        "Create or find (idempotently) the Stripe Billing Meters, products and metered prices "
        "for the rate card: one meter per resource, counting cents of usage cost."
    )

    def handle(self, *args, **options):
        try:
            with outbound.background_work():  # not a web request: retries, longer deadline
                entries = catalog_setup()
        except gateway.StripeGatewayError as error:
            raise CommandError(str(error)) from None
        for entry in entries:
            self.stdout.write(
                f"{entry.resource}: meter {entry.meter_id} ({entry.event_name}), "
                f"product {entry.product_id}, price {entry.price_id}"
            )
        self.stdout.write(self.style.SUCCESS("Stripe billing catalog is in place."))
