"""Every write that matters to a user's account."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts import auth0
from accounts.models import USER_NAME_MAX_LENGTH, User, UserStatusChange, normalize_email
from accounts.signals import user_status_changed
from plumbing.actors import actor_label

logger = logging.getLogger(__name__)


class LoginRefused(Exception):
    """A login that must not open a session. The message is shown to the person."""

    title = "You cannot log in"
    status = 403


class AccountNotActive(LoginRefused):
    title = "Your account is not active"


class EmailOwnedByAnotherAccount(LoginRefused):
    title = "This email address belongs to another account"
    status = 409


class IncompleteIdentity(LoginRefused):
    title = "Your identity provider did not tell us enough"
    status = 400


class EmailNotVerified(LoginRefused):
    title = "Verify your email address first"


# RFC 5321: a forward path is at most 256 octets, two of them the angle brackets.
EMAIL_MAX_LENGTH = 254


def user_sync_from_auth0(
    *, subject: str, email: str | None, name: str | None, email_verified: object = False
) -> User:
    """Create the user on first login, or refresh email and name from the token.

    Refuses (raises `LoginRefused`) before writing anything: an identity we cannot store
    (no `sub`, one too long for the social link, a NUL anywhere), an email that is not a
    usable address or that the identity provider has not verified (else anyone could sign
    up with someone else's address and take it), a suspended or deleted user, and an email
    that another Auth0 id already owns: two identities are never merged silently.
    """
    email = normalize_email(email or "")
    name = _display_name(name)
    _check_identity(subject=subject, email=email, name=name)
    if email_verified is not True:  # a boolean claim; "true" or a missing claim is not yes
        raise EmailNotVerified(
            f"Auth0 has not confirmed that {email} is your address yet. Open the "
            "verification email Auth0 sent to it and follow its link, then log in again."
        )

    try:
        with transaction.atomic():
            user = User.objects.select_for_update().filter(pk=subject).first()
            if user is not None and not user.is_active:
                raise AccountNotActive(_not_active_message(user))
            if User.objects.filter(email=email).exclude(pk=subject).exists():
                raise EmailOwnedByAnotherAccount(
                    f"The email address {email} is already used by another account. "
                    "Log in the way you did before, or ask an operator to move the address."
                )
            if user is None:
                user = User(id=subject, email=email, name=name)
                user.set_unusable_password()
                user.save(force_insert=True)
                logger.info("user created from Auth0 login: %s", subject)
            elif (user.email, user.name) != (email, name):
                user.email, user.name = email, name
                user.save(update_fields=["email", "name"])
    except IntegrityError:
        # Another login created this user, or took this email, at the same moment. Lock
        # the row as the path above does: inside the login's transaction every login then
        # takes the user before its social link, and two logins cannot deadlock.
        with transaction.atomic():
            existing = User.objects.select_for_update().filter(pk=subject).first()
        if existing is None or existing.email != email:
            raise EmailOwnedByAnotherAccount(
                f"The email address {email} is already used by another account."
            ) from None
        user = existing
        if not user.is_active:
            raise AccountNotActive(_not_active_message(user)) from None
    return user


def _display_name(name: str | None) -> str | None:
    """The token's name as we keep it: a display name too long to store is cut (with an
    ellipsis), not refused. A user may not control the name their identity provider sends,
    and it is only shown, never used to find or match anyone."""
    name = (name or "").strip() or None
    if name is not None and len(name) > USER_NAME_MAX_LENGTH:
        name = name[: USER_NAME_MAX_LENGTH - 1].rstrip() + "…"
    return name


def _check_identity(*, subject: str, email: str, name: str | None) -> None:
    if not subject:
        raise IncompleteIdentity("The login did not carry a user id (the token's `sub`).")
    if any("\x00" in value for value in (subject, email, name or "")):
        raise IncompleteIdentity("Your login carried a NUL character, which we cannot store.")
    if len(subject) > (limit := auth0.subject_max_length()):
        raise IncompleteIdentity(
            f"Your identity provider sent a user id of {len(subject)} characters; we can "
            f"store at most {limit}. Log in with another account, or contact support."
        )
    if not email:
        raise IncompleteIdentity(
            "Your login did not include an email address. Log in with an account that has "
            "one, or ask your identity provider to share it."
        )
    try:
        if len(email) > EMAIL_MAX_LENGTH:
            raise ValidationError("too long")
        validate_email(email)
    except ValidationError:
        raise IncompleteIdentity(
            "Your login carried an email address we cannot use: it is not a valid address "
            f"of at most {EMAIL_MAX_LENGTH} characters. Log in with an account whose email "
            "address is valid."
        ) from None


def _not_active_message(user: User) -> str:
    if user.status == User.Status.SUSPENDED:
        return (
            "Your account is suspended. Contact support if you think this is a mistake; "
            "your data is kept."
        )
    return "This account has been deleted. Contact support to restore it."


def user_record_login(*, user: User) -> None:
    """Count one login. A single UPDATE, so concurrent logins are all counted."""
    now = timezone.now()
    User.objects.filter(pk=user.pk).update(login_count=F("login_count") + 1, last_login=now)
    user.refresh_from_db(fields=["login_count", "last_login"])


class StatusChangeRefused(Exception):
    """A status change that would lock the console out; the message says why."""


_VERBS = {User.Status.SUSPENDED: "suspend", User.Status.DELETED: "delete"}


def user_set_status(*, user: User, status: str, actor, reason: str = "") -> bool:
    """Change a user's status. Returns False when it already had that status.

    Raises StatusChangeRefused for an operator locking themselves out, and for the last
    active superuser (someone must be left who can change permissions).
    """
    if status not in User.Status.values:
        raise ValueError(f"Unknown status {status!r}; use one of {', '.join(User.Status.values)}.")
    with transaction.atomic():
        if status == User.Status.ACTIVE:
            locked = User.objects.select_for_update().get(pk=user.pk)
        else:
            # The user and every active superuser, locked in primary-key order: two
            # operators suspending the last two superusers at once cannot both succeed.
            rows = {
                row.pk: row
                for row in User.objects.select_for_update()
                .filter(Q(pk=user.pk) | Q(is_superuser=True, status=User.Status.ACTIVE))
                .order_by("pk")
            }
            locked = rows[user.pk]
            if locked.status != status:
                _refuse_lockout(locked, status=status, actor=actor, superusers=rows.values())
        if locked.status == status:
            return False
        previous = locked.status
        locked.status = status
        locked.save(update_fields=["status"])
        UserStatusChange.objects.create(
            user=locked,
            from_status=previous,
            to_status=status,
            actor=actor_label(actor),
            reason=reason,
        )
        user.status = status
        user_status_changed.send(
            sender=User, user=user, previous=previous, status=status, actor=actor
        )
    logger.info(
        "user %s status %s -> %s by %s%s",
        user.pk,
        previous,
        status,
        actor_label(actor),
        f" ({reason})" if reason else "",
    )
    return True


def _refuse_lockout(user: User, *, status: str, actor, superusers) -> None:
    verb = _VERBS[status]
    if getattr(actor, "pk", None) == user.pk:
        raise StatusChangeRefused(
            f"you cannot {verb} your own account. Ask another operator if it must be done."
        )
    if user.is_active and user.is_superuser:
        others = [u for u in superusers if u.pk != user.pk and u.is_superuser and u.is_active]
        if not others:
            raise StatusChangeRefused(
                f"{user.email} is the last active superuser; make another operator superuser "
                f"before you {verb} them."
            )


def user_suspend(*, user: User, actor, reason: str = "") -> bool:
    return user_set_status(user=user, status=User.Status.SUSPENDED, actor=actor, reason=reason)


def user_reactivate(*, user: User, actor, reason: str = "") -> bool:
    return user_set_status(user=user, status=User.Status.ACTIVE, actor=actor, reason=reason)
