"""Our steps in social-auth's login pipeline (see SOCIAL_AUTH_PIPELINE)."""

from __future__ import annotations

from accounts import services


def sync_user(backend, uid, details, user=None, *args, **kwargs):
    """Find or create the user whose primary key is the Auth0 `sub` (social-auth's uid)."""
    synced = services.user_sync_from_auth0(
        subject=uid,
        email=details.get("email"),
        name=details.get("fullname"),
        email_verified=details.get("email_verified"),
    )
    return {"user": synced, "is_new": synced.login_count == 0}
