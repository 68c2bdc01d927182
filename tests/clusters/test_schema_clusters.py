"""The seed's cluster tables and queries, verbatim, after real assign/move/unassign."""

import pytest

from clusters import services
from clusters.models import HopsworksCluster
from tests.factories import ClusterFactory, UserFactory
from tests.jobs import run_jobs
from tests.seed_schema import SEED_COLUMNS, columns_of, run

pytestmark = pytest.mark.django_db

GET_USER_WITH_CLUSTER = """
SELECT u.*, c.name as cluster_name, a.hopsworks_username
FROM users u
LEFT JOIN user_hopsworks_assignments a ON u.id = a.user_id
LEFT JOIN hopsworks_clusters c ON a.hopsworks_cluster_id = c.id
WHERE u.id = '{user_id}';
"""

CLUSTER_UTILIZATION = """
SELECT 
  c.name,
  c.current_users,
  c.max_users,
  COUNT(a.user_id) as assigned_users
FROM hopsworks_clusters c
LEFT JOIN user_hopsworks_assignments a ON c.id = a.hopsworks_cluster_id
GROUP BY c.id;
"""


@pytest.mark.parametrize("table", ["hopsworks_clusters", "user_hopsworks_assignments"])
def test_cluster_tables_have_every_seed_column_with_its_type_and_default(table):
    actual = columns_of(table)
    for column, expected in SEED_COLUMNS[table].items():
        assert actual.get(column) == expected, column


def test_the_seed_primary_key_of_assignments_is_the_pair():
    rows = run(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'user_hopsworks_assignments'::regclass "
        "AND i.indisprimary"
    )
    assert {r["attname"] for r in rows} == {"user_id", "hopsworks_cluster_id"}


def test_a_seed_style_cluster_insert_gets_the_defaults():
    run(
        "INSERT INTO hopsworks_clusters (name, api_url, api_key) "
        "VALUES ('raw', 'https://raw.example.com', 'x')"
    )
    [row] = run("SELECT id, max_users, current_users, status, created_at FROM hopsworks_clusters")
    assert row["id"] is not None
    assert (row["max_users"], row["current_users"], row["status"]) == (100, 0, "active")
    assert row["created_at"] is not None


def test_seed_queries_after_assign_move_and_unassign():
    east = ClusterFactory(name="east", max_users=5)
    west = ClusterFactory(name="west", max_users=5)
    ada, alan, grace = UserFactory(), UserFactory(), UserFactory()
    with run_jobs():
        services.assignment_create(user=ada, cluster=east, actor=None)
        services.assignment_create(user=alan, cluster=east, actor=None)
        services.assignment_create(user=grace, cluster=west, actor=None)
        services.assignment_move(user=ada, to_cluster=west, actor=None)
        services.assignment_unassign(user=alan, actor=None)

    [ada_row] = run(GET_USER_WITH_CLUSTER.format(user_id=ada.pk))
    [alan_row] = run(GET_USER_WITH_CLUSTER.format(user_id=alan.pk))
    utilization = {r["name"]: r for r in run(CLUSTER_UTILIZATION)}

    assert ada_row["cluster_name"] == "west"
    assert ada_row["email"] == ada.email
    assert alan_row["cluster_name"] is None
    assert {
        n: (r["current_users"], r["max_users"], r["assigned_users"]) for n, r in utilization.items()
    } == {"east": (0, 5, 0), "west": (2, 5, 2)}
    assert HopsworksCluster.objects.get(name="west").current_users == 2
