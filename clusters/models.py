from __future__ import annotations

import uuid

from django.core.validators import MaxLengthValidator
from django.db import models
from django.db.models.functions import Length, Lower
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone

from accounts.models import User
from clusters.hopsworks import HopsworksClient
from plumbing import outbound
from plumbing.db import DatabaseNow, GenRandomUUID
from plumbing.encryption import EncryptedTextField


def max_users_problem(max_users: int | None, *, assigned: int) -> str | None:
    """The one rule for a cluster's max_users: zero or more, never below the users already
    assigned (the form says so early; the service checks again under the row lock)."""
    if max_users is None or max_users < 0:
        return "Max users must be zero or more."
    if max_users < assigned:
        return (
            f"{assigned} users are assigned to this cluster; max users cannot be lower. "
            "Move some users first."
        )
    return None


# A cluster's name is a short label shown in every list.
CLUSTER_NAME_MAX_LENGTH = 64


class HopsworksCluster(models.Model):
    """A Hopsworks cluster users are placed on: the seed's `hopsworks_clusters`.

    Invariant: `current_users` equals the number of assignments to the cluster and never
    exceeds `max_users` (a database check says so). It changes only in `clusters.services`,
    in the same transaction as the assignment it counts, under the cluster's row lock.
    `api_key` and `kubeconfig` are encrypted at rest.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        MAINTENANCE = "maintenance", "Maintenance"
        INACTIVE = "inactive", "Inactive"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, db_default=GenRandomUUID())
    # TEXT in the seed; the length is limited by validation and a CHECK, not the type.
    name = models.TextField(
        unique=True,
        max_length=CLUSTER_NAME_MAX_LENGTH,
        validators=[MaxLengthValidator(CLUSTER_NAME_MAX_LENGTH)],
    )
    api_url = models.TextField(
        verbose_name="API URL",
        help_text="The cluster's base URL, e.g. https://hopsworks.example.com (https; plain "
        "http only for localhost).",
    )
    api_key = EncryptedTextField(verbose_name="API key")
    max_users = models.IntegerField(default=100, db_default=100)
    current_users = models.IntegerField(default=0, db_default=0, editable=False)
    status = models.TextField(
        choices=Status.choices, default=Status.ACTIVE, db_default=Status.ACTIVE
    )
    kubeconfig = EncryptedTextField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_default=DatabaseNow())
    # Added to the seed: a cluster behind a private CA is verified against this bundle.
    ca_bundle = models.TextField(
        null=True,
        blank=True,
        verbose_name="CA bundle",
        help_text="PEM certificate(s) of the CA that signed the cluster's TLS certificate, "
        "when it is not a public CA. TLS is always verified.",
    )
    # Added to the seed: when "Test the connection" last passed. A new cluster stays in
    # maintenance (takes no users) until it has.
    connection_ok_at = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name="connection test passed"
    )

    class Meta:
        db_table = "hopsworks_clusters"
        ordering = ["name"]
        constraints = [
            # One cluster per address: services store the normalized URL
            # (hopsworks.normalize_api_url); the index also catches case and a trailing
            # slash in rows written before, or by hand.
            models.UniqueConstraint(
                Lower(
                    models.Func(
                        models.F("api_url"),
                        models.Value("/"),
                        function="RTRIM",
                        output_field=models.TextField(),
                    )
                ),
                name="hopsworks_clusters_api_url_unique",
                violation_error_message="Another cluster already uses this API URL.",
            ),
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("name"), CLUSTER_NAME_MAX_LENGTH),
                name="hopsworks_clusters_name_length",
                violation_error_message=f"A cluster name has at most {CLUSTER_NAME_MAX_LENGTH} "
                "characters.",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "maintenance", "inactive"]),
                name="hopsworks_clusters_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(max_users__gte=0), name="hopsworks_clusters_max_users_gte_0"
            ),
            models.CheckConstraint(
                condition=models.Q(current_users__gte=0)
                & models.Q(current_users__lte=models.F("max_users")),
                name="hopsworks_clusters_current_users_within_max",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def free_slots(self) -> int:
        return max(self.max_users - self.current_users, 0)

    def hopsworks_client(self, *, quick: bool = False) -> HopsworksClient:
        """The cluster's API client. Inside a web request (or with `quick`) each call is one
        attempt within the short deadline; in a management command (`background_work`) it
        gets retries and the longer one (`plumbing.outbound.limits`). Raises
        SecretDecryptionError for a key that cannot be read."""
        limits = outbound.limits(quick=quick)
        return HopsworksClient(
            api_url=self.api_url,
            api_key=self.api_key.reveal(),
            ca_bundle_pem=self.ca_bundle or None,
            read_timeout=min(limits.deadline, 30.0),
            max_attempts=limits.attempts,
            deadline=limits.deadline,
            max_response_bytes=limits.max_response_bytes,
        )


class UserHopsworksAssignment(models.Model):
    """Which cluster a user is on: the seed's `user_hopsworks_assignments`.

    The seed's primary key is (user_id, hopsworks_cluster_id). We also keep a user on one
    cluster at a time (unique user_id). Rows are written only by `clusters.services`, in the
    same transaction as the cluster's `current_users`.
    """

    pk = models.CompositePrimaryKey("user_id", "hopsworks_cluster_id")
    user = models.OneToOneField(
        User,
        on_delete=models.PROTECT,
        db_column="user_id",
        related_name="hopsworks_assignment",
    )
    hopsworks_cluster = models.ForeignKey(
        HopsworksCluster,
        on_delete=models.PROTECT,
        db_column="hopsworks_cluster_id",
        related_name="assignments",
    )
    hopsworks_username = models.TextField(null=True, blank=True)
    assigned_at = models.DateTimeField(default=timezone.now, db_default=DatabaseNow())

    class Meta:
        db_table = "user_hopsworks_assignments"

    def __str__(self) -> str:
        return f"{self.user_id} on {self.hopsworks_cluster_id}"


class CapacityWait(models.Model):
    """A user waiting for a place on a cluster, first come first served.

    A row exists while the user has no assignment and automatic placement could not place
    them: no room, or (with the billing gate) billing not set up yet. It is removed in the
    transaction that places them.
    """

    class Reason(models.TextChoices):
        NO_CAPACITY = "no_capacity", "Waiting for capacity"
        BILLING = "billing", "Waiting for billing setup"

    user = models.OneToOneField(
        User, on_delete=models.CASCADE, primary_key=True, related_name="capacity_wait"
    )
    reason = models.TextField(choices=Reason.choices, default=Reason.NO_CAPACITY)
    detail = models.TextField(blank=True, default="")
    since = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=1)
    last_attempt_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "clusters_capacity_wait"
        ordering = ["since", "user_id"]

    def __str__(self) -> str:
        return f"{self.user_id} {self.get_reason_display().lower()} since {self.since:%Y-%m-%d}"


def account_pending(prefix: str = "") -> models.Q:
    """The one test of "Hopsworks does not yet match what we want" (desired != synced);
    `prefix` reaches the account through a relation, e.g. "hopsworks_accounts__"."""
    return ~models.Q(**{f"{prefix}desired": models.F(f"{prefix}synced")})


class HopsworksAccountQuerySet(models.QuerySet):
    def pending(self):
        return self.filter(account_pending())


class HopsworksAccount(models.Model):
    """A user's account on one cluster, and whether Hopsworks agrees with what we want.

    `desired` is what we want on the cluster (active while the user is active and assigned
    there, deactivated otherwise); `synced` is what we last saw Hopsworks confirm. Services
    change `desired` in the same transaction as the change that causes it; the sync
    (`hopsworks_accounts_sync`, run after commit and by `sync_hopsworks_accounts`) makes
    Hopsworks match, so nothing is lost while a cluster is unreachable and every call is
    idempotent: nothing is created twice.
    """

    class State(models.TextChoices):
        NONE = "none", "No account"
        ACTIVE = "active", "Active"
        DEACTIVATED = "deactivated", "Deactivated"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="hopsworks_accounts")
    cluster = models.ForeignKey(
        HopsworksCluster, on_delete=models.CASCADE, related_name="hopsworks_accounts"
    )
    desired = models.TextField(choices=State.choices)
    synced = models.TextField(choices=State.choices, default=State.NONE)
    hopsworks_user_id = models.BigIntegerField(null=True, blank=True)
    hopsworks_username = models.TextField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # A sync run leases a row while it talks to Hopsworks, so two runs never both act on it.
    leased_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = HopsworksAccountQuerySet.as_manager()

    class Meta:
        db_table = "clusters_hopsworks_account"
        constraints = [
            models.UniqueConstraint(
                fields=["user", "cluster"], name="clusters_hopsworks_account_user_cluster"
            ),
        ]
        indexes = [
            models.Index(
                fields=["cluster"],
                condition=account_pending(),
                name="hopsworks_account_pending",
            ),
            # The users list's "Hopsworks account pending" filter: the pending accounts'
            # users from the index alone (the planner expects most rows to be pending, as
            # it cannot compare two columns, and read the whole table for a few hundred).
            models.Index(
                fields=["user"],
                condition=account_pending(),
                name="hopsworks_account_pending_user",
            ),
            # The Hopsworks accounts list (clusters/admin/placement.py): latest change first.
            models.Index(fields=["-updated_at", "-id"], name="hopsworks_account_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} on {self.cluster_id}: {self.desired}"

    @property
    def pending(self) -> bool:
        return self.desired != self.synced


class ClusterFillDaily(models.Model):
    """How many users were assigned to a cluster on a day, as last read that day.

    Written only by `clusters.services.cluster_fill_record` (hourly, by the
    `clusters.record_cluster_fill` job), one row per cluster and day: a later reading the
    same day replaces the earlier one, so a past day keeps its last reading. There is no
    history of assignments before recording began and none is invented: a day without a
    reading has no row, and the dashboard shows it as unknown.
    """

    cluster = models.ForeignKey(
        HopsworksCluster, on_delete=models.CASCADE, related_name="fill_days"
    )
    date = models.DateField()
    users = models.IntegerField()
    max_users = models.IntegerField()
    recorded_at = models.DateTimeField()

    class Meta:
        db_table = "clusters_fill_daily"
        constraints = [
            models.UniqueConstraint(fields=["cluster", "date"], name="clusters_fill_daily_unique")
        ]
        indexes = [models.Index(fields=["date"], name="clusters_fill_daily_date")]

    def __str__(self) -> str:
        return f"{self.cluster_id} on {self.date}: {self.users} of {self.max_users}"
