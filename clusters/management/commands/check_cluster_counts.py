from django.core.management.base import BaseCommand, CommandError

from clusters import services


class Command(BaseCommand):
    help = (
        "Compare each cluster's current_users with its assignments. With --fix, repair the "
        "count. Exits non-zero when drift is found and not fixed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="Repair the counts.")

    def handle(self, *args, fix=False, **options):
        drifts = services.cluster_counts_check(fix=fix, actor="check_cluster_counts")
        if not drifts:
            self.stdout.write(self.style.SUCCESS("Every cluster's current_users is exact."))
            return
        for drift in drifts:
            verb = "repaired" if fix else "recorded"
            self.stdout.write(
                f"{drift.cluster.name}: current_users {verb} {drift.recorded}, "
                f"assigned users {drift.assigned}"
            )
        if not fix:
            raise CommandError(f"{len(drifts)} cluster(s) drifted; run again with --fix.")
        self.stdout.write(self.style.SUCCESS(f"{len(drifts)} cluster(s) repaired."))
