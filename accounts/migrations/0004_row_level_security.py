"""Row Level Security on every table in `public` (see plumbing/rls.py and docs/schema.md).

Enables RLS on the tables that exist now; every later `migrate` does the same for tables
created since (accounts.receivers.enable_row_level_security, on post_migrate), for as long
as this migration is applied. Reversing it drops the own-rows policies and disables RLS
on every table in `public`.
"""

from django.db import migrations

from plumbing import rls


def _report(lines):
    # Migrations have no stdout of their own; what was done or skipped is worth seeing.
    if lines:
        print()  # migrate has written "Applying ..." without ending the line
    for line in lines:
        print(f"  {line}")


def enable(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        _report([f"Row Level Security is PostgreSQL's: nothing done on {connection.vendor}."])
        return
    with connection.cursor() as cursor:
        change = rls.rls_enable(cursor)
    _report(change.lines())


def disable(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        change = rls.rls_disable(cursor)
    _report(change.lines())


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_user_action_permissions"),
    ]

    operations = [
        migrations.RunPython(enable, disable, elidable=False),
    ]
