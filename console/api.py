"""API: the logged-in user's own data (/me). Scripts' endpoints live in each app's api.py."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import IsPerson
from billing import selectors
from billing.api import MONEY, RANGE_PARAMETERS, date_range
from billing.models import BillingHistory, CreditLedgerEntry
from billing.pricing import to_cents
from billing.standing import open_stops_of
from clusters.api import AssignmentSerializer
from clusters.selectors import placement_of
from plumbing.api_docs import COMMON_ERRORS, error_responses


class ServiceStopSerializer(serializers.Serializer):
    reason = serializers.CharField()
    detail = serializers.CharField()
    in_force = serializers.BooleanField(help_text="True: your Hopsworks account is deactivated.")
    stopped_at = serializers.DateTimeField(allow_null=True)
    enforce_at = serializers.DateTimeField(help_text="When a pending stop takes effect.")
    how_to_resume = serializers.CharField()


class MyProfileSerializer(serializers.Serializer):
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
    service_stops = ServiceStopSerializer(
        many=True, help_text="Open billing stops of your service: pending or in force."
    )


class MyProfileView(APIView):
    """Your profile, your cluster, how you pay and your balance."""

    permission_classes = [IsAuthenticated, IsPerson]

    @extend_schema(responses={200: MyProfileSerializer, **error_responses(*COMMON_ERRORS)})
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
            "service_stops": open_stops_of(user),
        }
        return Response(MyProfileSerializer(data).data)


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


class MyUsageView(APIView):
    """Your month-to-date cost and your daily breakdown (default: the last 30 days)."""

    permission_classes = [IsAuthenticated, IsPerson]

    @extend_schema(
        parameters=RANGE_PARAMETERS,
        responses={200: MyUsageSerializer, **error_responses(400, *COMMON_ERRORS)},
    )
    def get(self, request):
        start, end = date_range(request)
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


class MyBillingView(APIView):
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
