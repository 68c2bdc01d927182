from django.contrib.auth import SESSION_KEY, logout
from django.shortcuts import render

from accounts.models import User


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
