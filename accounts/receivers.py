from django.db import connections
from django.db.migrations.recorder import MigrationRecorder

from accounts import services
from plumbing import rls


def count_login(sender, request, user, **kwargs):
    """Runs once per real login (Auth0 or password), never on page loads."""
    services.user_record_login(user=user)


def start_operator_session(sender, request, user, **kwargs):
    """An operator's session starts with its idle expiry (accounts.middleware)."""
    session = getattr(request, "session", None)
    if session is not None and user.is_staff:
        from accounts.middleware import start_idle_expiry

        start_idle_expiry(session)


# While this migration is applied, every migrate also covers tables created since.
RLS_MIGRATION = ("accounts", "0004_row_level_security")


def enable_row_level_security(sender, using, verbosity=1, stdout=None, **kwargs):
    """post_migrate: RLS on tables that later migrations (ours, Django's, Procrastinate's,
    any app's) created after accounts.0004 ran. A few catalog queries when nothing is missing."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    if RLS_MIGRATION not in MigrationRecorder(connection).applied_migrations():
        return
    with connection.cursor() as cursor:
        change = rls.rls_enable(cursor)
    if verbosity and stdout is not None:
        for line in change.lines():
            stdout.write(line)
