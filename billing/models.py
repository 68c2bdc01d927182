from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from clusters.models import HopsworksCluster
from plumbing.db import DatabaseNow, GenRandomUUID
from plumbing.formatting import money, precise_money

ZERO = Decimal("0")
NO_CLUSTER = uuid.UUID(int=0)  # stands for "no cluster" in the uniqueness of usage rows


class SeedDecimalField(models.DecimalField):
    """The seed's `DECIMAL`: unconstrained `numeric`, so values are stored exactly as
    computed. Python-side digits and places serve forms only."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_digits", 30)
        kwargs.setdefault("decimal_places", 10)
        super().__init__(*args, **kwargs)

    def db_type(self, connection):
        return "numeric"


class BillingProfileQuerySet(models.QuerySet):
    def with_active_subscription(self):
        return self.filter(subscription_status__in=BillingProfile.ACTIVE_SUBSCRIPTION)


class BillingProfile(models.Model):
    """How a user pays. Postpaid (metered through Stripe) unless an operator switches the
    user to prepaid (credits). One row per user, created on first need. (The table keeps
    its first name, billing_account.)"""

    class Mode(models.TextChoices):
        POSTPAID = "postpaid", "Postpaid (metered)"
        PREPAID = "prepaid", "Prepaid (credits)"

    user = models.OneToOneField(
        User, on_delete=models.CASCADE, primary_key=True, related_name="billing_profile"
    )
    mode = models.TextField(choices=Mode.choices, default=Mode.POSTPAID)
    # The user's one metered subscription (postpaid), as Stripe last told us. An ended
    # status (ENDED_SUBSCRIPTION) is final for that subscription id.
    stripe_subscription_id = models.TextField(blank=True, default="")
    subscription_status = models.TextField(blank=True, default="")
    subscription_event_created = models.DateTimeField(null=True, blank=True)
    # When the subscription `started_subscription_id` began, as Stripe says (its
    # start_date): usage of months that ended before it is invoiced as an item, since the
    # subscription never bills meter events from before it existed.
    subscription_started_at = models.DateTimeField(null=True, blank=True)
    started_subscription_id = models.TextField(blank=True, default="")
    # Spending limits; empty means the default from settings (billing.limits says which).
    monthly_spending_cap = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Postpaid: the most the user is billed in a calendar month (USD). "
        "Empty: the default (SPENDING_CAP_DEFAULT).",
    )
    low_balance_threshold = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Prepaid: warn when the balance falls below this (USD). "
        "Empty: the default (LOW_BALANCE_THRESHOLD_DEFAULT).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    # Stripe's subscription statuses under which the user is billed (past_due still is).
    ACTIVE_SUBSCRIPTION = ("active", "trialing", "past_due")
    # Statuses Stripe never moves a subscription out of.
    ENDED_SUBSCRIPTION = ("canceled", "incomplete_expired")

    objects = BillingProfileQuerySet.as_manager()

    class Meta:
        db_table = "billing_account"
        permissions = [
            ("change_billing_mode", "Can switch users between prepaid and postpaid"),
            ("change_spending_limits", "Can set users' spending caps and low-balance thresholds"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(monthly_spending_cap__gte=0),
                name="billing_account_cap_not_negative",
                violation_error_message="A spending cap cannot be negative.",
            ),
            models.CheckConstraint(
                condition=models.Q(low_balance_threshold__gte=0),
                name="billing_account_threshold_not_negative",
                violation_error_message="A low-balance threshold cannot be negative.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.mode}"

    @property
    def has_active_subscription(self) -> bool:
        return is_active_subscription(self.subscription_status)

    @property
    def is_prepaid(self) -> bool:
        return self.mode == self.Mode.PREPAID


class BillingModeChange(models.Model):
    """One switch of a user's billing mode. Append-only: a switch is never edited or deleted
    (the admin shows them read-only); a switch back is a new row.

    Invariant: a user's changes are in `effective_at` order, none earlier than the start of
    the UTC day it was recorded in, so a day already begun keeps its mode. The mode of a day
    is the mode in force when it began (00:00 UTC): the `to_mode` of the latest change
    effective by then; before the first change, that change's `from_mode`
    (`billing.selectors.billing_modes_on`)."""

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="billing_mode_changes")
    from_mode = models.TextField(choices=BillingProfile.Mode.choices)
    to_mode = models.TextField(choices=BillingProfile.Mode.choices)
    effective_at = models.DateTimeField()
    actor = models.TextField(help_text="Who switched it (an operator, a command).")
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "billing_mode_change"
        ordering = ["-effective_at", "-id"]
        indexes = [
            models.Index(fields=["user", "effective_at"], name="billing_mode_change_user_at")
        ]

    def __str__(self) -> str:
        return (
            f"{self.user_id}: {self.from_mode} -> {self.to_mode} "
            f"at {self.effective_at:%Y-%m-%d %H:%M} UTC"
        )


def is_active_subscription(status: str | None) -> bool:
    """The one test of "this Stripe subscription status is billed"."""
    return status in BillingProfile.ACTIVE_SUBSCRIPTION


class Price(models.Model):
    """The rate card: a price per resource from a date on. Rows with a user are that
    user's negotiated prices and win over the card. A price change is a new row with a
    later `effective_from`; past days keep the price they were charged at."""

    class Resource(models.TextChoices):
        CPU_HOUR = "cpu_hour", "CPU hour"
        GPU_HOUR = "gpu_hour", "GPU hour"
        STORAGE_GB_MONTH = "storage_gb_month", "Storage GB-month"
        API_CALLS_1K = "api_calls_1k", "1,000 API calls"

    resource = models.TextField(choices=Resource.choices)
    unit_price = SeedDecimalField(help_text="US dollars per unit.")
    effective_from = models.DateField()
    user = models.ForeignKey(
        User,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="negotiated_prices",
        help_text="Empty for the rate card; a user for their negotiated price.",
    )
    note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "billing_price"
        ordering = ["resource", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["resource", "effective_from"],
                condition=models.Q(user__isnull=True),
                name="billing_price_one_card_price_per_day",
                violation_error_message="The rate card already has a price for this "
                "resource from that date.",
            ),
            models.UniqueConstraint(
                fields=["user", "resource", "effective_from"],
                condition=models.Q(user__isnull=False),
                name="billing_price_one_user_price_per_day",
                violation_error_message="This user already has a price for this resource "
                "from that date.",
            ),
            models.CheckConstraint(
                condition=models.Q(unit_price__gte=0), name="billing_price_not_negative"
            ),
        ]

    def __str__(self) -> str:
        who = f" for {self.user_id}" if self.user_id else ""
        price = precise_money(self.unit_price)
        return f"{self.get_resource_display()} {price} from {self.effective_from}{who}"

    @property
    def is_in_effect(self) -> bool:
        """Started on or before today: days have been (or are being) charged with it."""
        return self.effective_from <= timezone.now().date()

    def clean(self):
        """The price rules, for every way a price is written (admin form, `price_save`)."""
        errors = {}
        if self.unit_price is not None and self.unit_price < 0:
            errors["unit_price"] = "A price cannot be negative."
        if self.effective_from is not None and self.effective_from < timezone.now().date():
            errors["effective_from"] = (
                "A price cannot start in the past: past days keep the price they were "
                "charged at. Use today or a later date."
            )
        if errors:
            raise ValidationError(errors)


class UsageDaily(models.Model):
    """One user's usage on one cluster on one UTC day: the seed's `usage_daily`.

    Invariants: one row per (user, cluster, date), NULL cluster included (a database
    constraint); re-collecting a day replaces the figures, never adds a row. `total_cost`
    is priced by `billing.pricing` at 10 decimal places (never rounded to cents here).
    `credits_debited` is what this row has taken from a prepaid balance so far, so a
    re-collected day moves only the difference.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, db_default=GenRandomUUID())
    user = models.ForeignKey(
        User,
        on_delete=models.PROTECT,
        db_column="user_id",
        related_name="usage_days",
        # idx_usage_daily_user_date (user_id, date) serves every lookup by user; a second
        # index on user_id alone would only slow down writing usage.
        db_index=False,
    )
    date = models.DateField()
    cpu_hours = SeedDecimalField(default=ZERO, db_default=ZERO)
    gpu_hours = SeedDecimalField(default=ZERO, db_default=ZERO)
    storage_gb_months = SeedDecimalField(default=ZERO, db_default=ZERO)
    api_calls = models.IntegerField(default=0, db_default=0)
    total_cost = SeedDecimalField(default=ZERO, db_default=ZERO)
    hopsworks_cluster = models.ForeignKey(
        HopsworksCluster,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_column="hopsworks_cluster_id",
        related_name="usage_days",
    )
    created_at = models.DateTimeField(default=timezone.now, db_default=DatabaseNow())
    # Added to the seed.
    credits_debited = SeedDecimalField(default=ZERO, db_default=ZERO)
    credit_revision = models.IntegerField(
        default=0, db_default=0, help_text="How many credit movements this row has caused."
    )

    class BilledVia(models.TextChoices):
        STRIPE = "stripe", "Stripe (postpaid)"
        CREDITS = "credits", "Credits (prepaid)"

    billed_via = models.TextField(
        choices=BilledVia.choices,
        default=BilledVia.STRIPE,
        db_default=BilledVia.STRIPE,
        help_text="Fixed when the row is first written, from the billing mode in force when "
        "its day began (00:00 UTC).",
    )
    updated_at = models.DateTimeField(default=timezone.now, db_default=DatabaseNow())

    class Meta:
        db_table = "usage_daily"
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        ordering = ["-date", "user_id"]
        permissions = [("export_usagedaily", "Can export daily usage (CSV, XLSX)")]
        indexes = [
            models.Index(fields=["user", "date"], name="idx_usage_daily_user_date"),
            # Month-to-date figures over all users (the dashboard) read by date; the usage
            # lists (admin and API), newest day first, read their first page in this order
            # instead of sorting a whole day's rows (100,000 at 100,000 users).
            models.Index(fields=["-date", "user", "id"], name="usage_daily_date"),
        ]
        constraints = [
            # COALESCE makes rows without a cluster collide too (NULL = NULL here), on
            # PostgreSQL and SQLite alike.
            models.UniqueConstraint(
                models.F("user"),
                Coalesce("hopsworks_cluster", models.Value(NO_CLUSTER)),
                models.F("date"),
                name="usage_daily_one_row_per_user_cluster_day",
            ),
            models.CheckConstraint(
                condition=models.Q(cpu_hours__gte=0)
                & models.Q(gpu_hours__gte=0)
                & models.Q(storage_gb_months__gte=0)
                & models.Q(api_calls__gte=0)
                & models.Q(total_cost__gte=0),
                name="usage_daily_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.date} {money(self.total_cost)}"


class UsageMonthly(models.Model):
    """A month of `usage_daily`, summed per user, cluster (or none) and billing channel:
    the rollup that month-to-date figures, the dashboard, forecasts and reconciliation
    read instead of a month of daily rows.

    Invariant: each row equals `SUM(...)` and `COUNT(*)` of the `usage_daily` rows with its
    key (`month` is their `date_trunc('month', date)`), and a key without rows has no row.
    It is kept so by PostgreSQL statement-level triggers on `usage_daily` (migration
    0030), in the transaction of whatever writes usage: the upsert, an operator's SQL, a
    delete or a TRUNCATE. Nothing else writes it; `usage_monthly_rebuild()` (SQL)
    recomputes it from `usage_daily`.
    """

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(
        User,
        # Derived data: no constraint, so deleting usage and then its user needs no order
        # beyond the one usage_daily already imposes.
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_column="user_id",
        related_name="+",
        db_index=False,  # usage_monthly_key starts with user_id
    )
    hopsworks_cluster = models.ForeignKey(
        HopsworksCluster,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_column="hopsworks_cluster_id",
        related_name="+",
        db_index=False,
    )
    month = models.DateField(help_text="The first day of the month.")
    billed_via = models.TextField(choices=UsageDaily.BilledVia.choices)
    cpu_hours = SeedDecimalField(default=ZERO)
    gpu_hours = SeedDecimalField(default=ZERO)
    storage_gb_months = SeedDecimalField(default=ZERO)
    api_calls = models.BigIntegerField(default=0)  # a month of int4 days can pass 2^31
    total_cost = SeedDecimalField(default=ZERO)
    credits_debited = SeedDecimalField(default=ZERO)
    # Never below zero: the trigger raises an error if it would be (no CHECK constraint: an
    # INSERT ... ON CONFLICT checks the proposed row, a negative change, before the
    # conflict). Zero only inside the trigger, until it deletes the rows it emptied.
    days = models.IntegerField(help_text="How many usage_daily rows the sums cover.")

    class Meta:
        db_table = "usage_monthly"
        verbose_name = "monthly usage"
        verbose_name_plural = "monthly usage"
        constraints = [
            # The triggers' ON CONFLICT target; per-user month reads use its prefix.
            models.UniqueConstraint(
                models.F("user"),
                models.F("month"),
                Coalesce("hopsworks_cluster", models.Value(NO_CLUSTER)),
                models.F("billed_via"),
                name="usage_monthly_key",
            ),
        ]
        indexes = [
            # Month figures over all users (the dashboard, month to date for everyone).
            models.Index(fields=["month"], name="usage_monthly_month"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.month:%Y-%m} {money(self.total_cost)}"


class StripeBilledUser(models.Model):
    """A user who has (or had) Stripe-billed usage, and whether their subscription is live:
    what lets the unbilled usage (`billing.selectors.unbilled_usage`) start from the few
    users without a live subscription (an index on that condition) instead of an anti-join
    over every user's Stripe-billed months.

    Invariant: every user with a Stripe-billed `usage_monthly` row has a row here, and
    `subscription_live` is true only while their `billing_account` row's status is one of
    `BillingProfile.ACTIVE_SUBSCRIPTION`. (A row may outlive its usage, and may say false
    of a live subscription for an instant: readers check both, so only the two facts above
    matter.) Kept so by PostgreSQL triggers (migration 0041), in the transaction of
    whatever writes `usage_monthly` (its inserts) or `billing_account` (any change of the
    status, a delete, a TRUNCATE); nothing else writes it.
    """

    user = models.OneToOneField(
        User,
        primary_key=True,
        # Derived data: no constraint (as usage_monthly), so no order of deletes to keep.
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    subscription_live = models.BooleanField()

    class Meta:
        db_table = "billing_stripe_billed_user"
        indexes = [
            # The unbilled usage starts here: only the users without a live subscription.
            models.Index(
                fields=["user"],
                name="stripe_billed_user_not_live",
                condition=models.Q(subscription_live=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} ({'live' if self.subscription_live else 'no live'} subscription)"


class UsageClusterDaily(models.Model):
    """A day of `usage_daily`, summed per cluster (or none) and billing channel over all
    users: the rollup the dashboard's daily cost chart reads instead of 90 days of rows.

    Invariant: each row equals `SUM(...)` and `COUNT(*)` of the `usage_daily` rows with its
    key, and a key without rows has no row. Kept so by the same statement-level triggers
    as `usage_monthly` (migration 0031 extends their functions), in the writer's
    transaction; `usage_monthly_rebuild()` (SQL) recomputes both rollups.
    """

    id = models.BigAutoField(primary_key=True)
    hopsworks_cluster = models.ForeignKey(
        HopsworksCluster,
        null=True,
        blank=True,
        # Derived data: no constraint (as usage_monthly).
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_column="hopsworks_cluster_id",
        related_name="+",
        db_index=False,  # usage_cluster_daily_key starts with it
    )
    date = models.DateField()
    billed_via = models.TextField(choices=UsageDaily.BilledVia.choices)
    cpu_hours = SeedDecimalField(default=ZERO)
    gpu_hours = SeedDecimalField(default=ZERO)
    storage_gb_months = SeedDecimalField(default=ZERO)
    api_calls = models.BigIntegerField(default=0)  # a day of many users' int4 can pass 2^31
    total_cost = SeedDecimalField(default=ZERO)
    credits_debited = SeedDecimalField(default=ZERO)
    # As usage_monthly.days: never below zero (the trigger raises), zero only inside the
    # trigger, until it deletes the rows it emptied.
    usage_rows = models.IntegerField(help_text="How many usage_daily rows the sums cover.")

    class Meta:
        db_table = "usage_cluster_daily"
        verbose_name = "daily usage per cluster"
        verbose_name_plural = "daily usage per cluster"
        constraints = [
            # The triggers' ON CONFLICT target, in the order writers lock its rows.
            models.UniqueConstraint(
                Coalesce("hopsworks_cluster", models.Value(NO_CLUSTER)),
                models.F("date"),
                models.F("billed_via"),
                name="usage_cluster_daily_key",
            ),
        ]
        indexes = [
            # The chart's days over all clusters.
            models.Index(fields=["date"], name="usage_cluster_daily_date"),
            # Empty rows (the upsert once pre-locked rows this way; it now takes turns
            # per cluster-month instead, usage._take_cluster_months).
            models.Index(
                fields=["id"],
                name="usage_cluster_daily_empty",
                condition=models.Q(usage_rows=0),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.hopsworks_cluster_id or 'no cluster'} {self.date} {money(self.total_cost)}"


class UserCredits(models.Model):
    """A prepaid user's credit summary: the seed's `user_credits`.

    Invariant: it changes only in the same transaction as a `CreditLedgerEntry`, under the
    row's lock, and `total_purchased - total_used` equals the newest entry's
    `balance_after`. `check_credit_balances --fix` recomputes it from the ledger.
    """

    user = models.OneToOneField(
        User,
        on_delete=models.PROTECT,
        primary_key=True,
        db_column="user_id",
        related_name="credits",
    )
    total_purchased = SeedDecimalField(default=ZERO, db_default=ZERO)
    total_used = SeedDecimalField(default=ZERO, db_default=ZERO)
    cpu_hours_used = SeedDecimalField(default=ZERO, db_default=ZERO)
    gpu_hours_used = SeedDecimalField(default=ZERO, db_default=ZERO)
    storage_gb_months = SeedDecimalField(default=ZERO, db_default=ZERO)
    updated_at = models.DateTimeField(default=timezone.now, db_default=DatabaseNow())

    class Meta:
        db_table = "user_credits"
        verbose_name = "user credits"
        verbose_name_plural = "user credits"

    def __str__(self) -> str:
        return f"{self.user_id}: {money(self.balance)}"

    @property
    def balance(self) -> Decimal:
        return self.total_purchased - self.total_used


class CreditLedgerEntry(models.Model):
    """One movement of prepaid credit. Append-only: a correction is a new entry, never an
    edit or a delete (the admin offers neither).

    `amount` is signed (+ adds credit, - takes it); `balance_after` is the balance once it
    applied. `reference` is unique, so a retried purchase, grant or debit applies once.
    """

    class Kind(models.TextChoices):
        PURCHASE = "purchase", "Purchase"
        GRANT = "grant", "Grant"
        USAGE = "usage", "Usage"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"

    # No index of its own (nor Django's `_like` copy): the user's composite indexes below
    # lead with it, and every ledger row written updated both for nothing (issue 16).
    user = models.ForeignKey(
        User, on_delete=models.PROTECT, related_name="credit_entries", db_index=False
    )
    kind = models.TextField(choices=Kind.choices)
    amount = SeedDecimalField()
    balance_after = SeedDecimalField()
    reference = models.TextField(unique=True)
    actor = models.TextField(help_text="Who or what caused it (an operator, Stripe, a run).")
    reason = models.TextField(blank=True, default="")
    usage = models.ForeignKey(
        UsageDaily,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="credit_entries",
    )
    # For usage entries: the change in quantities this entry paid for.
    cpu_hours = SeedDecimalField(default=ZERO)
    gpu_hours = SeedDecimalField(default=ZERO)
    storage_gb_months = SeedDecimalField(default=ZERO)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "billing_credit_ledger"
        verbose_name = "credit ledger entry"
        verbose_name_plural = "credit ledger"
        ordering = ["-created_at", "-id"]
        # Entries are written by services only; granting is the one kind an operator adds.
        permissions = [
            ("grant_credits", "Can grant credits to users"),
            ("export_creditledgerentry", "Can export the credit ledger (CSV, XLSX)"),
        ]
        indexes = [
            models.Index(fields=["user", "-id"], name="credit_ledger_user_newest"),
            # The ledger list, newest first (its ordering).
            models.Index(fields=["-created_at", "-id"], name="credit_ledger_newest"),
            # Its kind filter: a page of a rare kind without reading every newer entry.
            models.Index(fields=["kind", "-created_at", "-id"], name="credit_ledger_kind_newest"),
            # A user's entries newest first (the list's order): a partial search reads each
            # matching user's newest entries here (accounts.admin_search.UserFirstRows).
            models.Index(fields=["user", "-created_at", "-id"], name="credit_ledger_user_created"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {money(self.amount)} for {self.user_id}"


class UsageCollectionRun(models.Model):
    """Collecting one cluster's usage for one day: the last attempt, and what is stored.

    `status`, `error`, `attempts`, `started_at` and `finished_at` are the last attempt's.
    `coverage_minutes`, `fetched_at` and `attribution` describe the figures stored in
    `usage_daily` for this cluster and day, so they change only when figures are written:
    how many of the day's 1440 minutes OpenCost's answer covered (NULL for a day collected
    before this was recorded, which counts as a whole day), when that answer was read, and
    which user each namespace was billed to. A re-collection never writes an answer that
    covers less than what is stored, or was read earlier, unless an operator forces it; and
    a namespace keeps the owner it was first billed to.
    """

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    cluster = models.ForeignKey(
        HopsworksCluster, on_delete=models.CASCADE, related_name="collection_runs"
    )
    date = models.DateField()
    status = models.TextField(choices=Status.choices, default=Status.RUNNING)
    rows_written = models.PositiveIntegerField(default=0)
    unknown_namespaces = models.JSONField(default=list, blank=True)
    notes = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    coverage_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Minutes of the UTC day the stored figures cover."
    )
    fetched_at = models.DateTimeField(
        null=True, blank=True, help_text="When the stored figures were read from OpenCost."
    )
    attribution = models.JSONField(
        default=dict,
        blank=True,
        help_text='Namespace -> {"project": name, "user_id": id} the stored figures used.',
    )

    class Meta:
        db_table = "billing_usage_collection_run"
        ordering = ["-date", "cluster_id"]
        permissions = [("collect_usage", "Can collect clusters' usage now")]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "date"], name="collection_run_per_day")
        ]

    def __str__(self) -> str:
        return f"{self.cluster_id} {self.date}: {self.status}"


class BillingHistory(models.Model):
    """An invoice: the seed's `billing_history`, one row per Stripe invoice.

    Written only from Stripe (webhooks and the "sync invoices" repair), in major units as
    Decimal. `amount` is the invoice's total, whatever was paid, credited or refunded
    since; `amount_credited` is the sum of its issued credit notes and `amount_refunded`
    the money returned on its payment (each Stripe's own running total, so a redelivered
    or reordered event cannot count twice). `status` is one of the seed's four;
    `stripe_status` keeps Stripe's own (uncollectible shows as failed). `stripe_event_created`
    is the time of the newest Stripe event applied, so an older event delivered late never
    overwrites a newer state; paid and void are final.

    A receipt is a row without an invoice: a credit purchase (its amount) or a refund of one
    (a negative amount), status paid, named by its unique `receipt_reference` and written
    with the ledger entry that moves the credits.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        FAILED = "failed", "Payment failed"
        VOID = "void", "Void"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, db_default=GenRandomUUID())
    user = models.ForeignKey(
        User,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_column="user_id",
        related_name="invoices",
    )
    amount = SeedDecimalField()
    currency = models.TextField(default="USD", db_default="USD")
    description = models.TextField(null=True, blank=True)
    stripe_invoice_id = models.TextField(null=True, blank=True, unique=True)
    status = models.TextField(
        choices=Status.choices, default=Status.PENDING, db_default=Status.PENDING
    )
    created_at = models.DateTimeField(default=timezone.now, db_default=DatabaseNow())
    # Added to the seed.
    hosted_invoice_url = models.TextField(blank=True, default="")
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    stripe_event_created = models.DateTimeField(null=True, blank=True)
    # When Stripe finalized it (moved it past draft): from then on the usage of its period
    # is never billed again, and corrections to it go on a later invoice as items.
    finalized_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    stripe_status = models.TextField(
        blank=True,
        default="",
        db_default="",
        help_text="Stripe's own invoice status (draft, open, paid, uncollectible, void).",
    )
    amount_credited = SeedDecimalField(
        default=ZERO, db_default=ZERO, help_text="Issued (not voided) credit notes."
    )
    amount_refunded = SeedDecimalField(
        default=ZERO, db_default=ZERO, help_text="Refunded on the invoice's payment."
    )
    # A receipt (a credit purchase or its refund) has no Stripe invoice: this names it
    # (`stripe:checkout:<cs_id>`, `stripe:refund:<re_id>`), so it is written once.
    receipt_reference = models.TextField(null=True, blank=True, unique=True)

    FINAL = (Status.PAID, Status.VOID)

    class Meta:
        db_table = "billing_history"
        verbose_name = "invoice"
        verbose_name_plural = "billing history"
        ordering = ["-created_at"]
        permissions = [
            ("sync_invoices", "Can sync users' invoices from Stripe"),
            ("export_billinghistory", "Can export billing history (CSV, XLSX)"),
        ]
        indexes = [
            # The billing history list, newest first (the admin adds the id).
            models.Index(fields=["-created_at", "-id"], name="billing_history_newest"),
            # Each filter of the list: its page newest first, and (led by the column) the
            # filter's distinct values (plumbing.admin_lists.IndexedValuesFilter).
            models.Index(fields=["status", "-created_at", "-id"], name="invoice_status_newest"),
            models.Index(
                fields=["stripe_status", "-created_at", "-id"], name="invoice_stripe_status_newest"
            ),
            models.Index(fields=["currency", "-created_at", "-id"], name="invoice_currency_newest"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["pending", "paid", "failed", "void"]),
                name="billing_history_status_valid",
            )
        ]

    def __str__(self) -> str:
        amount = money(self.amount, self.currency)
        return f"{self.stripe_invoice_id or self.pk}: {amount} {self.status}"


class StripeEvent(models.Model):
    """A webhook event from Stripe, stored by its unique id before it is processed, so a
    duplicate delivery is recognised and a failed processing can be retried.

    `unmatched`: about a customer or user we do not know (yet). Answered 200, so Stripe stops
    redelivering; not retried by `retry_stripe_events`; an operator processes it again once
    the customer is linked."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored (type not handled)"
        UNMATCHED = "unmatched", "Unmatched (no user of ours)"
        FAILED = "failed", "Failed"

    id = models.TextField(primary_key=True, verbose_name="Stripe event id")
    type = models.TextField()
    created = models.DateTimeField(help_text="When Stripe created the event.")
    livemode = models.BooleanField(default=False)
    payload = models.JSONField()
    status = models.TextField(choices=Status.choices, default=Status.RECEIVED)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    # When processing was last tried: retries take the oldest first.
    last_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_stripe_event"
        ordering = ["-created"]
        indexes = [
            # The retry job's oldest failed first, and the list's status filter newest first
            # (read backwards; the id makes the order total).
            models.Index(fields=["status", "created", "id"], name="stripe_event_status"),
            # The events list, newest first (the admin adds the id to make it total).
            models.Index(fields=["-created", "-id"], name="stripe_event_newest"),
            # The type filter: its page newest first, and the distinct types.
            models.Index(fields=["type", "-created", "-id"], name="stripe_event_type_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.type} ({self.status})"


class StripeCatalogEntry(models.Model):
    """What `setup_stripe_billing` made (or found) in Stripe for one rate-card resource."""

    resource = models.TextField(primary_key=True, choices=Price.Resource.choices)
    event_name = models.TextField(unique=True)
    meter_id = models.TextField()
    product_id = models.TextField()
    price_id = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "billing_stripe_catalog"
        verbose_name = "Stripe catalog entry"
        verbose_name_plural = "Stripe catalog"

    def __str__(self) -> str:
        return f"{self.resource}: {self.price_id}"


class StripeUsageReport(models.Model):
    """What has been reported to Stripe for one user, month and resource, in cents.

    Invariant: `reported_cents` is the sum of the meter events Stripe accepted for it
    and of this resource's share of the sent invoice items for the month (`adjusted_cents`);
    `report_usage_to_stripe` sends only the difference to our figure (negative when a
    day was corrected downwards). `events_sent` numbers the events, so each one has a
    deterministic identifier, and a pending event is committed before it is sent.
    """

    user = models.ForeignKey(
        User,
        on_delete=models.PROTECT,
        related_name="stripe_reports",
        # stripe_usage_report_once (user, month, resource) serves every lookup by user; an
        # index on user_id alone would only make each report write (batches of thousands
        # of rows, twice per event) update one more index.
        db_index=False,
    )
    month = models.DateField(help_text="First day of the month.")
    resource = models.TextField(choices=Price.Resource.choices)
    reported_cents = models.BigIntegerField(default=0)
    events_sent = models.PositiveIntegerField(default=0)
    # An event decided but not yet confirmed by Stripe: always resent with exactly this
    # identifier and value, so a lost answer never turns into a different amount.
    pending_identifier = models.TextField(blank=True, default="")
    pending_cents = models.BigIntegerField(null=True, blank=True)
    # When the pending event was decided (and first sent), and the timestamp it carries:
    # within IDENTIFIER_WINDOW it is resent as is; after it, Stripe's meter event summaries
    # say whether it arrived before anything is resent.
    pending_since = models.DateTimeField(null=True, blank=True)
    pending_timestamp = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_reported_at = models.DateTimeField(null=True, blank=True)
    # The part of reported_cents that went out as invoice items (StripeUsageAdjustment),
    # not meter events: Stripe's meter total for the month is reported - adjusted.
    adjusted_cents = models.BigIntegerField(default=0)

    class Meta:
        db_table = "billing_stripe_usage_report"
        # No index on the pending columns: a month with a pending event stays due
        # (StripeReportDue), so the reporting run finds it there, and a row's two writes
        # per event (decided, accepted) change no indexed column and stay on their page
        # (HOT, with the room migration 0040 leaves on each page). The operators' list
        # reads newest months first by `stripe_usage_report_month`, whose columns never
        # change either (its month filter's values come from it too).
        constraints = [
            models.UniqueConstraint(
                fields=["user", "month", "resource"], name="stripe_usage_report_once"
            )
        ]
        indexes = [models.Index(fields=["-month", "-id"], name="stripe_usage_report_month")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.month:%Y-%m} {self.resource}: {self.reported_cents}c"


class StripeReportDue(models.Model):
    """A user-month whose Stripe-billed usage changed since it was last reported: written by
    `usage_upsert` in the transaction that changes the usage, removed by the Stripe
    reporting once it has decided the month's events. So a reporting run reads only these
    (and the events still pending), never the whole history.

    Invariant: a change of a Stripe-billed usage row leaves a row here until a reporting
    run has decided that month afresh and Stripe has taken its events (a month with an
    event still pending stays here); `version` grows with each change, and the reporter
    removes the row only at the version it read, so a change made meanwhile stays due.
    """

    # Served by the (user, month) unique index: no index of its own.
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+", db_index=False)
    month = models.DateField(help_text="First day of the month.")
    version = models.BigIntegerField(default=1)

    class Meta:
        db_table = "billing_stripe_report_due"
        constraints = [
            models.UniqueConstraint(fields=["user", "month"], name="stripe_report_due_once")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.month:%Y-%m} (v{self.version})"


class ReconciliationRun(models.Model):
    """One run of `reconcile_billing` (the command or the daily job): for each user and
    month, our usage, what we reported, what Stripe counted and what it invoiced, side by
    side, and every difference with its cause. Written once by `reconciliation_record`;
    the admin shows it read-only (the run itself makes Stripe calls, so no web request
    does it)."""

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    months = models.TextField(help_text="The months reconciled, YYYY-MM, comma separated.")
    users = models.TextField(blank=True, default="", help_text="Only these users, if given.")
    actor = models.TextField(help_text="Who or what ran it (the daily job, a command).")
    lines = models.JSONField(default=list, help_text="One entry per user and month.")
    differences = models.PositiveIntegerField(default=0)
    unexplained = models.PositiveIntegerField(
        default=0, help_text="Differences needing an operator: the run fails on any."
    )
    errors = models.JSONField(default=list, blank=True)

    class Meta:
        db_table = "billing_reconciliation_run"
        verbose_name = "reconciliation"
        verbose_name_plural = "reconciliation"
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.months} at {self.started_at:%Y-%m-%d %H:%M}: {self.unexplained} unexplained"


class StripeUsageAdjustment(models.Model):
    """A correction to a month Stripe no longer bills through meter events (its invoice is
    finalized, it ended before the subscription began, or it is older than Stripe takes
    events): an invoice item on the customer's next invoice, negative for a credit.
    Append-only: a further correction is a new row.

    Invariant: decided and committed (pending) before it is sent, with a unique
    `identifier` that is also the idempotency key and the item's metadata, so a lost answer
    is found at Stripe or resent, never sent twice. Once sent, its `resources` cents are in
    the month's `StripeUsageReport.reported_cents` (and `adjusted_cents`)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="stripe_adjustments")
    month = models.DateField(help_text="First day of the corrected month.")
    cents = models.BigIntegerField(help_text="Signed: positive charges, negative credits.")
    resources = models.JSONField(help_text="The cents per rate-card resource.")
    description = models.TextField()
    identifier = models.TextField(unique=True)
    stripe_invoice_item_id = models.TextField(blank=True, default="")
    status = models.TextField(choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_stripe_usage_adjustment"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "month"], name="stripe_adjustment_user_month"),
            # The reporting run reads the pending ones in (user, month) order.
            models.Index(
                fields=["user", "month"],
                name="stripe_adjustment_pending",
                condition=models.Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.month:%Y-%m}: {self.cents:+}c ({self.status})"


class CreditPurchase(models.Model):
    """One prepaid credit purchase paid through Stripe Checkout (payment mode), written in
    the same transaction as its PURCHASE ledger entry.

    Invariant: `amount_refunded` and `amount_disputed` are what the ledger took back for
    this purchase (REFUND entries `stripe:refund:<re_id>`, ADJUSTMENT entries
    `stripe:dispute:<dp_id>:hold` less their `:release`); neither exceeds `amount`, and
    together they never take back more than was bought. Changed only under the row's lock,
    together with the ledger entry that moves the credits.
    """

    class Status(models.TextChoices):
        PAID = "paid", "Paid"
        PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"
        REFUNDED = "refunded", "Refunded"
        DISPUTED = "disputed", "Disputed (amount held)"
        DISPUTE_WON = "dispute_won", "Dispute won (released)"
        DISPUTE_LOST = "dispute_lost", "Dispute lost (taken back)"

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="credit_purchases")
    stripe_checkout_session_id = models.TextField(unique=True)
    stripe_payment_intent_id = models.TextField(blank=True, default="", db_index=True)
    stripe_charge_id = models.TextField(blank=True, default="", db_index=True)
    amount = SeedDecimalField()
    currency = models.TextField(default="USD")
    amount_refunded = SeedDecimalField(default=ZERO)
    amount_disputed = SeedDecimalField(default=ZERO, help_text="Held for an open or lost dispute.")
    status = models.TextField(choices=Status.choices, default=Status.PAID)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "billing_credit_purchase"
        ordering = ["-created_at", "-id"]
        indexes = [
            # The purchases list (billing/admin/credits.py): newest first, and its currency
            # filter's values (plumbing.admin_lists.IndexedValuesFilter).
            models.Index(fields=["-created_at", "-id"], name="credit_purchase_newest"),
            models.Index(fields=["currency"], name="purchase_currency_filter"),
        ]
        permissions = [("refund_credit_purchase", "Can refund credit purchases through Stripe")]

    def __str__(self) -> str:
        return f"{self.user_id}: {money(self.amount, self.currency)} ({self.status})"

    @property
    def refundable(self) -> Decimal:
        return self.amount - self.amount_refunded - self.amount_disputed


class ServiceStop(models.Model):
    """A billing stop of a user's service: why the user is no longer eligible, when they
    lose their Hopsworks account (`enforce_at`, after the grace period), when they did
    (`stopped_at`), and when and how it ended (`resolved_at`, `resolution`).

    Append-only history: a row is opened once, then only moved forward (enforced, then
    resolved); it is never deleted, and a later stop for the same reason is a new row.
    Invariant: at most one open (unresolved) stop per user and reason (a partial unique
    constraint), so two evaluations at once never open two. A stop is in force while it is
    open and enforced: the user's Hopsworks account is then deactivated
    (`billing.gate.access_blocker`); they keep their assignment and their data. Written
    only by `billing.standing`.
    """

    class Reason(models.TextChoices):
        BALANCE_BELOW_FLOOR = "balance_below_floor", "Prepaid balance below the floor"
        OVER_CAP = "over_cap", "Over the monthly spending cap"
        NO_SUBSCRIPTION = "no_subscription", "No live subscription"
        PAYMENT_FAILED = "payment_failed", "Invoice payment failed"

    class Resolution(models.TextChoices):
        ELIGIBLE = "eligible", "Eligible again"
        LIFTED = "lifted", "Lifted by an operator"

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="service_stops")
    reason = models.TextField(choices=Reason.choices)
    detail = models.TextField(blank=True, default="", help_text="The figures when detected.")
    detected_at = models.DateTimeField()
    enforce_at = models.DateTimeField(help_text="Detected plus the grace period.")
    stopped_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(choices=Resolution.choices, blank=True, default="")
    resolution_note = models.TextField(
        blank=True, default="", help_text="What made the user eligible, or the operator's reason."
    )
    resolved_by = models.TextField(blank=True, default="")
    # A lifted stop holds off a new stop for the same reason until then (a fresh period,
    # chosen by the operator); after it, a user still ineligible gets a new stop and grace.
    lifted_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_service_stop"
        ordering = ["-detected_at", "-id"]
        permissions = [("lift_service_stop", "Can lift users' service stops")]
        indexes = [models.Index(fields=["user", "reason"], name="service_stop_user_reason")]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "reason"],
                condition=models.Q(resolved_at__isnull=True),
                name="service_stop_one_open_per_reason",
                violation_error_message="This user already has an open stop for this reason.",
            ),
            models.CheckConstraint(
                condition=models.Q(resolved_at__isnull=True, resolution="")
                | (models.Q(resolved_at__isnull=False) & ~models.Q(resolution="")),
                name="service_stop_resolution_with_time",
            ),
            models.CheckConstraint(
                condition=~models.Q(resolution="lifted") | ~models.Q(resolution_note=""),
                name="service_stop_lift_has_reason",
                violation_error_message="Say why the stop is lifted.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.get_reason_display()} ({self.state})"

    @property
    def state(self) -> str:
        if self.resolved_at is not None:
            return "resolved"
        return "enforced" if self.stopped_at is not None else "pending"

    @property
    def in_force(self) -> bool:
        return self.resolved_at is None and self.stopped_at is not None


class BillingAdjustment(models.Model):
    """An operator's credit or debit to a user, with its reason, where the user's money is:
    the prepaid ledger, or Stripe for postpaid (a credit on the customer's balance, a
    credit note on an open invoice, an invoice item on the next invoice). Also the debt a
    prepaid balance carries to Stripe when the user switches to postpaid.

    Append-only: amount, channel, reason and reference never change; a correction is a new
    adjustment. Invariant: `reference` is unique (a resubmitted form applies once) and is the
    Stripe idempotency key and the Stripe object's `billing_adjustment` metadata, so a lost
    answer is found at Stripe, never sent twice. A ledger adjustment is written `sent`
    together with its ledger entry (the same reference); a Stripe one is committed `pending`
    before it is sent, stays `pending` (with the error) while Stripe is unavailable and is
    retried by a job, and is `failed` when Stripe refused it (`error` says why)."""

    class Direction(models.TextChoices):
        CREDIT = "credit", "Credit (to the user)"
        DEBIT = "debit", "Debit (charged to the user)"

    class Channel(models.TextChoices):
        LEDGER = "ledger", "Prepaid credit ledger"
        CUSTOMER_BALANCE = "stripe_customer_balance", "Stripe customer balance"
        INVOICE_ITEM = "stripe_invoice_item", "Stripe invoice item"
        CREDIT_NOTE = "stripe_credit_note", "Stripe credit note"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending (to be sent)"
        SENT = "sent", "Sent (applied)"
        FAILED = "failed", "Failed (refused)"

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="billing_adjustments")
    direction = models.TextField(choices=Direction.choices)
    amount = models.DecimalField(
        max_digits=12, decimal_places=2, help_text="US dollars, positive either way."
    )
    currency = models.TextField(default="usd")
    channel = models.TextField(choices=Channel.choices)
    reason = models.TextField()
    actor = models.TextField(help_text="Who made it (an operator, the mode switch).")
    reference = models.TextField(unique=True)
    stripe_customer_id = models.TextField(blank=True, default="")
    stripe_invoice_id = models.TextField(
        blank=True, default="", help_text="The open invoice a credit note is for."
    )
    stripe_object_id = models.TextField(blank=True, default="")
    status = models.TextField(choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_adjustment"
        ordering = ["-created_at", "-id"]
        permissions = [("debit_account", "Can debit users (a charge with a reason)")]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="billing_adjustment_user"),
            models.Index(fields=["status", "created_at"], name="billing_adjustment_status"),
            # The operators' list, newest first (billing/admin/credits.py).
            models.Index(fields=["-created_at", "-id"], name="billing_adjustment_newest"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount__gt=0), name="billing_adjustment_amount_positive"
            ),
            models.CheckConstraint(
                condition=~models.Q(reason=""), name="billing_adjustment_has_reason"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {money(self.amount)} for {self.user_id} ({self.status})"


class AccountClosure(models.Model):
    """A user's account closed (by an operator, or by the user's deletion in Auth0): one
    row per user, never deleted, and the user's row is kept with it.

    Invariant: from `closed_at` on nothing more is billed: usage of later days is never
    collected for the user, and the close day's storage is billed up to `closed_at` only
    (prorated); its compute is what OpenCost counted when the day was collected for the
    close. Each step's field is set once, when that step is done, by the job
    `billing.close_account` (idempotent, retried while Stripe or Hopsworks is down;
    `last_error` says what it waits for): the close day collected, then (postpaid) all usage
    reported and the subscription canceled with a final invoice, or (prepaid) the balance
    left for refund; the cluster slot released; the Hopsworks account deactivated.
    """

    user = models.OneToOneField(
        User, on_delete=models.PROTECT, primary_key=True, related_name="closure"
    )
    closed_at = models.DateTimeField(help_text="Nothing is billed after this moment.")
    actor = models.TextField(help_text="Who closed it (an operator, auth0).")
    reason = models.TextField()
    mode = models.TextField(choices=BillingProfile.Mode.choices)
    usage_collected_at = models.DateTimeField(
        null=True, blank=True, help_text="When the usage up to the close was collected."
    )
    usage_reported_at = models.DateTimeField(
        null=True, blank=True, help_text="Postpaid: when all of it was reported to Stripe."
    )
    subscription_id = models.TextField(blank=True, default="")
    subscription_canceled_at = models.DateTimeField(null=True, blank=True)
    final_invoice_id = models.TextField(blank=True, default="")
    prepaid_balance = SeedDecimalField(
        null=True, blank=True, help_text="Prepaid: the balance left once the close day was debited."
    )
    slot_released_at = models.DateTimeField(null=True, blank=True)
    account_deactivated_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "billing_account_closure"
        ordering = ["-closed_at"]
        permissions = [("close_account", "Can close users' accounts")]

    def __str__(self) -> str:
        state = "closed" if self.finished_at else "closing"
        return f"{self.user_id}: {state} at {self.closed_at:%Y-%m-%d %H:%M} UTC"


class SubscriptionEnd(models.Model):
    """A postpaid subscription that ended, and how what was reported to it is invoiced: one
    row per Stripe subscription (its id is the key), so a duplicate or late
    `customer.subscription.deleted` has one effect.

    `ended_by` "us" (an account close canceled it with a final invoice: nothing more to do);
    "stripe" (canceled in the portal or dashboard): unless Stripe already invoiced the last
    period, a final invoice is made of the meter events Stripe counted in it
    (`final_invoice_id`, with the idempotency key `final-<subscription id>`)."""

    class EndedBy(models.TextChoices):
        US = "us", "Us (account close)"
        STRIPE = "stripe", "Outside our flow (portal, dashboard)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        INVOICED = "invoiced", "Final invoice made"
        COVERED = "covered", "Already invoiced by Stripe"
        NOTHING_OWED = "nothing_owed", "Nothing reported to invoice"

    subscription_id = models.TextField(primary_key=True)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="subscription_ends")
    ended_by = models.TextField(choices=EndedBy.choices)
    status = models.TextField(choices=Status.choices, default=Status.PENDING)
    period_start = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    final_invoice_id = models.TextField(blank=True, default="")
    invoiced_cents = models.BigIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_subscription_end"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.subscription_id} ({self.ended_by}): {self.status}"


class Auth0LogEvent(models.Model):
    """One Auth0 log event received on the log stream webhook, stored by its unique log id
    so a redelivery has one effect. Only user deletions (`sdu`) act: stored `pending`, then
    a job closes the account; one about a user we do not know is kept as `unknown_user`."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Received, to be applied"
        CLOSED = "closed", "Account closed"
        ALREADY_CLOSED = "already_closed", "Account already closed"
        UNKNOWN_USER = "unknown_user", "No user of ours"
        IGNORED = "ignored", "Type not handled"
        REFUSED = "refused", "Close refused"

    log_id = models.TextField(primary_key=True)
    type = models.TextField()
    user_id = models.TextField(blank=True, default="")
    outcome = models.TextField(choices=Outcome.choices)
    detail = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(default=timezone.now)
    # When Auth0 logged it (the deletion's time: the account is closed from then).
    occurred_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_auth0_log_event"
        ordering = ["-received_at"]
        indexes = [
            # The operators' list, newest first, and its exact search by user id
            # (billing/admin/closing.py).
            models.Index(fields=["-received_at", "-log_id"], name="auth0_log_event_newest"),
            models.Index(fields=["user_id"], name="auth0_log_event_user"),
            # Filtered by outcome (most are "ignored": the others are rare).
            models.Index(
                fields=["outcome", "-received_at", "-log_id"],
                name="auth0_log_event_outcome_newest",
            ),
        ]
        verbose_name = "Auth0 log event"

    def __str__(self) -> str:
        return f"{self.log_id} {self.type}: {self.outcome}"


class SpendingLimitChange(models.Model):
    """One change of a user's spending cap or low-balance threshold, by them or an operator.
    Append-only: the history of a user's limits; a change back is a new row. `old` and `new`
    empty mean "the default from settings" (`billing.limits`)."""

    class Field(models.TextChoices):
        MONTHLY_SPENDING_CAP = "monthly_spending_cap", "Monthly spending cap"
        LOW_BALANCE_THRESHOLD = "low_balance_threshold", "Low-balance threshold"

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="spending_limit_changes")
    field = models.TextField(choices=Field.choices)
    old = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    new = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    actor = models.TextField(help_text="Who changed it (the user, an operator).")
    by_user = models.BooleanField(help_text="Set by the user on their page (within their limit).")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "billing_spending_limit_change"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-id"], name="spending_limit_change_user"),
            # The operators' list, newest first (billing/admin/spending.py).
            models.Index(fields=["-created_at", "-id"], name="spending_limit_change_newest"),
        ]

    def __str__(self) -> str:
        old, new = (money(v) if v is not None else "default" for v in (self.old, self.new))
        return f"{self.user_id} {self.field}: {old} -> {new}"


class SpendingAlert(models.Model):
    """One spending alert to a user, sent once by email. Append-only (only its delivery
    fields, sent_at / attempts / error, move).

    Unique per (user, kind, period), so a retried or concurrent evaluation inserts it once
    (INSERT ... ON CONFLICT DO NOTHING) and only the transaction that inserted it queues the
    email:
    - postpaid, `cap_80` / `cap_90` / `cap_100`: the month-to-date cost of the calendar month
      (UTC) reached that share of the cap; `period` is the month, "YYYY-MM";
    - prepaid, `low_balance`: the balance is below the low-balance threshold; `period` is
      "since-<ledger entry id>", the newest credit ledger entry that left the balance at or
      above the threshold ("since-0": never was). A crossing alerts once; a top-up back to
      the threshold or above writes a newer such entry, which re-arms the alert for the next
      crossing.
    `amount` is the figure that crossed (month-to-date cost, or balance) and `limit_amount` the
    cap or threshold in force, both in USD."""

    class Kind(models.TextChoices):
        CAP_80 = "cap_80", "80% of the monthly spending cap"
        CAP_90 = "cap_90", "90% of the monthly spending cap"
        CAP_100 = "cap_100", "Monthly spending cap reached"
        LOW_BALANCE = "low_balance", "Credit balance below the low-balance threshold"

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="spending_alerts")
    kind = models.TextField(choices=Kind.choices)
    period = models.TextField()
    amount = SeedDecimalField(help_text="The month-to-date cost, or the balance, in USD.")
    limit_amount = SeedDecimalField(help_text="The cap or threshold in force, in USD.")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "billing_spending_alert"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "kind", "period"], name="spending_alert_once_per_period"
            )
        ]
        indexes = [
            models.Index(fields=["user", "-id"], name="spending_alert_user"),
            # The operators' list, newest first (billing/admin/spending.py).
            models.Index(fields=["-created_at", "-id"], name="spending_alert_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.kind} {self.period}"

    @property
    def status(self) -> str:
        if self.sent_at:
            return "sent"
        return "failed, retried" if self.error else "queued"
