from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in
        from django.db.models.signals import post_migrate

        from accounts import receivers

        # Django's own handler saves the whole user to set last_login; ours counts the
        # login with one atomic UPDATE instead (login_count and last_login_at together).
        user_logged_in.disconnect(dispatch_uid="update_last_login")
        user_logged_in.connect(receivers.count_login, dispatch_uid="accounts_count_login")
        user_logged_in.connect(
            receivers.start_operator_session, dispatch_uid="accounts_start_operator_session"
        )
        # Once per migrate (sent for each app; this one is ours), after every migration.
        post_migrate.connect(
            receivers.enable_row_level_security,
            sender=self,
            dispatch_uid="accounts_enable_row_level_security",
        )
