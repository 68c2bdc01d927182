import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.collection import (
    CollectionError,
    clusters_to_collect,
    days_between,
    usage_collect_each,
)
from plumbing import outbound


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date; write it as YYYY-MM-DD.") from None


class Command(BaseCommand):
    help = (
        "Collect daily usage from OpenCost (default: yesterday, UTC) for every active or "
        "maintenance cluster and every other cluster with assigned users or usage on those "
        "days. Rerunning a day replaces its figures, never counting twice, unless OpenCost's "
        "answer covers less of the day than what is stored (then the day fails and nothing "
        "is written; --force-replace writes it anyway). Exits non-zero if any cluster-day "
        "failed (the others are collected)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--date", help="One day, YYYY-MM-DD (default: yesterday, UTC).")
        parser.add_argument("--from", dest="start", help="First day of a backfill.")
        parser.add_argument("--to", dest="end", help="Last day of a backfill (inclusive).")
        parser.add_argument("--cluster", help="Only this cluster (by name).")
        parser.add_argument(
            "--force-replace",
            action="store_true",
            help="Write OpenCost's answer even when it covers less of the day than the "
            "figures already stored (e.g. to zero a day on purpose).",
        )

    def handle(
        self, *args, date=None, start=None, end=None, cluster=None, force_replace=False, **options
    ):
        yesterday = timezone.now().date() - dt.timedelta(days=1)
        if date and (start or end):
            raise CommandError("Give either --date or --from/--to, not both.")
        if date:
            first = last = _date(date)
        else:
            first = _date(start) if start else yesterday
            last = _date(end) if end else (first if start else yesterday)
        try:
            days = days_between(first, last)
            clusters = clusters_to_collect(cluster, days=days)
        except CollectionError as error:
            raise CommandError(str(error)) from None
        if not clusters:
            self.stdout.write(
                "No cluster is active or in maintenance, has assigned users or had usage on "
                "those days: nothing to do."
            )
            return

        # Background work: the longer deadline and retries per call, as in the jobs.
        with outbound.background_work():
            # What the jobs run, in the foreground, one line per cluster-day as it ends; the
            # next cluster-day's answers are read while one is written (usage_collect_each).
            total = len(clusters) * len(days)
            runs, failed = [], 0
            for collected in usage_collect_each(
                [(cluster, day) for cluster in clusters for day in days],
                actor="collect_usage",
                force=force_replace,
            ):
                progress = f"[{len(runs) + 1}/{total}] "
                run, name = collected.run, collected.cluster.name
                runs.append(run)
                if run is None:  # e.g. the database went away: go on
                    failed += 1
                    self.stdout.write(
                        self.style.ERROR(f"{progress}{name} {collected.day}: {collected.error}")
                    )
                elif run.status == run.Status.SUCCEEDED:
                    line = (
                        f"{progress}{name} {run.date}: {run.rows_written} rows, "
                        f"{run.coverage_minutes}/1440 min"
                    )
                    if run.unknown_namespaces:
                        names = ", ".join(n["namespace"] for n in run.unknown_namespaces)
                        line += f"; unknown namespaces: {names}"
                    self.stdout.write(self.style.SUCCESS(line))
                else:
                    failed += 1
                    self.stdout.write(self.style.ERROR(f"{progress}{name} {run.date}: {run.error}"))
        if failed:
            raise CommandError(f"{failed} of {len(runs)} cluster-day(s) failed; rerun to retry.")
