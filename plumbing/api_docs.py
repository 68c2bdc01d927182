"""How the API documents its one error format (OpenAPI, through drf-spectacular)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorBody",
            fields={
                "status": serializers.IntegerField(),
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": serializers.JSONField(allow_null=True),
            },
        )
    },
)


def error_responses(*codes: int) -> dict:
    """Document the error answers an endpoint can give, in the one error format."""
    text = {
        400: "The request is not valid (details say what to fix).",
        401: "No credentials, or an unknown, revoked or expired API key.",
        403: "Authenticated, but not allowed (a missing scope, or another user's data).",
        404: "No such object.",
        405: "Method not allowed.",
        406: "Not acceptable.",
        409: "Conflicts with the current state (no room, cluster not taking users).",
        413: "The request body is larger than the server reads (send fewer records a request).",
        415: "Unsupported media type.",
        429: "Too many requests for this key; retry after the time given.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=text[code]) for code in codes}


COMMON_ERRORS = (400, 401, 403, 405, 406, 429)
