from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import logout
from django.db import transaction
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from social_core.exceptions import SocialAuthBaseException
from social_django import views as social_views

from accounts import auth0
from accounts.services import LoginRefused
from plumbing import outbound

logger = logging.getLogger(__name__)


@never_cache
def login_page(request):
    if request.user.is_authenticated:
        return redirect("home")
    return render(
        request,
        "accounts/login.html",
        {"next": request.GET.get("next", "")},
    )


@never_cache
@csrf_exempt  # Auth0 redirects here with a GET; the `state` parameter is the CSRF check.
def auth0_complete(request, backend):
    """social-auth's callback, with refusals and bad tokens shown as pages, not errors.

    One transaction: the user, their social link, its extra data and the login count are
    written together or not at all (a failure half-way leaves no user without a link).
    """
    try:
        # One deadline for every call to Auth0 in this request (token exchange, keys).
        with outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS), transaction.atomic():
            return social_views.complete(request, backend)
    except LoginRefused as refusal:
        logout(request)
        return render(
            request,
            "accounts/login_refused.html",
            {"title": refusal.title, "message": str(refusal)},
            status=refusal.status,
        )
    except SocialAuthBaseException as error:
        logger.warning("Auth0 login failed: %s %s", error, getattr(error, "detail", ""))
        logout(request)
        return render(
            request,
            "accounts/login_refused.html",
            {
                "title": "Login failed",
                "message": "We could not verify your login with Auth0 "
                f"({error}). Please try again.",
            },
            status=400,
        )


@require_POST
def logout_view(request):
    used_auth0 = request.session.get("social_auth_last_login_backend") == "auth0"
    logout(request)
    if used_auth0 and auth0.is_configured():
        return redirect(auth0.logout_url(return_to=request.build_absolute_uri("/login/")))
    return redirect("login")
