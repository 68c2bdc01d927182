from django.core.management.base import BaseCommand, CommandError

from accounts.models import User, normalize_email
from clusters import services
from clusters.models import HopsworksCluster


class Command(BaseCommand):
    help = (
        "Assign a user (by Auth0 id or email) to a cluster: the one named with --cluster, or "
        "the active cluster with the fewest users that has room. Exits non-zero if the user "
        "cannot be placed."
    )

    def add_arguments(self, parser):
        parser.add_argument("user", help="The user's Auth0 id (auth0|...) or email address.")
        parser.add_argument("--cluster", help="The cluster's name (default: pick one).")

    def handle(self, *args, user, cluster=None, **options):
        target_user = (
            User.objects.filter(pk=user).first()
            or User.objects.filter(email=normalize_email(user)).first()
        )
        if target_user is None:
            raise CommandError(f"No user with id or email {user!r}.")
        if cluster is not None:
            target = HopsworksCluster.objects.filter(name=cluster).first()
            if target is None:
                names = ", ".join(HopsworksCluster.objects.values_list("name", flat=True))
                raise CommandError(f"No cluster named {cluster!r}. Clusters: {names or 'none'}.")
            try:
                services.assignment_create(user=target_user, cluster=target, actor="assign_user")
            except services.PlacementError as error:
                raise CommandError(str(error)) from None
            self.stdout.write(self.style.SUCCESS(f"{target_user.email} is on {target.name}."))
            return

        placement = services.assignment_place(user=target_user, actor="assign_user", gated=False)
        if placement.outcome == services.Placement.Outcome.NOT_ACTIVE:
            raise CommandError(placement.detail)
        if placement.outcome == services.Placement.Outcome.WAITING:
            raise CommandError(
                f"No active cluster has room for {target_user.email}; they are waiting for "
                "capacity and will be placed when a slot appears."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"{target_user.email} is on {placement.cluster.name} ({placement.outcome})."
            )
        )
