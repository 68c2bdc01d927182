from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """Presentation only: the composed admins, the dashboard, the user's pages, /me."""

    name = "console"
    verbose_name = "Console"

    def ready(self):
        from procrastinate.contrib.django.models import ProcrastinateJob

        # Procrastinate names a job by its whole call, arguments included: a standing check
        # of a 5,000-record batch is a 95 kB name, which the job list repeated in every
        # row's checkbox label and the job's page in its title. Its task and id name it;
        # the arguments have their own column (console.admin.JobAdmin.pretty_args).
        ProcrastinateJob.__str__ = _job_name


def _job_name(job) -> str:
    return f"{job.task_name}[{job.pk}]"
