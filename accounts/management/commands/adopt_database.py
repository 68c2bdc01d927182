from django.core.management.base import BaseCommand, CommandError

from plumbing.adoption import ADOPTION_VERSION, AdoptionBlocked, Inspection, adopt, inspect

BLOCKED, ERROR = 1, 2


class Command(BaseCommand):
    help = (
        "Adopt a database made by the seed's own statements (docs/schema.md): say what it "
        "will do and what blocks it; without --dry-run, do it in one transaction (row fixes, "
        "every migration, plaintext secrets encrypted, a row in schema_migrations). Exits 0 "
        "when adopted or nothing to do, 1 when something needs your decision (nothing is "
        "changed), 2 on an error."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Inspect and say what would be done."
        )

    def handle(self, *args, dry_run=False, **options):
        try:
            if dry_run:
                inspection = inspect()
                self._report(inspection)
                if inspection.blocking:
                    raise CommandError(
                        "Dry run: nothing was changed. Adoption is blocked until the "
                        "problems above are resolved.",
                        returncode=BLOCKED,
                    )
                self.stdout.write(
                    "Dry run: nothing was changed."
                    + ("" if inspection.nothing_to_do else " Run without --dry-run to adopt.")
                )
                return
            inspection = adopt(report=self._report, progress=self.stdout.write)
        except AdoptionBlocked as blocked:
            self._report(blocked.inspection)
            raise CommandError(
                "Blocked: nothing was changed. Resolve the problems above and run again.",
                returncode=BLOCKED,
            ) from None
        except CommandError:
            raise
        except Exception as error:  # anything else: the transaction was rolled back
            raise CommandError(
                f"Adoption failed, nothing was changed: {error}", returncode=ERROR
            ) from error
        if inspection.nothing_to_do:
            self.stdout.write(self.style.SUCCESS("Nothing to do: the database is adopted."))
            return
        self.stdout.write(
            self.style.SUCCESS(f"Adopted: recorded as {ADOPTION_VERSION!r} in schema_migrations.")
        )

    def _report(self, inspection: Inspection) -> None:
        out = self.stdout.write
        if inspection.nothing_to_do:
            out("Nothing to do: the database is adopted.")
            return
        if inspection.blocking:
            out(self.style.ERROR("Needs your decision (adoption stops until resolved):"))
            for finding in inspection.blocking:
                self._finding(finding)
        if inspection.fixes:
            out("Fixes adoption makes by itself:")
            for finding in inspection.fixes:
                self._finding(finding)
        out("Schema:")
        if inspection.migrations:
            if inspection.taken_over:
                out(
                    "- take over the seed's tables in place, keeping every row: "
                    f"{', '.join(inspection.taken_over)} (add our columns, NOT NULL, "
                    "UNIQUE, CHECK constraints and indexes)"
                )
            if inspection.created:
                out(f"- create {len(inspection.created)} table(s): {', '.join(inspection.created)}")
            out(
                f"- apply {len(inspection.migrations)} migration(s) (recorded in "
                "django_migrations, as `migrate` does)"
            )
        else:
            out("- every migration is applied already")
        if not inspection.recorded:
            out(f"- record the adoption in schema_migrations as {ADOPTION_VERSION!r}")
        for note in inspection.notes:
            out(f"Note: {note}")

    def _finding(self, finding) -> None:
        self.stdout.write(f"- {finding.summary}")
        if finding.examples:
            shown = finding.examples[:5]
            more = len(finding.examples) - len(shown)
            tail = f"; and {more} more" if more else ""
            self.stdout.write("    e.g. " + "; ".join(shown) + tail)
        self.stdout.write(f"    fix: {finding.fix}")
