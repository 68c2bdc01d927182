from __future__ import annotations

from axes.admin import AccessAttemptAdmin as AxesAccessAttemptAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.db import connection, models
from django.utils import timezone, translation
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey
from social_django.models import Association, Nonce, UserSocialAuth

from accounts import services
from accounts.api import SCOPE_PERMISSIONS, session_may
from accounts.models import LOCAL_ID_PREFIX, ApiKey, User, new_local_id
from accounts.selectors import users_exact
from plumbing.admin_confirm import confirm_then
from plumbing.admin_report import ActionReport
from plumbing.admin_widgets import QuickFilteredSelectMultiple

AUTH0_FIELDS = ("id", "email", "name", "created_at", "last_login", "login_count")
SYNCED_FIELDS = ("status", "hopsworks_username", "stripe_customer_id")

# The user admin's sections, by name; console/admin.py puts each app's sections in order.
IDENTITY_SECTION = ("Identity (from Auth0)", {"fields": AUTH0_FIELDS})
ACCOUNT_SECTION = ("Account", {"fields": SYNCED_FIELDS})
# Fields that grant power: only a superuser changes them (for anyone else they are
# read-only, so they are not in the form and a crafted POST cannot set them).
PRIVILEGE_FIELDS = ("is_admin", "is_superuser", "groups", "user_permissions")

# (language, what the permissions table holds) -> the permission picker's options.
_permission_choices: dict[tuple, list[tuple[int, str]]] = {}


def permission_choices() -> list[tuple[int, str]]:
    """Every permission as the user page's picker offers it (`str(permission)`, in the
    model's order), built once per process and language for what the table holds: a
    fingerprint of the table (one small read) notices a permission added, removed or
    renamed. Building the options from the queryset on every page was most of the
    picker's time (222 options: 15 ms against 2 ms, bench/README.md)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), max(id), sum(hashtext(codename || ':' || name"
            " || ':' || content_type_id))::bigint FROM auth_permission"
        )
        key = (translation.get_language(), *cursor.fetchone())
    choices = _permission_choices.get(key)
    if choices is None:
        choices = [(p.pk, str(p)) for p in Permission.objects.select_related("content_type")]
        _permission_choices.clear()  # one table, one current fingerprint
        _permission_choices[key] = choices
    return choices


CONSOLE_ACCESS_SECTION = ("Console access", {"fields": PRIVILEGE_FIELDS})


class LocalUserCreationForm(AdminUserCreationForm):
    """Creates a break-glass operator login (`local|<uuid>` id) with a password."""

    class Meta:
        model = User
        fields = ("email", "name", "is_admin")

    def clean_email(self):
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email=email).exists():
            raise forms.ValidationError("A user with this email address already exists.")
        return email

    def save(self, commit=True):
        self.instance.id = new_local_id()
        return super().save(commit=commit)


class ReasonForm(forms.Form):
    reason = forms.CharField(
        required=False, max_length=500, help_text="Recorded in the change history."
    )


class UserKindFilter(admin.SimpleListFilter):
    """Customers (who log in through Auth0 and are not operators), operators, and local
    break-glass logins: the dashboard's "Active users" counts customers."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return (
            ("customers", "Customers"),
            ("operators", "Operators (console access)"),
            ("local", "Local break-glass logins"),
        )

    def queryset(self, request, queryset):
        if self.value() == "customers":
            return queryset.filter(User.customers_q())
        if self.value() == "operators":
            return queryset.filter(is_admin=True)
        if self.value() == "local":
            return queryset.filter(id__startswith=LOCAL_ID_PREFIX)
        return queryset


