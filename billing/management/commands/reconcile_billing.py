from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.reconciliation import (
    RepairRefused,
    billing_reconcile,
    default_months,
    parse_month,
    reconciliation_record,
    reconciliation_resend,
    users_named,
)
from plumbing import outbound

COLUMNS = ("user", "month", "resource", "ours", "reported", "pending", "stripe", "invoiced")


class Command(BaseCommand):
    help = (
        "For each user and month: our usage, what we reported, what Stripe's meters counted "
        "and what its invoice charged, side by side (and prepaid users' credits against the "
        "ledger), with every difference and its cause. Exits 1 on any unexplained difference "
        "(or a Stripe error), 2 on bad input. Default months: the previous and the current."
    )

    def add_arguments(self, parser):
        parser.add_argument("--month", action="append", default=[], help="YYYY-MM (repeatable).")
        parser.add_argument(
            "--user", action="append", default=[], help="A user's id or email (repeatable)."
        )
        parser.add_argument(
            "--repair",
            action="store_true",
            help="Resend what Stripe's meter lacks (or has twice) for open months; "
            "closed months only get a proposal.",
        )

    def handle(self, *args, month=(), user=(), repair=False, **options):
        try:
            months = [parse_month(m) for m in month] or default_months(timezone.now().date())
            users = users_named(list(user)) if user else None
        except ValueError as error:
            raise CommandError(str(error), returncode=2) from None
        started = timezone.now()
        with outbound.background_work():  # many Stripe calls: the longer deadline, retries
            result = billing_reconcile(months=months, users=users)
            if repair:
                self._repair(result)
        reconciliation_record(
            result=result, actor="reconcile_billing", users=", ".join(user), started_at=started
        )
        self._table(result)
        for error in result.errors:
            self.stdout.write(self.style.ERROR(f"error: {error}"))
        unexplained = len(result.unexplained) + len(result.errors)
        self.stdout.write(
            f"{len(result.lines)} user-month(s), {len(result.differences)} difference(s), "
            f"{unexplained} unexplained."
        )
        if unexplained:
            raise CommandError(f"{unexplained} unexplained difference(s) or error(s).")

    def _repair(self, result) -> None:
        from accounts.models import User

        for line, difference in result.unexplained:
            if difference.repair != "resend":
                continue
            user = User.objects.get(pk=line.user_id)
            try:
                cents = reconciliation_resend(
                    user=user, month=line.month, resource=difference.resource, actor="command"
                )
            except (RepairRefused, gateway.StripeGatewayError) as error:
                difference.cause += f" (repair refused: {error})"
                continue
            difference.cause += f" (repaired: {cents:+} cents resent)"
            difference.explained = True

    def _table(self, result) -> None:
        rows = [COLUMNS]
        for line in result.lines:
            for f in line.figures.values():
                rows.append(
                    (
                        line.email or line.user_id,
                        f"{line.month:%Y-%m}",
                        f.resource,
                        *(_cents(v) for v in (f.ours, f.reported, f.pending, f.stripe, f.invoiced)),
                    )
                )
            if line.credits is not None:
                c = line.credits
                rows.append(
                    (
                        line.email or line.user_id,
                        f"{line.month:%Y-%m}",
                        "credits",
                        _cents(c.usage),
                        _cents(c.debited),
                        "-",
                        f"ledger {_cents(c.ledger)}",
                        "-",
                    )
                )
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
        for row in rows:
            self.stdout.write("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
        if result.differences:
            self.stdout.write("")
            self.stdout.write("Differences:")
        for line, d in result.differences:
            mark = "ok  " if d.explained else "FAIL"
            repair = f" -> {d.repair}" if d.repair else ""
            self.stdout.write(
                f"{mark} {line.email or line.user_id} {line.month:%Y-%m} {d.resource} "
                f"[{d.what}] {d.cents:+}c: {d.cause}{repair}"
            )


def _cents(value) -> str:
    return "-" if value is None else f"{value / 100:.2f}" if isinstance(value, int) else str(value)
