"""API: usage for scripts, and the bulk usage upsert. (The user's own /me endpoints are
presentation: console/api.py.)"""

from __future__ import annotations

import datetime as dt

from django.db.models import Q
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, generics, serializers
from rest_framework.response import Response

from accounts.api import HasScope
from accounts.models import User, normalize_email
from billing.models import UsageDaily
from billing.usage import MAX_BATCH, UsageRecord, UsageValidationError, usage_upsert
from clusters.selectors import cluster_by_name_or_id, cluster_ids_by_name_or_id
from plumbing.admin_lists import EstimatedCountPaginator
from plumbing.api import Pagination
from plumbing.api_docs import COMMON_ERRORS, error_responses

MONEY = {"max_digits": 30, "decimal_places": 10}


def date_param(request, name: str) -> dt.date | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise exceptions.ValidationError({name: [f"{raw!r} is not a date (YYYY-MM-DD)."]}) from None


def date_range(request) -> tuple[dt.date | None, dt.date | None]:
    start, end = date_param(request, "from"), date_param(request, "to")
    if start and end and start > end:
        raise exceptions.ValidationError({"from": ["`from` is after `to`."]})
    return start, end


RANGE_PARAMETERS = [
    OpenApiParameter("from", dt.date, description="First day (YYYY-MM-DD), inclusive."),
    OpenApiParameter("to", dt.date, description="Last day (YYYY-MM-DD), inclusive."),
]


# Usage for scripts --------------------------------------------------------------------


class UsageRowSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user_id")
    cluster = serializers.UUIDField(source="hopsworks_cluster_id", allow_null=True)

    class Meta:
        model = UsageDaily
        fields = (
            "id",
            "user",
            "cluster",
            "date",
            "cpu_hours",
            "gpu_hours",
            "storage_gb_months",
            "api_calls",
            "total_cost",
            "billed_via",
        )


class RecordSerializer(serializers.Serializer):
    user = serializers.CharField(max_length=255, help_text="The user's id (Auth0 id).")
    cluster = serializers.CharField(
        required=False, allow_null=True, max_length=200, help_text="Cluster id or name."
    )
    date = serializers.DateField()
    cpu_hours = serializers.DecimalField(**MONEY, min_value=0, required=False, allow_null=True)
    gpu_hours = serializers.DecimalField(**MONEY, min_value=0, required=False, allow_null=True)
    storage_gb_months = serializers.DecimalField(
        **MONEY, min_value=0, required=False, allow_null=True
    )
    api_calls = serializers.IntegerField(
        min_value=0, max_value=2**31 - 1, required=False, allow_null=True
    )


class UpsertRequest(serializers.Serializer):
    records = RecordSerializer(many=True, allow_empty=False, max_length=MAX_BATCH)


UpsertResult = inline_serializer(
    name="UsageUpsertResult",
    fields={
        "rows": serializers.IntegerField(),
        "credit_entries": serializers.IntegerField(),
        "negative_balances": serializers.ListField(child=serializers.CharField()),
    },
)


class BoundedPagination(Pagination):
    """Pages at most `max_depth` rows deep (an offset reads and drops every row before the
    page); past that, narrow with `to` (the date of the last row read) and start again at
    page 1. The count of a big list is the planner's estimate (plumbing/admin_lists.py)."""

    django_paginator_class = EstimatedCountPaginator
    max_depth = 10_000

    def paginate_queryset(self, queryset, request, view=None):
        raw = request.query_params.get(self.page_query_param, "1")
        # ASCII digits only ("²".isdigit() is true, int() refuses it), and few enough for
        # int(): anything else is DRF's "Invalid page." (404), as on the other lists.
        page = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None
        if page is not None and (page - 1) * self.get_page_size(request) >= self.max_depth:
            raise exceptions.ValidationError(
                {
                    self.page_query_param: [
                        f"Pages go {self.max_depth} rows deep. Narrow the list with `to` "
                        "(the date of the last row you have) and start again at page 1."
                    ]
                }
            )
        return super().paginate_queryset(queryset, request, view)


