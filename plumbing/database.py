"""How a DATABASE_URL becomes Django's DATABASES entry.

The seed database is Supabase PostgreSQL, reached in one of two ways:

* the connection pooler (Supavisor) on port 6543, in *transaction* mode: consecutive
  transactions of one client may run on different server connections, so nothing that
  lives in a server session may be relied on: no server-side cursors, no prepared
  statements, no persistent client connections;
* the direct (session) connection on port 5432, where a client keeps its server
  connection, so persistent connections (``CONN_MAX_AGE``) are safe and save a TLS
  handshake per request.

Anything that is not on this machine is reached over TLS (``sslmode=require``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from plumbing.outbound import LOCAL_HOSTS

POOLER_PORT = 6543
DIRECT_PORT = 5432
POSTGRES_ENGINES = {"django.db.backends.postgresql"}


@dataclass(frozen=True)
class ConnectionKind:
    name: str
    explanation: str


POOLER = ConnectionKind(
    "pooler (transaction mode)",
    "Port 6543 is the Supabase connection pooler in transaction mode: each transaction may "
    "run on a different server connection, so the console opens a fresh connection per "
    "request (CONN_MAX_AGE=0) and uses no server-side cursors, no prepared statements and "
    "no session state. Right for short-lived or many processes.",
)
DIRECT = ConnectionKind(
    "direct connection (session mode)",
    "Port 5432 is a direct, session-mode connection: a process keeps its server connection, "
    "so persistent connections (CONN_MAX_AGE) are used and checked before reuse. Right for "
    "long-running processes such as gunicorn workers and management commands; mind the "
    "server's connection limit when running many of them.",
)


def connection_kind(config: dict) -> ConnectionKind:
    if str(config.get("PORT") or DIRECT_PORT) == str(POOLER_PORT):
        return POOLER
    return DIRECT


def is_local_host(host: str | None) -> bool:
    # No host, a socket path, or a loopback name: the database is on this machine.
    return not host or host in LOCAL_HOSTS or host.startswith("/")


def database_config(url: str, *, conn_max_age: int = 60) -> dict:
    """Turn a database URL into a DATABASES entry with the rules above applied."""
    config = environ.Env.db_url_config(url)
    if config["ENGINE"] in {"django.db.backends.postgresql_psycopg2"}:
        config["ENGINE"] = "django.db.backends.postgresql"
    if config["ENGINE"] not in POSTGRES_ENGINES:
        raise ImproperlyConfigured(
            f"DATABASE_URL {describe_url(url)} is not PostgreSQL: the console runs on "
            "PostgreSQL only (postgres://...). Without one, `make run` and `make test` "
            "start an embedded PostgreSQL."
        )
    # A Unix-socket folder percent-encoded as the host (postgres://user@%2Fpath/db).
    config["HOST"] = unquote(config.get("HOST") or "")

    options = config.setdefault("OPTIONS", {})
    options.setdefault("connect_timeout", 10)
    if not is_local_host(config.get("HOST")):
        options.setdefault("sslmode", "require")

    if connection_kind(config) is POOLER:
        config["CONN_MAX_AGE"] = 0
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
        # psycopg 3 prepares statements after a few executions; a prepared statement
        # lives on one server connection, which transaction mode does not guarantee.
        options["prepare_threshold"] = None
    else:
        config["CONN_MAX_AGE"] = conn_max_age
        config["CONN_HEALTH_CHECKS"] = True
    return config


def describe_url(url: str) -> str:
    """The URL with its password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    if netloc == parts.netloc:  # an unencoded '@' in the password defeats the replace
        netloc = f"{parts.username}:****@{parts.hostname}" + (
            f":{parts.port}" if parts.port else ""
        )
    return parts._replace(netloc=netloc).geturl()
