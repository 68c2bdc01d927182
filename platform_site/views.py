"""Health endpoints for load balancers and orchestrators."""

import logging

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

logger = logging.getLogger(__name__)


@never_cache
def healthz(request):
    """The process is alive and serving requests."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    """The process can do its work: the database answers. Anyone may ask, so the answer
    names no host, user or driver message; those go to the log."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as error:
        logger.error("readyz: the database does not answer: %s", error)
        return JsonResponse(
            {"status": "unavailable", "database": "database unavailable"}, status=503
        )
    return JsonResponse({"status": "ok", "database": "ok"})


# Error pages. Inside the admin, an operator keeps the console's navigation (the admin's
# own templates with its context); anywhere else, and for anyone who is not an operator,
# the plain pages of the user's site.


def _in_admin(request) -> bool:
    from django.contrib import admin

    return (
        request.path.startswith("/admin/")
        and hasattr(request, "user")
        and admin.site.has_permission(request)
    )


API_ERRORS = {
    400: ("bad_request", "The request could not be understood."),
    403: ("permission_denied", "You do not have permission to perform this action."),
    404: ("not_found", "Not found: no such endpoint or object (check the path; none ends in /)."),
}


def _error_page(request, status: int):
    from django.contrib import admin
    from django.shortcuts import render

    if request.path.startswith("/api/"):  # the API's one error format, not a page
        from plumbing.api import error_response

        return error_response(status, *API_ERRORS[status])
    if _in_admin(request):
        return render(
            request, f"admin/{status}.html", admin.site.each_context(request), status=status
        )
    return render(request, f"{status}.html", status=status)


def bad_request(request, exception):
    return _error_page(request, 400)


def page_not_found(request, exception):
    return _error_page(request, 404)


def permission_denied(request, exception):
    return _error_page(request, 403)
