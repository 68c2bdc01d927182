from django.core.management.base import BaseCommand, CommandError

from plumbing.encryption import SecretDecryptionError, rotate_all_secrets


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the newest key in FIELD_ENCRYPTION_KEYS. Put "
        "the new key first, run this, then remove the old key."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--encrypt-plaintext",
            action="store_true",
            help="Also encrypt values that were stored in plaintext (a database adopted "
            "from the old system). Without it such values are reported and left alone.",
        )

    def handle(self, *args, encrypt_plaintext=False, **options):
        try:
            report = rotate_all_secrets(encrypt_plaintext=encrypt_plaintext)
        except SecretDecryptionError as error:
            raise CommandError(f"Nothing was changed. {error}") from None
        for line in report.lines():
            self.stdout.write(line)
        if report.plaintext and not encrypt_plaintext:
            raise CommandError(
                f"{report.plaintext} value(s) are stored in plaintext; rerun with "
                "--encrypt-plaintext to encrypt them."
            )
        self.stdout.write(self.style.SUCCESS(f"{report.rotated} secret(s) re-encrypted."))
