"""Auth0 tokens that social-auth kept in its links' `extra_data` (in plain text) before the
backend stopped keeping them (accounts.auth0.Auth0Backend.extra_data): removed. Nothing
reads them; the reverse keeps nothing to restore."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0010_users_list_order_indexes"),
        ("social_django", "0016_alter_usersocialauth_extra_data"),
    ]

    operations = [
        migrations.RunSQL(
            """
            UPDATE social_auth_usersocialauth
               SET extra_data = extra_data - 'access_token' - 'refresh_token' - 'id_token'
             WHERE extra_data ?| array['access_token', 'refresh_token', 'id_token']
            """,
            migrations.RunSQL.noop,
        ),
    ]
