"""API: the logged-in user's own data (/me), usage for scripts, and the bulk usage upsert."""

from __future__ import annotations

import datetime as dt

from django.db.models import Q
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, generics, serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import HasScope, IsPerson
from accounts.models import normalize_email
from billing import selectors
from billing.models import BillingHistory, CreditLedgerEntry, UsageDaily
from billing.pricing import to_cents
from billing.usage import MAX_BATCH, UsageRecord, UsageValidationError, usage_upsert
from clusters.api import AssignmentSerializer
from clusters.selectors import cluster_by_name_or_id, placement_of
from plumbing.api_docs import COMMON_ERRORS, error_responses

MONEY = {"max_digits": 30, "decimal_places": 10}


def _date_param(request, name: str) -> dt.date | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise exceptions.ValidationError({name: [f"{raw!r} is not a date (YYYY-MM-DD)."]}) from None


def _date_range(request) -> tuple[dt.date | None, dt.date | None]:
    start, end = _date_param(request, "from"), _date_param(request, "to")
    if start and end and start > end:
        raise exceptions.ValidationError({"from": ["`from` is after `to`."]})
    return start, end


RANGE_PARAMETERS = [
    OpenApiParameter("from", dt.date, description="First day (YYYY-MM-DD), inclusive."),
    OpenApiParameter("to", dt.date, description="Last day (YYYY-MM-DD), inclusive."),
]


# /me ----------------------------------------------------------------------------------


class MeSerializer(serializers.Serializer):
    id = serializers.CharField()
    email = serializers.CharField()
    name = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    placement = serializers.CharField(help_text="Where the user is, or why they wait.")
    assignment = AssignmentSerializer(allow_null=True)
    billing_mode = serializers.CharField()
    month_to_date = serializers.DecimalField(max_digits=20, decimal_places=2)
    credit_balance = serializers.DecimalField(max_digits=20, decimal_places=2)
    credit_balance_negative = serializers.BooleanField()


class Me(APIView):
    """Your profile, your cluster, how you pay and your balance."""

    permission_classes = [IsAuthenticated, IsPerson]

    @extend_schema(responses={200: MeSerializer, **error_responses(*COMMON_ERRORS)})
    def get(self, request):
        user = request.user
        placement = placement_of(user)
        balance = selectors.credit_balance(user)
        data = {
            "id": user.pk,
            "email": user.email,
            "name": user.name,
            "status": user.status,
            "placement": placement.summary,
            "assignment": placement.assignment,
            "billing_mode": selectors.billing_mode(user),
            "month_to_date": to_cents(selectors.month_to_date_cost(user)),
            "credit_balance": to_cents(balance),
            "credit_balance_negative": balance < 0,
        }
        return Response(MeSerializer(data).data)


class DaySerializer(serializers.Serializer):
    date = serializers.DateField()
    cpu_hours = serializers.DecimalField(**MONEY)
    gpu_hours = serializers.DecimalField(**MONEY)
    storage_gb_months = serializers.DecimalField(**MONEY)
    api_calls = serializers.IntegerField()
    total_cost = serializers.DecimalField(**MONEY)


class MyUsageSerializer(serializers.Serializer):
    month_to_date = serializers.DecimalField(**MONEY, help_text="The seed's current month usage.")
    days = DaySerializer(many=True, help_text="Newest first; at most 366 days.")


class MyUsage(APIView):
    """Your month-to-date cost and your daily breakdown (default: the last 30 days)."""

    permission_classes = [IsAuthenticated, IsPerson]

    @extend_schema(
        parameters=RANGE_PARAMETERS,
        responses={200: MyUsageSerializer, **error_responses(400, *COMMON_ERRORS)},
    )
    def get(self, request):
        start, end = _date_range(request)
        days = selectors.daily_breakdown(
            request.user, days=366 if (start or end) else 30, since=start, until=end
        )
        data = {"month_to_date": selectors.month_to_date_cost(request.user), "days": list(days)}
        return Response(MyUsageSerializer(data).data)


class InvoiceSerializer(serializers.ModelSerializer):
    class Meta:
        model = BillingHistory
        fields = (
            "id",
            "amount",
            "currency",
            "description",
            "status",
            "stripe_invoice_id",
            "hosted_invoice_url",
            "created_at",
        )


class MovementSerializer(serializers.ModelSerializer):
    class Meta:
        model = CreditLedgerEntry
        fields = ("kind", "amount", "balance_after", "reason", "created_at")


class MyBillingSerializer(serializers.Serializer):
    invoices = InvoiceSerializer(many=True)
    credit_movements = MovementSerializer(many=True)


class MyBilling(APIView):
    """Your billing history (invoices) and your latest credit movements."""

    permission_classes = [IsAuthenticated, IsPerson]

    @extend_schema(responses={200: MyBillingSerializer, **error_responses(*COMMON_ERRORS)})
    def get(self, request):
        data = {
            "invoices": BillingHistory.objects.filter(user=request.user).order_by("-created_at")[
                :100
            ],
            "credit_movements": selectors.credit_movements(request.user, limit=100),
        }
        return Response(MyBillingSerializer(data).data)


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


class Usage(generics.ListAPIView):
    """GET: usage rows, filtered. POST: write usage records in bulk: every record is
    validated first and one bad record writes nothing (the error names it by index); the
    same batch sent twice changes nothing the second time. A figure left out keeps its
    stored value."""

    serializer_class = UsageRowSerializer
    permission_classes = [HasScope]
    scopes = {"GET": "usage:read", "POST": "usage:write"}

    def get_queryset(self):
        rows = UsageDaily.objects.order_by("-date", "user_id", "id")
        user = self.request.query_params.get("user")
        if user:
            rows = rows.filter(Q(user_id=user) | Q(user__email=normalize_email(user)))
        cluster = self.request.query_params.get("cluster")
        if cluster:
            found = cluster_by_name_or_id(cluster)
            rows = rows.filter(hopsworks_cluster=found) if found else rows.none()
        start, end = _date_range(self.request)
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
        responses={200: UpsertResult, **error_responses(400, 415, *COMMON_ERRORS)},
    )
    def post(self, request):
        body = UpsertRequest(data=request.data)
        if not body.is_valid():
            raise exceptions.ValidationError(_by_index(body.errors))
        records = []
        for item in body.validated_data["records"]:
            cluster = item.get("cluster")
            records.append(
                UsageRecord(
                    user_id=item["user"],
                    cluster_id=_cluster_id(cluster) if cluster else None,
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


def _cluster_id(name_or_id: str):
    found = cluster_by_name_or_id(name_or_id)
    return found.pk if found else name_or_id  # unknown: the service names the record


def _by_index(errors) -> dict:
    """DRF's list errors as {"records": {"<index>": [...]}} like the service's."""
    records = errors.get("records") if isinstance(errors, dict) else None
    if not isinstance(records, list):
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
