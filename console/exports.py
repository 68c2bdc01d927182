"""The columns of the users admin's export (plumbing/admin_export.py writes them)."""

from __future__ import annotations

from import_export.fields import Field

from accounts.models import User
from plumbing.admin_export import ExportResource


class UserResource(ExportResource):
    email = Field(attribute="email", column_name="email")
    name = Field(attribute="name", column_name="name")
    id = Field(attribute="id", column_name="id")
    status = Field(attribute="status", column_name="status")
    cluster = Field(column_name="cluster")
    is_admin = Field(attribute="is_admin", column_name="operator")
    login_count = Field(attribute="login_count", column_name="logins")
    last_login = Field(attribute="last_login", column_name="last login (UTC)")
    created_at = Field(attribute="created_at", column_name="created at (UTC)")

    class Meta:
        model = User
        fields = (
            "email",
            "name",
            "id",
            "status",
            "cluster",
            "is_admin",
            "login_count",
            "last_login",
            "created_at",
        )
        export_order = fields

    def dehydrate_cluster(self, user):
        # The list's select_related (hopsworks_assignment__hopsworks_cluster) brings it.
        assignment = getattr(user, "hopsworks_assignment", None)
        return assignment.hopsworks_cluster.name if assignment is not None else None
