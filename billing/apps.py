from django.apps import AppConfig
from django.db.models.signals import pre_delete


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self):
        from accounts.models import User
        from billing.closing import refuse_deleting_with_money_open

        pre_delete.connect(
            refuse_deleting_with_money_open, sender=User, dispatch_uid="billing-money-open"
        )
