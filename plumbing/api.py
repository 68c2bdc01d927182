"""What Django REST Framework's settings name for every endpoint: the parser, throttling
per caller, pagination and the one error format. Kept light on imports: DRF imports these
while its own views module is still loading."""

from __future__ import annotations

import json
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions, parsers
from rest_framework.pagination import PageNumberPagination
from rest_framework.throttling import SimpleRateThrottle


class StrictJSONParser(parsers.JSONParser):
    """JSON numbers become Decimal (0.1 arrives as exactly 0.1). Whatever the body, the
    answer is data or a 400, never a 500: text that is not valid Unicode (a lone UTF-16
    surrogate), NUL characters (PostgreSQL text cannot hold them), NaN and Infinity (no
    column takes them) and nesting deeper than any request of ours are refused here."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            data = json.loads(
                stream.read().decode(encoding),
                parse_float=Decimal,
                parse_constant=_refuse_constant,
            )
            json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
        except RecursionError:
            raise exceptions.ParseError("The body is nested too deeply.") from None
        except (ValueError, UnicodeError) as error:
            raise exceptions.ParseError(f"The body is not valid JSON text: {error}") from None
        if _has_nul(data):
            raise exceptions.ParseError("The body contains a NUL character (\\u0000).")
        return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _has_nul(data) -> bool:
    """Whether any key or string in already-parsed JSON holds a NUL (iterative: no depth)."""
    todo = [data]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


class PerKeyThrottle(SimpleRateThrottle):
    scope = "per_key"

    def get_cache_key(self, request, view):
        # Only API-key authentication sets request.auth; a session gives a person.
        if request.auth is not None:
            ident = f"key:{request.auth.pk}"
        elif request.user and request.user.is_authenticated and request.user.pk:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "too_large"

    def __init__(self):
        megabytes = settings.DATA_UPLOAD_MAX_MEMORY_SIZE / 2**20
        super().__init__(
            f"The request body is over {megabytes:g} MB, more than the server reads; send "
            "fewer records a request."
        )


def error_body(status: int, code: str, message: str, details=None) -> dict:
    """The API's one error format: {"error": {"status", "code", "message", "details"}}."""
    return {"error": {"status": status, "code": code, "message": message, "details": details}}


def error_response(status: int, code: str, message: str) -> JsonResponse:
    """An error in the API's format from outside DRF (middleware, Django's error views)."""
    return JsonResponse(error_body(status, code, message), status=status)


def error_handler(exc, context):
    """One error format: {"error": {"status", "code", "message", "details"}}."""
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    from rest_framework.views import exception_handler  # not at import: DRF loads us early

    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(exc, exceptions.ValidationError):
        message, details = "The request is not valid; see details.", detail
    else:
        message = str(detail.get("detail", detail)) if isinstance(detail, dict) else str(detail)
        details = None
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        if isinstance(codes, str):
            code = codes
    response.data = error_body(response.status_code, code, message, details)
    return response
