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
