"""How django-axes counts failed password logins (see AXES_* in settings) and what a
locked-out operator is told. Only the break-glass password login is counted; the Auth0
login never is."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import render

from accounts import auth0
from accounts.models import normalize_email


def username(request, credentials: dict | None) -> str | None:
    """The account a login attempt was for, spelled as the users table spells it, so that
    "Admin@Example.com " and "admin@example.com" count against the same account."""
    field = settings.AXES_USERNAME_FORM_FIELD
    typed = (credentials or {}).get(field)
    if typed is None and request is not None:
        typed = request.POST.get(field)
    return normalize_email(typed) if typed else typed


def locked_out(request, original_response=None, credentials=None):
    """The page a locked-out password login gets (HTTP 429), saying when and how to get in."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return render(
        request,
        "accounts/locked_out.html",
        {
            "failure_limit": settings.AXES_FAILURE_LIMIT,
            "minutes": minutes,
            "auth0_configured": auth0.is_configured(),
        },
        status=429,
    )
