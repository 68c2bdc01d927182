"""The address a request came from, as far as this deployment can trust it."""

from __future__ import annotations

from django.conf import settings


def client_address(request) -> str | None:
    """REMOTE_ADDR, or behind TRUSTED_PROXY proxies the address the outermost one saw.

    Each proxy appends the address it was connected from to X-Forwarded-For, so with N
    proxies of ours in front the N-th entry from the right is the client: anything left of
    it was written by the client itself and proves nothing. Without a trusted proxy the
    header is ignored, so nobody can pick the address a lockout is counted against.
    """
    proxies = settings.TRUSTED_PROXY
    if proxies:
        forwarded = [
            part.strip()
            for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            if part.strip()
        ]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR")