class UserAdminBase(DjangoUserAdmin):
    """Users and login: identity, status, console access, suspend and reactivate. Not
    registered here: console/admin.py composes the one users admin from each app's part."""

    add_form = LocalUserCreationForm
    # The user's TEXT columns (name, Hopsworks username, ...) are all one line.
    formfield_overrides = {models.TextField: {"widget": forms.TextInput}}
    list_display = (
        "email",
        "name",
        "id",
        "status",
        "is_admin",
        "login_count",
        "last_login",
        "created_at",
    )
    list_filter = ("status", UserKindFilter, "is_admin", "is_superuser", "groups")
    # Partial (any case) on email and name, served by the trigram indexes. An exact email
    # (the seed's "Find user by email"), id, Stripe customer id or Hopsworks username is
    # resolved first (get_search_results): that user alone, one index probe.
    search_fields = ("email", "name")
    search_help_text = (
        "An exact email, user id, Stripe customer id or Hopsworks username; "
        "or part of an email or name."
    )
    ordering = ("email",)
    # No date hierarchy: it reads every user's creation date (MIN/MAX, then DISTINCT per
    # year or month) on each request; the "created at" range filter narrows by date.
    readonly_fields = (*AUTH0_FIELDS, *SYNCED_FIELDS)
    filter_horizontal = ("groups", "user_permissions")
    actions = ("suspend_users", "reactivate_users")
    show_full_result_count = False

    fieldsets = (IDENTITY_SECTION, ACCOUNT_SECTION, CONSOLE_ACCESS_SECTION)
    add_fieldsets = (
        (
            "Break-glass operator login",
            {
                "description": "Operators normally log in with Auth0. A local password "
                "login is for when Auth0 is unavailable.",
                "fields": ("email", "name", "is_admin", "password1", "password2"),
            },
        ),
    )

    def get_search_results(self, request, queryset, search_term):
        exact = users_exact(search_term)
        if exact:
            return queryset.filter(pk__in=exact), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="user", ordering="email")
    def user_column(self, obj):
        """Email and name in one cell, each cut to the column with the whole in a tooltip."""
        return format_html(
            '<span class="cut" title="{}">{}</span><span class="cut quiet" title="{}">{}</span>',
            obj.email,
            obj.email,
            obj.name or "",
            obj.name or "",
        )

    @admin.display(description="last login", ordering="last_login")
    def last_login_column(self, obj):
        if obj.last_login is None:
            return mark_safe('<span class="quiet">never</span>')
        logins = f"{obj.login_count:,} login{'s' if obj.login_count != 1 else ''}"
        return format_html(
            '{}<span class="quiet">{}</span>',
            date_format(timezone.localtime(obj.last_login), "SHORT_DATETIME_FORMAT"),
            logins,
        )

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        # Django's picker, its 200+ permission options written without a template each.
        if db_field.name in self.filter_horizontal:
            kwargs["widget"] = QuickFilteredSelectMultiple(db_field.verbose_name, False)
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if db_field.name == "user_permissions" and field is not None:
            # The options from a list kept per process; what is chosen is still checked
            # against the permissions table (the field's queryset).
            field.choices = permission_choices()
        return field

    def get_readonly_fields(self, request, obj=None):
        fields = [] if obj is None else list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.is_local:  # ours to edit; Auth0's name comes from the token
            fields.remove("name")
        if not request.user.is_superuser:
            fields += [field for field in PRIVILEGE_FIELDS if field not in fields]
        return fields

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and obj.is_local and request.user.is_superuser:
            return (*fieldsets, ("Password", {"fields": ("password",)}))
        return fieldsets

    def user_change_password(self, request, id, form_url=""):
        # Setting someone's password is logging in as them: as much power as they have.
        if not request.user.is_superuser:
            raise PermissionDenied
        return super().user_change_password(request, id, form_url)

    def has_suspend_permission(self, request):
        return request.user.has_perm("accounts.suspend_user")

    @admin.action(description="Suspend selected users", permissions=["suspend"])
    def suspend_users(self, request, queryset):
        return confirm_then(
            self,
            request,
            queryset,
            title="Suspend users",
            message="These users will be logged out and refused at login until reactivated. "
            "Their data is kept.",
            confirm_label="Yes, suspend them",
            form_class=ReasonForm,
            apply=lambda data: self._set_status(
                request, queryset, services.user_suspend, "suspended", data["reason"]
            ),
        )

    @admin.action(description="Reactivate selected users", permissions=["suspend"])
    def reactivate_users(self, request, queryset):
        return confirm_then(
            self,
            request,
            queryset,
            title="Reactivate users",
            message="These users will be able to log in again.",
            confirm_label="Yes, reactivate them",
            form_class=ReasonForm,
            apply=lambda data: self._set_status(
                request, queryset, services.user_reactivate, "reactivated", data["reason"]
            ),
        )

    def _set_status(self, request, queryset, service, verb, reason):
        report = ActionReport("user")
        for user in queryset:
            try:
                done = service(user=user, actor=request.user, reason=reason)
            except services.StatusChangeRefused as error:
                report.not_done(user.email, error)
                continue
            if done:
                report.done(user.email, verb)
                self.log_change(request, user, f"{verb.capitalize()}. {reason}".strip())
            else:
                report.unchanged(user.email, f"already {verb}")
        report.send(self, request)


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    """A group's permissions grant power to all its members (the editor among them): only
    a superuser changes them."""

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else (*fields, "permissions")

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        # The same picker as a user's page: its options written without templates, from
        # the list kept per process (`permission_choices`).
        if db_field.name == "permissions":
            kwargs["widget"] = QuickFilteredSelectMultiple(db_field.verbose_name, False)
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if db_field.name == "permissions" and field is not None:
            field.choices = permission_choices()
        return field


