"""Indexes for the operators' job list (console.admin.JobAdmin) on Procrastinate's table.

The table is Procrastinate's; the list is ours. Its queue and task filters read their values
by skipping through an index (plumbing.admin_lists.IndexedValuesFilter) instead of
`SELECT DISTINCT` over a week of jobs (150,000 at 100,000 users: 57 ms each, on every page),
and a filtered page reads its newest jobs through the same index. Neither column changes
after a job is deferred, so the indexes cost an entry per job and nothing per status change
beyond what Procrastinate's own partial indexes already cost. IF NOT EXISTS: an adopted
database may have them."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("procrastinate", "0041_post_retry_failed_job")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS jobs_task_newest"
            " ON procrastinate_jobs (task_name, id DESC)",
            "DROP INDEX IF EXISTS jobs_task_newest",
        ),
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS jobs_queue_newest"
            " ON procrastinate_jobs (queue_name, id DESC)",
            "DROP INDEX IF EXISTS jobs_queue_newest",
        ),
    ]
