"""Demo clusters and assignments. Idempotent: keyed on cluster names and user ids."""

from __future__ import annotations

from django.db import transaction

from accounts.demo import DEMO_USERS
from accounts.models import User
from clusters import services
from clusters.models import HopsworksAccount, HopsworksCluster, UserHopsworksAssignment

DEMO_CLUSTERS = [
    # Nothing listens on these local ports: "test connection" shows what an unreachable
    # cluster looks like. Point them at a real cluster in the console to try it for real.
    ("demo-east", "https://127.0.0.1:9443", 20),
    ("demo-west", "https://127.0.0.1:9444", 3),
]
PLACEMENTS = {0: "demo-east", 1: "demo-east", 2: "demo-west", 3: "demo-west"}


@transaction.atomic  # the after-commit account sync then finds the demo accounts in sync
def seed() -> list[str]:
    clusters = {}
    created = 0
    for name, url, max_users in DEMO_CLUSTERS:
        cluster = HopsworksCluster.objects.filter(name=name).first()
        if cluster is None:
            cluster = services.cluster_save(
                cluster=HopsworksCluster(),
                changes={
                    "name": name,
                    "api_url": url,
                    "api_key": f"demo-key-{name}",
                    "max_users": max_users,
                },
                actor="seed_demo",
            )
            # Demo clusters are not real: recorded as tested, so they take the demo users.
            services.cluster_connection_passed(cluster=cluster, actor="seed_demo")
            created += 1
        clusters[name] = cluster

    placed = 0
    for index, cluster_name in PLACEMENTS.items():
        user = User.objects.get(pk=DEMO_USERS[index][0])
        if UserHopsworksAssignment.objects.filter(user=user).exists():
            continue
        services.assignment_create(user=user, cluster=clusters[cluster_name], actor="seed_demo")
        username = user.email.split("@")[0] + "01"
        # Demo clusters are not real: record the accounts as if Hopsworks had made them.
        HopsworksAccount.objects.filter(user=user).update(
            synced=HopsworksAccount.State.ACTIVE, hopsworks_username=username, last_error=""
        )
        UserHopsworksAssignment.objects.filter(user=user).update(hopsworks_username=username)
        User.objects.filter(pk=user.pk).update(hopsworks_username=username)
        placed += 1
    return [f"Demo clusters: {created} created; {placed} users placed."]