class ApiKeyForm(forms.ModelForm):
    """A key is as much power as its scopes: an operator gives a key, or keeps alive
    longer, only scopes whose permissions they hold themselves (SCOPE_PERMISSIONS)."""

    scopes = forms.MultipleChoiceField(
        choices=ApiKey.SCOPES, widget=forms.CheckboxSelectMultiple, required=True
    )
    operator = None  # the requesting user, set by ApiKeyAdmin.get_form

    class Meta:
        model = ApiKey
        fields = ("name", "scopes", "expiry_date", "revoked")

    def clean(self):
        cleaned = super().clean()
        if self.instance.revoked:  # grants nothing, and cannot be un-revoked
            return cleaned
        scopes = set(cleaned.get("scopes") or [])
        unheld = {scope for scope in scopes if not session_may(self.operator, scope)}
        before = set(self.instance.scopes or []) if self.instance.pk else set()
        added = sorted(unheld - before)
        if added:
            needs = "; ".join(f"{s} needs {', '.join(SCOPE_PERMISSIONS[s])}" for s in added)
            self.add_error(
                "scopes", f"You may only give scopes whose permissions you hold: {needs}."
            )
        elif unheld and self.instance.pk and self._extends(cleaned.get("expiry_date")):
            self.add_error(
                "expiry_date",
                "This key has scopes whose permissions you do not hold "
                f"({', '.join(sorted(unheld))}): you may shorten its life or revoke it, "
                "not extend it.",
            )
        return cleaned

    def _extends(self, expiry) -> bool:
        current = self.instance.expiry_date
        return current is not None and (expiry is None or expiry > current)


@admin.register(ApiKey)
class ApiKeyAdmin(APIKeyModelAdmin):
    """Keys are stored hashed: the full key is shown once, in the message after saving."""

    form = ApiKeyForm
    list_display = (
        "prefix",
        "name",
        "scope_list",
        "created",
        "expiry_date",
        "_has_expired",
        "revoked",
        "last_used_at",
        "created_by",
    )
    list_filter = ("revoked", "created")
    readonly_fields = ("prefix", "created_by", "last_used_at")

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"operator": request.user})

    @admin.display(description="scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes or [])

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user.email
        super().save_model(request, obj, form, change)


admin.site.unregister(LibraryAPIKey)
# social-auth's lists: a user's Auth0 link is managed by the login, and the OpenID
# associations and nonces are unused with Auth0's OAuth2: nothing there for an operator.
admin.site.unregister(UserSocialAuth)
admin.site.unregister(Nonce)
admin.site.unregister(Association)
# django-axes' lists: only its access attempts are kept (and deleting them lifts a
# lockout); successful logins and a failure log are not recorded (see AXES_* settings).
admin.site.unregister(AccessLog)
admin.site.unregister(AccessFailureLog)
admin.site.unregister(AccessAttempt)


@admin.register(AccessAttempt)
class AccessAttemptAdmin(AxesAccessAttemptAdmin):
    """Locked-out accounts and addresses. Deleting a row (needs "Can delete access
    attempt") lifts that lockout; expired ones lift themselves, so axes' clean-up action,
    which declared no permission, is not offered."""

    actions = ()
