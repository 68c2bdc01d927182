"""API: users with their cluster (the seed's "user with cluster assignment"), clusters
(the seed's "cluster utilization"), and assigning users. Thin: the services decide."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import HasScope
from accounts.models import User, normalize_email
from clusters import services
from clusters.models import HopsworksCluster, UserHopsworksAssignment
from clusters.selectors import cluster_by_name_or_id, cluster_utilization
from plumbing.api_docs import COMMON_ERRORS, error_responses


class AssignmentSerializer(serializers.ModelSerializer):
    cluster_id = serializers.UUIDField(source="hopsworks_cluster_id")
    cluster_name = serializers.CharField(source="hopsworks_cluster.name")

    class Meta:
        model = UserHopsworksAssignment
        fields = ("cluster_id", "cluster_name", "hopsworks_username", "assigned_at")


class UserSerializer(serializers.ModelSerializer):
    last_login_at = serializers.DateTimeField(source="last_login", allow_null=True)
    cluster_name = serializers.SerializerMethodField()
    assignment = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = (
            "id",
            "email",
            "name",
            "created_at",
            "last_login_at",
            "login_count",
            "status",
            "is_admin",
            "hopsworks_username",
            "stripe_customer_id",
            "cluster_name",
            "assignment",
        )

    def get_cluster_name(self, user) -> str | None:
        assignment = getattr(user, "hopsworks_assignment", None)
        return assignment.hopsworks_cluster.name if assignment else None

    @extend_schema_field(AssignmentSerializer(allow_null=True))
    def get_assignment(self, user):
        assignment = getattr(user, "hopsworks_assignment", None)
        return AssignmentSerializer(assignment).data if assignment else None


def users_with_clusters():
    return User.objects.select_related("hopsworks_assignment__hopsworks_cluster").order_by("id")


class UserList(generics.ListAPIView):
    """Users with their cluster; `?email=` finds one by email (the seed's "Find user by
    email")."""

    serializer_class = UserSerializer
    permission_classes = [HasScope]
    scopes = {"GET": "users:read"}

    def get_queryset(self):
        users = users_with_clusters()
        email = self.request.query_params.get("email")
        if email:
            users = users.filter(email=normalize_email(email))
        return users

    @extend_schema(
        parameters=[OpenApiParameter("email", str, description="Exact email (any case).")],
        responses={200: UserSerializer(many=True), **error_responses(400, 404, *COMMON_ERRORS)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class UserDetail(generics.RetrieveAPIView):
    """One user with their cluster: the seed's "Get user with cluster assignment"."""

    serializer_class = UserSerializer
    permission_classes = [HasScope]
    scopes = {"GET": "users:read"}
    lookup_url_kwarg = "user_id"

    def get_queryset(self):
        return users_with_clusters()

    @extend_schema(responses={200: UserSerializer, **error_responses(404, *COMMON_ERRORS)})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class AssignRequest(serializers.Serializer):
    cluster = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="Cluster name or id. Without it, the active cluster with the fewest users "
        "that has room. A user already on a cluster is moved.",
    )


class AssignmentView(APIView):
    """Assign, move (POST) or unassign (DELETE) a user, through the cluster services.
    A script acts for operators: the billing gate does not apply."""

    permission_classes = [HasScope]
    scopes = {"POST": "assignments:write", "DELETE": "assignments:write"}

    def _user(self, user_id) -> User:
        return get_object_or_404(User, pk=user_id)

    @extend_schema(
        request=AssignRequest,
        responses={
            200: AssignmentSerializer,
            **error_responses(400, 404, 409, 415, *COMMON_ERRORS),
        },
    )
    def post(self, request, user_id):
        user = self._user(user_id)
        body = AssignRequest(data=request.data)
        body.is_valid(raise_exception=True)
        name = body.validated_data.get("cluster")
        try:
            if name:
                services.assignment_set(user=user, cluster=_cluster(name), actor=request.user)
            else:
                placement = services.assignment_place(user=user, actor=request.user, gated=False)
                if placement.outcome == services.Placement.Outcome.NOT_ACTIVE:
                    raise Conflict(placement.detail)
                if placement.assignment is None:
                    raise Conflict(
                        "No active cluster has room; the user waits for capacity and is "
                        "placed when a slot appears."
                    )
        except services.PlacementError as error:
            raise Conflict(str(error)) from None
        return Response(AssignmentSerializer(services.assignment_of(user)).data)

    @extend_schema(
        responses={
            204: OpenApiResponse(description="Unassigned."),
            **error_responses(404, *COMMON_ERRORS),
        }
    )
    def delete(self, request, user_id):
        user = self._user(user_id)
        try:
            services.assignment_unassign(user=user, actor=request.user)
        except services.NotAssigned as error:
            raise exceptions.NotFound(str(error)) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


def _cluster(name_or_id: str) -> HopsworksCluster:
    cluster = cluster_by_name_or_id(name_or_id)
    if cluster is None:
        raise exceptions.ValidationError({"cluster": [f"No cluster named {name_or_id!r}."]})
    return cluster


class ClusterSerializer(serializers.ModelSerializer):
    assigned_users = serializers.IntegerField()
    free_slots = serializers.IntegerField()

    class Meta:
        model = HopsworksCluster
        fields = (
            "id",
            "name",
            "status",
            "api_url",
            "current_users",
            "max_users",
            "assigned_users",
            "free_slots",
            "created_at",
        )


class ClusterList(generics.ListAPIView):
    """The seed's "Cluster utilization". Secrets are never part of it."""

    serializer_class = ClusterSerializer
    permission_classes = [HasScope]
    scopes = {"GET": "clusters:read"}

    def get_queryset(self):
        return cluster_utilization()

    @extend_schema(
        responses={200: ClusterSerializer(many=True), **error_responses(404, *COMMON_ERRORS)}
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)
