"""A cluster's kubeconfig: checked when an operator pastes it, not when the nightly job runs.

We accept what `kubectl config view --minify --flatten` prints for a service account or a
client certificate: the credentials inline (`token`, `client-certificate-data` and
`client-key-data`, `certificate-authority-data`). We refuse what would make this server do
something on the kubeconfig's say-so: read its own files (`tokenFile`, `certificate-authority`,
...), run a command (`exec`, `auth-provider`), skip TLS verification, go through a proxy
(`proxy-url`) or check another name than the server's (`tls-server-name`). The server URL is
a scheme, a host and a port, nothing more, and its host follows the same address rule as a
cluster's API URL (`plumbing.outbound`): `validate_kubeconfig` resolves it when a kubeconfig
is saved, and every connection checks again.

Messages name the entry and the key to fix and never quote a value other than the server URL,
so they are safe to show on a form and to log.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from plumbing import outbound

# Far above any real kubeconfig; a bigger paste is a mistake, or an attempt to tie up YAML.
MAX_KUBECONFIG_CHARS = 256 * 1024
# What a cluster entry may hold: anything else could change where or how we connect.
_CLUSTER_KEYS = {
    "server",
    "certificate-authority-data",
    "insecure-skip-tls-verify",  # accepted only as false
    "disable-compression",
    "extensions",
}


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used; the message names what to fix."""


class ActiveContext(NamedTuple):
    """The context a client would use, with the cluster and user it points at."""

    context_name: str
    cluster_name: str
    cluster: dict[str, Any]
    user_name: str
    user: dict[str, Any]

    @property
    def server(self) -> str:
        return self.cluster["server"]

    @property
    def auth_kind(self) -> str:
        return "token" if self.user.get("token") else "client certificate"


# Keys that make the client read a file on this server; their `-data` forms carry the contents.
_FILE_KEYS = {
    "certificate-authority": "certificate-authority-data",
    "client-certificate": "client-certificate-data",
    "client-key": "client-key-data",
    "tokenFile": "token",
}


def parse_kubeconfig(text: str) -> dict:
    """The kubeconfig as a dict the `kubernetes` client can load, or KubeconfigError.

    The returned dict always has `current-context` set (filled in when the kubeconfig has
    exactly one context), because the client needs it.
    """
    config = _load_yaml(text)
    active = _resolve(config)
    _check_cluster(active.cluster_name, active.cluster)
    _check_user(active.user_name, active.user)
    return {**config, "current-context": active.context_name}


def validate_kubeconfig(text: str) -> dict:
    """`parse_kubeconfig`, and the server's host resolved and checked against the outbound
    address rule: for when a kubeconfig is saved."""
    config = parse_kubeconfig(text)
    active = active_context(config)
    problem = outbound.destination_problem(active.server)
    if problem:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{active.cluster_name}' server {active.server} {problem}."
        )
    return config


def active_context(config: dict) -> ActiveContext:
    """The context, cluster and user of a kubeconfig that `parse_kubeconfig` accepted."""
    return _resolve(config)


def kubeconfig_summary(text: str) -> str:
    """One line for operators saying which server and user a kubeconfig uses, without secrets."""
    active = active_context(parse_kubeconfig(text))
    return f"cluster {active.server}, user {active.user_name} ({active.auth_kind})"


def _load_yaml(text: str) -> dict:
    if not isinstance(text, str):
        raise KubeconfigError("The kubeconfig must be text.")
    if len(text) > MAX_KUBECONFIG_CHARS:
        raise KubeconfigError(
            f"The kubeconfig is longer than {MAX_KUBECONFIG_CHARS // 1024} KB; paste the "
            "output of `kubectl config view --minify --flatten`."
        )
    try:
        config = yaml.safe_load(text)
    except RecursionError:
        raise KubeconfigError("The kubeconfig is nested too deeply to be a kubeconfig.") from None
    except yaml.YAMLError as exc:
        # str(exc) quotes the offending line, which may hold a token: give its position only.
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "it could not be read"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise KubeconfigError(f"The kubeconfig is not valid YAML: {where}{problem}.") from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        # PyYAML's constructors raise these for a value that reads as a type it is not (a
        # date such as 2026-02-30, `!!int abc`, `!!bool x`); their messages quote the value,
        # which may be part of a secret.
        raise KubeconfigError(
            "The kubeconfig is not valid YAML: a value could not be read as the type it is "
            "written as (an impossible date such as 2026-02-30, or a tag such as !!int on "
            "text); quote such values."
        ) from None
    if config is None:
        raise KubeconfigError("The kubeconfig is empty.")
    if not isinstance(config, dict):
        raise KubeconfigError(
            "The kubeconfig must be a YAML mapping with clusters, users and contexts; "
            f"this is a {_yaml_kind(config)}."
        )
    return config


def _yaml_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "text string"
    return type(value).__name__


def _named_entries(config: dict, key: str, inner: str) -> dict[str, dict]:
    """`clusters`, `users` or `contexts` as name -> inner mapping; duplicates are refused."""
    entries = config.get(key) or []
    if not isinstance(entries, list):
        raise KubeconfigError(f"The kubeconfig's `{key}` must be a list.")
    named: dict[str, dict] = {}
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise KubeconfigError(f"Entry {position} of the kubeconfig's `{key}` has no name.")
        name = entry["name"]
        if name in named:
            raise KubeconfigError(f"The kubeconfig has two {key} named '{name}'.")
        body = entry.get(inner)
        if not isinstance(body, dict):
            raise KubeconfigError(
                f"The kubeconfig's {key} entry '{name}' has no `{inner}` mapping."
            )
        named[name] = body
    return named


