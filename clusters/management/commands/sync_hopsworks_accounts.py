from django.core.management.base import BaseCommand, CommandError

from clusters.account_sync import hopsworks_accounts_sync
from clusters.models import HopsworksCluster
from clusters.services import capacity_place_waiting
from plumbing import outbound


class Command(BaseCommand):
    help = (
        "Retry every pending Hopsworks account change (create, activate, deactivate) and place "
        "users waiting for capacity. Run it from cron; it is safe to run twice at once."
    )

    def add_arguments(self, parser):
        parser.add_argument("--cluster", help="Only this cluster (by name).")

    def handle(self, *args, cluster=None, **options):
        target = None
        if cluster:
            target = HopsworksCluster.objects.filter(name=cluster).first()
            if target is None:
                raise CommandError(f"No cluster named {cluster!r}.")
        # Cron, not a web request: each call may retry, within the longer deadline.
        with outbound.background_work():
            placed = capacity_place_waiting()
            if placed:
                self.stdout.write(f"{placed} waiting user(s) placed.")
            report = hopsworks_accounts_sync(cluster=target)
        self.stdout.write(f"{report.synced} account(s) synced, {report.failed} failed.")
        for error in report.errors:
            self.stdout.write(self.style.WARNING(f"  {error}"))
        if report.failed:
            raise CommandError(f"{report.failed} account(s) still pending; they will be retried.")
