"""Creating and revoking API keys (the admin and `create_api_key` use these)."""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import ApiKey
from plumbing.actors import actor_label

SCOPE_NAMES = [scope for scope, _ in ApiKey.SCOPES]


def api_key_create(
    *, name: str, scopes: list[str], actor, expires_at: dt.datetime | None = None
) -> tuple[ApiKey, str]:
    """A new key; returns it and the full key, which is shown this once and never stored."""
    if not name.strip():
        raise ValidationError({"name": "Give the key a name that says what uses it."})
    unknown = sorted(set(scopes) - set(SCOPE_NAMES))
    if unknown:
        raise ValidationError(
            {"scopes": f"Unknown scopes: {', '.join(unknown)}. Known: {', '.join(SCOPE_NAMES)}."}
        )
    if not scopes:
        raise ValidationError({"scopes": f"Give at least one scope: {', '.join(SCOPE_NAMES)}."})
    with transaction.atomic():
        return ApiKey.objects.create_key(
            name=name.strip(),
            scopes=sorted(set(scopes)),
            expiry_date=expires_at,
            created_by=actor_label(actor),
        )
