from django.core.management.base import BaseCommand, CommandError

from billing.credits import credits_check_balances


class Command(BaseCommand):
    help = (
        "Recompute every user_credits row from the credit ledger and report differences. "
        "With --fix, write the ledger's figures back. Exits non-zero on unfixed drift."
    )

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="Repair the summaries.")

    def handle(self, *args, fix=False, **options):
        drifts = credits_check_balances(fix=fix)
        if not drifts:
            self.stdout.write(self.style.SUCCESS("Every credit balance matches the ledger."))
            return
        for drift in drifts:
            purchased, used = drift.recorded[:2]
            ledger_purchased, ledger_used = drift.from_ledger[:2]
            self.stdout.write(
                f"{drift.user_id}: recorded purchased {purchased} used {used}; ledger says "
                f"purchased {ledger_purchased} used {ledger_used}"
            )
        if not fix:
            raise CommandError(f"{len(drifts)} balance(s) differ; run again with --fix.")
        self.stdout.write(self.style.SUCCESS(f"{len(drifts)} balance(s) repaired."))