def _resolve(config: dict) -> ActiveContext:
    clusters = _named_entries(config, "clusters", "cluster")
    if not any(cluster.get("server") for cluster in clusters.values()):
        raise KubeconfigError("The kubeconfig has no cluster with a server address.")
    users = _named_entries(config, "users", "user")
    if not users:
        raise KubeconfigError("The kubeconfig has no users.")
    contexts = _named_entries(config, "contexts", "context")

    current = config.get("current-context")
    if current:
        if current not in contexts:
            raise KubeconfigError(
                f"The kubeconfig's current-context '{current}' names no context in `contexts`."
            )
        context_name = current
    elif len(contexts) == 1:
        context_name = next(iter(contexts))
    elif not contexts:
        raise KubeconfigError("The kubeconfig has no contexts.")
    else:
        raise KubeconfigError(
            "The kubeconfig has several contexts and no current-context: set current-context."
        )

    context = contexts[context_name]
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if cluster_name not in clusters:
        raise KubeconfigError(
            f"The kubeconfig's context '{context_name}' names cluster '{cluster_name}', "
            "which is not in `clusters`."
        )
    if user_name not in users:
        raise KubeconfigError(
            f"The kubeconfig's context '{context_name}' names user '{user_name}', "
            "which is not in `users`."
        )
    return ActiveContext(
        context_name=context_name,
        cluster_name=cluster_name,
        cluster=clusters[cluster_name],
        user_name=user_name,
        user=users[user_name],
    )


def _check_cluster(name: str, cluster: dict) -> None:
    server = cluster.get("server")
    if not server or not isinstance(server, str):
        raise KubeconfigError(f"The kubeconfig's cluster '{name}' has no server address.")
    try:
        parts = urlsplit(server)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' server is not a valid URL."
        ) from None
    # Before the scheme check, which quotes the URL: a password in it is never shown back.
    if parts.username or parts.password:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' server URL must not carry a user or password."
        )
    if parts.scheme != "https" or not parts.hostname:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' server must be an https:// URL, not '{server}'."
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in server:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' server must be only https://host:port, "
            "without a path, query or fragment."
        )
    problem = outbound.url_problem(server)
    if problem:
        raise KubeconfigError(f"The kubeconfig's cluster '{name}' server {problem}.")
    if "proxy-url" in cluster:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' sets proxy-url: this server connects to the "
            "API server directly. Remove it."
        )
    if "tls-server-name" in cluster:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' sets tls-server-name: the server's certificate "
            "must match the host in its server URL. Remove it."
        )
    # The client reads any truthy value (even the string "false") as "skip verification".
    if cluster.get("insecure-skip-tls-verify", False) is not False:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' sets insecure-skip-tls-verify: TLS verification "
            "must stay on. Remove it and give the cluster's CA as certificate-authority-data."
        )
    _refuse_file_keys("cluster", name, cluster)
    unknown = sorted(str(key) for key in cluster if key not in _CLUSTER_KEYS)
    if unknown:
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' has settings this server does not use: "
            f"{', '.join(unknown)}. Keep only server and certificate-authority-data."
        )
    ca_data = cluster.get("certificate-authority-data")
    if ca_data is not None and b"-----BEGIN CERTIFICATE-----" not in _b64(ca_data):
        raise KubeconfigError(
            f"The kubeconfig's cluster '{name}' certificate-authority-data is not a base64 "
            "PEM certificate."
        )


def _check_user(name: str, user: dict) -> None:
    if "exec" in user or "auth-provider" in user:
        raise KubeconfigError(
            f"The kubeconfig's user '{name}' gets credentials by running a command or plugin "
            "(exec / auth-provider), which this server does not do: use a service account "
            "token or a client certificate."
        )
    if "username" in user or "password" in user:
        raise KubeconfigError(
            f"The kubeconfig's user '{name}' uses a username and password, which Kubernetes "
            "no longer accepts: use a service account token or a client certificate."
        )
    _refuse_file_keys("user", name, user)
    token = user.get("token")
    has_cert = "client-certificate-data" in user or "client-key-data" in user
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise KubeconfigError(f"The kubeconfig's user '{name}' has an empty token.")
    if token is not None and not outbound.is_header_safe(token):
        # A token is sent as "Authorization: Bearer <token>": a line break (a `token: |`
        # block keeps the last one) would fail every request, in an error quoting it.
        raise KubeconfigError(
            f"The kubeconfig's user '{name}' has a token with a space, line break or control "
            "character: a token is one unbroken line (check the end of what was pasted)."
        )
    if has_cert:
        for key in ("client-certificate-data", "client-key-data"):
            if not user.get(key):
                raise KubeconfigError(f"The kubeconfig's user '{name}' has no {key}.")
        if b"-----BEGIN" not in _b64(user["client-certificate-data"]) or b"-----BEGIN" not in (
            _b64(user["client-key-data"])
        ):
            raise KubeconfigError(
                f"The kubeconfig's user '{name}' client-certificate-data and client-key-data "
                "must be base64 PEM."
            )
    if not token and not has_cert:
        raise KubeconfigError(
            f"The kubeconfig's user '{name}' has no credentials: give a token, or "
            "client-certificate-data and client-key-data."
        )


def _refuse_file_keys(kind: str, name: str, entry: dict) -> None:
    for file_key, data_key in _FILE_KEYS.items():
        if file_key in entry:
            raise KubeconfigError(
                f"The kubeconfig's {kind} '{name}' refers to a file ({file_key}); this server "
                f"does not read files named in a kubeconfig: paste the contents as {data_key} "
                "(`kubectl config view --minify --flatten` does this)."
            )


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        return b""
    try:
        # Lenient like the client's own decoding: line breaks inside the data are fine.
        return base64.b64decode(value)
    except (binascii.Error, ValueError):
        return b""
