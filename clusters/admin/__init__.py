"""Clusters' admins. Importing the package registers the waiting list and the Hopsworks
accounts; the clusters admin (`clusters.ClusterAdminBase`) and the users admin's placement
part (`users.UserPlacementAdminMixin`) are composed in console/admin.py."""

from clusters.admin import clusters, placement, users  # noqa: F401
from clusters.admin.clusters import ClusterAdminBase
from clusters.admin.users import PLACEMENT_SECTION, UserPlacementAdminMixin

__all__ = ["PLACEMENT_SECTION", "ClusterAdminBase", "UserPlacementAdminMixin"]
