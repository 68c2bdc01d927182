from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in

        from accounts import receivers

        # Django's own handler saves the whole user to set last_login; ours counts the
        # login with one atomic UPDATE instead (login_count and last_login_at together).
        user_logged_in.disconnect(dispatch_uid="update_last_login")
        user_logged_in.connect(receivers.count_login, dispatch_uid="accounts_count_login")
