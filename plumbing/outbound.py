"""Where a secret may be sent: https, or plain http only to this machine.

Every outside system we call with a credential (a Hopsworks cluster's API key, Stripe's
secret key) goes through `url_problem`, so the rule and the list of local hosts live here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def url_problem(url: str) -> str | None:
    """What is wrong with `url` as a place to send a credential, or None when it is fine.

    The message completes "The URL ..." style sentences: callers prefix what the URL is.
    """
    if not isinstance(url, str) or not url.strip():
        return "is empty"
    url = url.strip()
    if any(char.isspace() for char in url):
        return "must not contain spaces"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("https", "http"):
        return "must start with https://"
    if not parts.hostname:
        return "has no host name"
    if parts.username is not None or parts.password is not None:
        return "must not contain a user name or password (the key is kept separately)"
    if parts.query or parts.fragment:
        return "must not have a query string or a fragment"
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        return (
            "must use https:// (http:// is accepted only for localhost or 127.0.0.1, "
            "because the key is sent with every request)"
        )
    return None
