from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """Presentation only: the composed admins, the dashboard, the user's pages, /me."""

    name = "console"
    verbose_name = "Console"
