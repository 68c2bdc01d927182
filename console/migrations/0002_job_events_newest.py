"""A job's newest event, read through an index, for the operators' job list.

The list shows each job's last event (console.admin.JobAdmin.summary), read with the job by
a subquery per row of the page: `WHERE job_id = x ORDER BY at DESC, id DESC LIMIT 1`, one
index entry instead of a sort of the job's events. Events are inserted and never updated
(Procrastinate's triggers), so the index costs an entry per event. The table is
Procrastinate's; IF NOT EXISTS: an adopted database may have it."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("console", "0001_job_list_indexes")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS job_events_newest"
            " ON procrastinate_events (job_id, at DESC, id DESC)",
            "DROP INDEX IF EXISTS job_events_newest",
        ),
    ]
