import time

from django.conf import settings
from django.contrib.auth import SESSION_KEY, logout
from django.shortcuts import render

from accounts.models import User
from plumbing.api import error_response

# When an operator's idle expiry was last moved (Unix seconds), in their session.
REFRESHED_AT = "_operator_expiry_set_at"


class InactiveUserLogoutMiddleware:
    """Explains to a user suspended while logged in why their session ended.

    The authentication backends already refuse inactive users (request.user is anonymous);
    this ends the stale session and shows a clear page instead of a bare login redirect.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.user.is_authenticated and SESSION_KEY in request.session:
            status = (
                User.objects.filter(pk=request.session[SESSION_KEY])
                .values_list("status", flat=True)
                .first()
            )
            logout(request)
            if status and status != User.Status.ACTIVE:
                return render(
                    request, "accounts/account_inactive.html", {"status": status}, status=403
                )
        return self.get_response(request)


class OperatorSessionIdleTimeoutMiddleware:
    """An operator's session ends OPERATOR_SESSION_IDLE_SECONDS after their last request
    (up to OPERATOR_SESSION_REFRESH_SECONDS sooner).

    Operators hold the keys to every account, so a forgotten console tab must not stay
    logged in for Django's two weeks; users keep SESSION_COOKIE_AGE. Applied after the
    view, so the login request itself (where request.user becomes the operator) counts.
    The expiry moves at most once per refresh interval: moving it is a session write, a
    commit and a new cookie, which every page paid before (about a millisecond quiet, many
    when the disk is busy).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        # Only a session login: a request authenticated otherwise (an API key) gets no
        # session of its own made for it.
        session = request.session
        logged_in = SESSION_KEY in session
        if logged_in and user is not None and user.is_authenticated and user.is_staff:
            refreshed = session.get(REFRESHED_AT)
            stale = (
                not isinstance(refreshed, int)
                or not 0 <= time.time() - refreshed < settings.OPERATOR_SESSION_REFRESH_SECONDS
            )
            if stale or session.get_expiry_age() != settings.OPERATOR_SESSION_IDLE_SECONDS:
                start_idle_expiry(session)
        return response


def start_idle_expiry(session) -> None:
    """The operator's session ends OPERATOR_SESSION_IDLE_SECONDS from now. Marks the
    session modified, so it is saved and its cookie re-sent. Also at the login
    (accounts.receivers), so the first page after it writes nothing more."""
    session.set_expiry(settings.OPERATOR_SESSION_IDLE_SECONDS)
    session[REFRESHED_AT] = int(time.time())


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class RejectNullBytesMiddleware:
    """PostgreSQL text cannot hold NUL bytes: a path, query string, cookie, header or form
    field with one is a bad request (400), never a database error (500): a session cookie
    holding `"\\000"` would otherwise reach the session table, an admin action's selection
    or an autocomplete field's value a query. Form bodies (urlencoded, multipart: the
    fields, not the files) are read here as the CSRF check reads them; JSON bodies are
    checked by the API's parser and the webhooks that read them."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = request.GET.lists()
        if "\x00" in request.path or any(
            "\x00" in k or any("\x00" in v for v in vs) for k, vs in query
        ):
            return self._refuse(request, "The address contains a NUL character (%00)")
        if any("\x00" in k or "\x00" in v for k, v in request.COOKIES.items()) or any(
            isinstance(v, str) and "\x00" in v
            for k, v in request.META.items()
            if k.startswith("HTTP_")
        ):
            return self._refuse(request, "A cookie or header contains a NUL character")
        if (
            request.method == "POST"
            and request.content_type in FORM_TYPES
            and any("\x00" in k or any("\x00" in v for v in vs) for k, vs in request.POST.lists())
        ):
            return self._refuse(request, "A form field contains a NUL character")
        return self.get_response(request)

    @staticmethod
    def _refuse(request, what: str):
        message = f"{what}, which is not allowed."
        if request.path.startswith("/api/"):
            return error_response(400, "invalid", message)
        return render(request, "400.html", {"message": message}, status=400)
