import datetime as dt

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.api_keys import SCOPE_NAMES, api_key_create


class Command(BaseCommand):
    help = (
        "Create an API key for a script and print it once (only its hash is kept). "
        f"Scopes: {', '.join(SCOPE_NAMES)}."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="What uses the key.")
        parser.add_argument("--scopes", required=True, help="Comma-separated scopes.")
        parser.add_argument("--expires-in-days", type=int, help="Expire after so many days.")

    def handle(self, *args, name, scopes, expires_in_days=None, **options):
        expires = None
        if expires_in_days is not None:
            if expires_in_days <= 0:
                raise CommandError("--expires-in-days must be a positive number of days.")
            expires = timezone.now() + dt.timedelta(days=expires_in_days)
        wanted = [scope.strip() for scope in scopes.split(",") if scope.strip()]
        try:
            api_key, key = api_key_create(
                name=name, scopes=wanted, actor="create_api_key", expires_at=expires
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        self.stdout.write(
            f"Created API key {api_key.prefix} ({api_key.name}), scopes: "
            f"{', '.join(api_key.scopes)}."
        )
        self.stdout.write("Send it as the header:  Authorization: Api-Key <key>")
        self.stdout.write(self.style.WARNING("The key (shown this once, store it safely):"))
        self.stdout.write(key)