class UsageRecordsView(generics.ListAPIView):
    """GET: usage rows, filtered. POST: write usage records in bulk: every record is
    validated first and one bad record writes nothing (the error names it by index); the
    same batch sent twice changes nothing the second time. A figure left out keeps its
    stored value."""

    serializer_class = UsageRowSerializer
    permission_classes = [HasScope]
    scopes = {"GET": "usage:read", "POST": "usage:write"}

    pagination_class = BoundedPagination

    def get_queryset(self):
        rows = UsageDaily.objects.order_by("-date", "user_id", "id")
        user = self.request.query_params.get("user")
        if user:
            # The user first (an id or an email, one index probe each), then their rows by
            # the (user_id, date) index: an OR across a join to users would scan them all.
            found = User.objects.filter(Q(pk=user) | Q(email=normalize_email(user)))
            rows = rows.filter(user_id__in=list(found.values_list("pk", flat=True)))
        cluster = self.request.query_params.get("cluster")
        if cluster:
            found = cluster_by_name_or_id(cluster)
            rows = rows.filter(hopsworks_cluster=found) if found else rows.none()
        start, end = date_range(self.request)
        if start:
            rows = rows.filter(date__gte=start)
        if end:
            rows = rows.filter(date__lte=end)
        return rows

    @extend_schema(
        parameters=[
            OpenApiParameter("user", str, description="User id or email."),
            OpenApiParameter("cluster", str, description="Cluster id or name."),
            *RANGE_PARAMETERS,
        ],
        responses={200: UsageRowSerializer(many=True), **error_responses(400, 404, *COMMON_ERRORS)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=UpsertRequest,
        responses={200: UpsertResult, **error_responses(400, 413, 415, *COMMON_ERRORS)},
    )
    def post(self, request):
        body = UpsertRequest(data=request.data)
        if not body.is_valid():
            raise exceptions.ValidationError(_by_index(body.errors))
        items = body.validated_data["records"]
        # Every cluster named in the batch, in one query; an unknown one is passed on as
        # given, for the service to name its record.
        cluster_ids = cluster_ids_by_name_or_id(item.get("cluster") for item in items)
        records = []
        for item in items:
            cluster = item.get("cluster")
            records.append(
                UsageRecord(
                    user_id=item["user"],
                    cluster_id=cluster_ids.get(cluster, cluster) if cluster else None,
                    date=item["date"],
                    cpu_hours=item.get("cpu_hours"),
                    gpu_hours=item.get("gpu_hours"),
                    storage_gb_months=item.get("storage_gb_months"),
                    api_calls=item.get("api_calls"),
                )
            )
        try:
            result = usage_upsert(records=records, actor=str(request.user))
        except UsageValidationError as error:
            raise exceptions.ValidationError(
                {"records": {str(index): problems for index, problems in error.errors.items()}}
            ) from None
        return Response(
            {
                "rows": result.rows,
                "credit_entries": result.credit_entries,
                "negative_balances": result.negative_balances,
            }
        )


def _by_index(errors) -> dict:
    """DRF's list errors as {"records": {"<index>": [...]}} like the service's."""
    records = errors.get("records") if isinstance(errors, dict) else None
    # Per-record errors are a list with an entry (a dict, maybe empty) per record; a list of
    # messages is about `records` itself (missing, null, too many).
    if not isinstance(records, list) or not all(isinstance(e, dict) for e in records):
        return errors
    return {
        "records": {str(index): _messages(error) for index, error in enumerate(records) if error}
    }


def _messages(error) -> list[str]:
    if isinstance(error, dict):
        return [f"{field}: {' '.join(map(str, _flat(msgs)))}" for field, msgs in error.items()]
    return [str(message) for message in _flat(error)]


def _flat(error) -> list:
    return error if isinstance(error, list) else [error]
