from __future__ import annotations

import uuid

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, MaxLengthValidator
from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey, BaseAPIKeyManager

from plumbing.db import DatabaseNow

LOCAL_ID_PREFIX = "local|"


def new_local_id() -> str:
    """The id of a user who logs in with a local password rather than through Auth0."""
    return f"{LOCAL_ID_PREFIX}{uuid.uuid4()}"


def normalize_email(email: str) -> str:
    """Emails are stored lower-case, so one address can never belong to two users."""
    return (email or "").strip().lower()


# A display name (from Auth0, or typed for a break-glass login) is at most this long.
USER_NAME_MAX_LENGTH = 200


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields) -> User:
        """A local user (break-glass login); Auth0 users are made by the login pipeline."""
        if not email:
            raise ValueError("A user needs an email address.")
        fields.setdefault("id", new_local_id())
        user = self.model(email=normalize_email(email), **fields)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields) -> User:
        fields.setdefault("is_admin", True)
        fields.setdefault("is_superuser", True)
        return self.create_user(email, password, **fields)

    def get_by_natural_key(self, username):
        return self.get(email=normalize_email(username))


class User(AbstractBaseUser, PermissionsMixin):
    """A person who can log in: the seed's `users` table.

    `id` is the Auth0 subject (`auth0|...`, `google-oauth2|...`), or `local|<uuid>` for an
    operator's break-glass password login. `email` is unique (lower-case). `is_admin` opens
    the admin console (`is_staff` follows it); `status` other than active locks the user out.
    Every seed column keeps its name, type and default, also in the database (`db_default`),
    so rows inserted by other tools get the seed's defaults.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        DELETED = "deleted", "Deleted"

    id = models.TextField(primary_key=True, verbose_name="Auth0 id")
    email = models.TextField(unique=True, validators=[EmailValidator()])
    # TEXT in the seed; the length is limited by validation and a CHECK, not the type.
    name = models.TextField(
        null=True,
        blank=True,
        max_length=USER_NAME_MAX_LENGTH,
        validators=[MaxLengthValidator(USER_NAME_MAX_LENGTH)],
    )
    created_at = models.DateTimeField(
        default=timezone.now, db_default=DatabaseNow(), editable=False
    )
    # Django's `last_login` is the seed's `last_login_at`.
    last_login = models.DateTimeField(
        db_column="last_login_at", null=True, blank=True, verbose_name="last login"
    )
    login_count = models.IntegerField(default=0, db_default=0, editable=False)
    status = models.TextField(
        choices=Status.choices, default=Status.ACTIVE, db_default=Status.ACTIVE
    )
    is_admin = models.BooleanField(
        default=False,
        db_default=False,
        verbose_name="admin",
        help_text="Opens the operator console. What the admin may change there comes from "
        "'superuser' or the groups below.",
    )
    hopsworks_username = models.TextField(null=True, blank=True)
    stripe_customer_id = models.TextField(null=True, blank=True)

    # Django's own columns, given database defaults so a seed-style INSERT still works.
    # "!" is Django's prefix for an unusable password: such a row cannot log in locally.
    password = models.CharField(max_length=128, db_default="!")
    is_superuser = models.BooleanField(
        default=False,
        db_default=False,
        verbose_name="superuser",
        help_text="Has every permission without them being granted one by one.",
    )

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        db_table = "users"
        ordering = ["email"]
        # What the admin's actions need beyond Django's add/change/delete/view.
        permissions = [
            ("suspend_user", "Can suspend and reactivate users"),
            ("export_user", "Can export the users list (CSV, XLSX)"),
        ]
        indexes = [
            # Partial search (any case) on email and name is served by trigram indexes on
            # UPPER(email) and UPPER(name) (Django's icontains is UPPER(col) LIKE
            # UPPER('%x%')): users_email_trgm_search and users_name_trgm_search, created by
            # SQL in migration 0006 (Django puts an expression with an opclass in
            # parentheses, which PostgreSQL refuses).
            # Exact search by the ids other systems give a user.
            models.Index(fields=["stripe_customer_id"], name="users_stripe_customer_search"),
            models.Index(fields=["hopsworks_username"], name="users_hopsworks_name_search"),
            # The users list sorted by a column (console/admin.py `sortable_by`): the column,
            # then the id in the same direction (plumbing.admin_lists.IndexOrderChangeList).
            models.Index(fields=["status", "id"], name="users_list_status"),
            models.Index(fields=["is_admin", "id"], name="users_list_admin"),
            models.Index(fields=["last_login", "id"], name="users_list_last_login"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "suspended", "deleted"]),
                name="users_status_valid",
                violation_error_message="Status must be active, suspended or deleted.",
            ),
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("name"), USER_NAME_MAX_LENGTH),
                name="users_name_length",
                violation_error_message=f"A name has at most {USER_NAME_MAX_LENGTH} characters.",
            ),
        ]

    def __str__(self) -> str:
        return self.email

    @property
    def is_active(self) -> bool:  # what Django's auth checks before letting anyone in
        return self.status == self.Status.ACTIVE

    @staticmethod
    def customers_q() -> models.Q:
        """Users who are customers: not operators, not local break-glass logins."""
        return models.Q(is_admin=False) & ~models.Q(id__startswith=LOCAL_ID_PREFIX)

    @property
    def is_staff(self) -> bool:  # what Django's admin checks at its door
        return self.is_admin

    @property
    def is_local(self) -> bool:
        return self.id.startswith(LOCAL_ID_PREFIX)

    def get_full_name(self) -> str:
        return self.name or self.email

    def get_short_name(self) -> str:
        return self.name or self.email

    def clean(self):
        super().clean()
        self.email = normalize_email(self.email)


class ApiKey(AbstractAPIKey):
    """A key for scripts. Only a hash is stored; the full key is shown once, at creation.
    Its prefix identifies it in lists and logs. A key grants exactly its scopes."""

    SCOPES = (
        ("users:read", "Read users and their cluster"),
        ("clusters:read", "Read clusters and their utilization"),
        ("usage:read", "Read usage"),
        ("usage:write", "Write usage records"),
        ("assignments:write", "Assign, move and unassign users"),
    )

    scopes = models.JSONField(default=list, blank=True)
    created_by = models.TextField(blank=True, default="")
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = BaseAPIKeyManager()

    class Meta(AbstractAPIKey.Meta):
        db_table = "accounts_api_key"
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def clean(self):
        super().clean()
        unknown = set(self.scopes or []) - {scope for scope, _ in self.SCOPES}
        if unknown:
            raise ValidationError({"scopes": f"Unknown scopes: {', '.join(sorted(unknown))}"})

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])


class UserStatusChange(models.Model):
    """One change of a user's status (suspended, reactivated, deleted): who, when, why.
    Append-only: written by accounts.services.user_set_status in the same transaction as
    the change, never edited or deleted (the admin offers neither)."""

    # Goes with the user if the row is ever hard-deleted (their money records protect it).
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="status_changes")
    from_status = models.TextField(choices=User.Status.choices)
    to_status = models.TextField(choices=User.Status.choices)
    actor = models.TextField(help_text="Who changed it (an operator, a command, the system).")
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "accounts_user_status_change"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"], name="status_change_user_newest")]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.from_status} -> {self.to_status}"
