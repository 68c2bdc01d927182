from django.apps import AppConfig


class ClustersConfig(AppConfig):
    name = "clusters"
    verbose_name = "Hopsworks clusters"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in

        from accounts.signals import user_status_changed
        from clusters import receivers

        user_logged_in.connect(receivers.place_on_login, dispatch_uid="clusters_place_on_login")
        user_status_changed.connect(
            receivers.follow_user_status, dispatch_uid="clusters_follow_user_status"
        )
