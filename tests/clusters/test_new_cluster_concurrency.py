"""Two operators saving clusters with the same URL at the same moment: one is refused."""

import pytest

from clusters import services
from clusters.models import HopsworksCluster
from tests.concurrency import run_at_once

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_concurrent_saves_of_one_url_leave_one_cluster():
    refused = []

    def save(name):
        try:
            services.cluster_save(
                cluster=HopsworksCluster(),
                changes={
                    "name": name,
                    "api_url": "https://east.example.com"
                    if name == "a"
                    else "HTTPS://EAST.example.com/",
                    "api_key": "the-admin-key",
                },
                actor=name,
            )
        except services.ClusterValidationError as error:
            refused.append((error.field, str(error)))

    run_at_once(save, ["a", "b"])

    assert HopsworksCluster.objects.count() == 1
    assert len(refused) == 1
    assert refused[0][0] == "api_url"
    assert "already used by cluster" in refused[0][1]
