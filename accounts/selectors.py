"""Reads of users shared by the admins and the API."""

from __future__ import annotations

from django.db.models import Q

from accounts.models import User, normalize_email

# A partial search names at most this many users; past it the operator is asked to narrow.
PARTIAL_USERS_MAX = 200


def users_exact(term: str) -> list[str]:
    """Ids of the users an exact term names: their email (any case), their id (the Auth0
    id), their Stripe customer id or their Hopsworks username. Each column is unique or
    indexed: one index probe each."""
    term = (term or "").strip()
    if not term:
        return []
    return list(
        User.objects.filter(
            Q(email=normalize_email(term))
            | Q(pk=term)
            | Q(stripe_customer_id=term)
            | Q(hopsworks_username=term)
        ).values_list("pk", flat=True)
    )


def users_partial(term: str) -> tuple[list[str], bool]:
    """Ids of the first `PARTIAL_USERS_MAX` users (by email) whose email or name contains
    the term (any case), served by the trigram indexes on users, and whether there were
    more."""
    limit = PARTIAL_USERS_MAX
    term = (term or "").strip()
    if not term:
        return [], False
    ids = list(
        User.objects.filter(Q(email__icontains=term) | Q(name__icontains=term))
        .order_by("email")
        .values_list("pk", flat=True)[: limit + 1]
    )
    return ids[:limit], len(ids) > limit
