"""Hopsworks: the only module that talks to a cluster's admin REST API.

Base URL `<api_url>/hopsworks-api/api`, header `Authorization: ApiKey <key>`. Every failure
becomes a `HopsworksError` whose message an operator can act on and which never contains
the API key, nor anything of the answer's body (the URL may point anywhere an operator
typed: a page must not show what it answered; a short excerpt goes to the log). TLS
verification is always on: against the system trust store, or against the cluster's own CA
when one is given. Calls go through `plumbing.outbound`: the address rule is checked on
every connection, each call has one deadline (connect, reads, retries and their pauses),
and answers are read up to a size limit.
"""

from __future__ import annotations

import contextlib
import http
import json
import logging
import os
import re
import ssl
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from plumbing import outbound

logger = logging.getLogger(__name__)

ACTIVE, DEACTIVATED = 2, 3

API_PATH = "/hopsworks-api/api"
REMOTE_USERS_FILTER = ("filter_by", "type:REMOTE_ACCOUNT_TYPE")
MIN_API_KEY_LENGTH = 8
# A server that ignores `offset` would otherwise page forever.
MAX_PAGES = 10_000
# A whole listing (every page) gets this many calls' deadlines in all: each page has its own
# deadline, and 10,000 of them would hold a job for days.
LISTING_CALLS = 5
CHUNK_BYTES = 64 * 1024
LOGGED_BODY_CHARS = 200


class HopsworksError(Exception):
    """The one error this module raises once a client exists.

    `str(error)` names the cluster URL, the operation, the HTTP status and Hopsworks' error
    code, and never the API key or the answer's text. `retriable` says whether trying again
    later may help.
    """

    status: int | None
    retriable: bool
    error_code: int | None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retriable: bool = False,
        error_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable
        self.error_code = error_code


@dataclass(frozen=True)
class HopsworksUser:
    id: int | None
    email: str
    username: str
    status: int | None
    firstname: str
    lastname: str

    @property
    def is_active(self) -> bool:
        return self.status == ACTIVE


@dataclass(frozen=True)
class HopsworksProject:
    id: int
    name: str
    namespace: str
    creator_email: str | None
    creator_username: str | None


@dataclass(frozen=True)
class ConnectionReport:
    users: int
    projects: int


def namespace_for_project(name: str) -> str:
    """The Kubernetes namespace Hopsworks gives a project, for versions that do not say."""
    return name.lower().replace("_", "-")


def validate_api_url(url: str, *, resolve: bool = False) -> str | None:
    """An error message for a cluster URL we refuse to talk to, or None when it is fine.

    https only: the API key travels in every request (`plumbing.outbound`). With `resolve`
    (when a URL is saved), the host's addresses are checked too; connections check again.
    """
    if not isinstance(url, str) or not url.strip():
        return "Enter the cluster's URL, for example https://hopsworks.example.com."
    check = outbound.destination_problem if resolve else outbound.url_problem
    problem = check(url)
    return f"The cluster URL {problem}." if problem else None


def normalize_api_url(url: str) -> str:
    """The one spelling of a cluster's address, so that two spellings of one cluster are
    seen as one: scheme and host in lower case, no default port, no trailing slash, and
    without the API base (`/hopsworks-api/api`) operators sometimes paste."""
    url = (url or "").strip().rstrip("/")
    if url.lower().endswith(API_PATH):
        url = url[: -len(API_PATH)].rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url  # validate_api_url says what is wrong with it
    if not parts.scheme or not parts.hostname:
        return url
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if port is not None and (scheme, port) not in (("https", 443), ("http", 80)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), parts.query, ""))


def validate_api_key(key: str | None) -> str | None:
    """An error message for an API key that cannot be a Hopsworks key, or None."""
    if not isinstance(key, str) or not key.strip():
        return "Enter the API key of a Hopsworks admin (scope: admin)."
    if len(key.strip()) < MIN_API_KEY_LENGTH:
        return (
            f"An API key must be at least {MIN_API_KEY_LENGTH} characters: paste the whole "
            "key Hopsworks showed when it was created (Account settings > API keys)."
        )
    if not outbound.is_header_safe(key.strip()):
        return (
            "An API key is one unbroken line of letters, digits and punctuation: this one has "
            "a space, line break or control character inside (check what was pasted)."
        )
    return None


def validate_ca_bundle(pem: str) -> str | None:
    """An error message when `pem` holds no usable CA certificate, or None when it does."""
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError, TypeError) as exc:
        return f"The CA bundle is not a valid PEM certificate bundle ({exc})."
    return None


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class HopsworksClient:
    """One cluster's admin API. Not shared between threads (it holds a `requests.Session`)."""

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        ca_bundle_pem: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
        backoff: float = 0.5,
        sleep: Callable[[float], object] = time.sleep,
        page_size: int = 200,
        deadline: float = 60.0,
        max_response_bytes: int = 5 * 1024 * 1024,
    ) -> None:
        problem = validate_api_url(api_url)
        if problem:
            raise ValueError(f"Invalid Hopsworks API URL: {problem}")
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("The Hopsworks API key is empty.")
        # Real keys are long; a short one would also make redacting it from messages
        # mangle ordinary words.
        if len(api_key.strip()) < MIN_API_KEY_LENGTH:
            raise ValueError(
                f"The Hopsworks API key is too short (under {MIN_API_KEY_LENGTH} characters) "
                "to be a real key."
            )
        if connect_timeout <= 0 or read_timeout <= 0 or deadline <= 0:
            raise ValueError("Hopsworks timeouts and the deadline must be positive.")
        if max_attempts < 1 or page_size < 1 or backoff < 0:
            raise ValueError("max_attempts and page_size must be >= 1 and backoff >= 0.")

        url = api_url.strip().rstrip("/")
        # Operators sometimes paste the API base itself; accept it rather than double it.
        if url.endswith(API_PATH):
            url = url[: -len(API_PATH)]
        self.api_url = url
        self._base = url + API_PATH
        self._api_key = api_key.strip()
        self._timeout = (connect_timeout, read_timeout)
        self._deadline = deadline
        self._max_response_bytes = max_response_bytes
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._sleep = sleep
        self._page_size = page_size

        # requests verifies against a file path, so a per-cluster CA lives in a temporary
        # file for as long as this client does.
        self._verify: bool | str = True
        self._cleanup: weakref.finalize | None = None
        if ca_bundle_pem is not None and ca_bundle_pem.strip():
            problem = validate_ca_bundle(ca_bundle_pem)
            if problem:
                raise ValueError(problem)
            with tempfile.NamedTemporaryFile(
                "w", prefix="hopsworks-ca-", suffix=".pem", delete=False
            ) as bundle:
                bundle.write(ca_bundle_pem)
            self._verify = bundle.name
            self._cleanup = weakref.finalize(self, _remove_quietly, bundle.name)

        self._session = outbound.guarded_session()
        self._session.headers.update(
            {
                "Authorization": f"ApiKey {self._api_key}",
                "Accept": "application/json",
                # Sizes are capped as received: a compressed answer could expand past it.
                "Accept-Encoding": "identity",
            }
        )

    def close(self) -> None:
        self._session.close()
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> HopsworksClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HopsworksClient(api_url={self.api_url!r})"

    # Users

    def find_user(self, *, email: str) -> HopsworksUser | None:
        """The OAuth (remote) account with this email, or None.

        Hopsworks has no email filter, so this pages through the remote accounts and
        compares emails case-insensitively. Local (password) accounts are never returned:
        we only manage the accounts we created.
        """
        wanted = self._clean_email(email, operation="look up a user").casefold()
        operation = f"look up user {email.strip()}"
        for item in self._pages("/admin/users", params=[REMOTE_USERS_FILTER], operation=operation):
            if isinstance(item, dict) and str(item.get("email", "")).strip().casefold() == wanted:
                return self._user(item, operation=operation)
        return None

    def get_user(self, *, user_id: int) -> HopsworksUser:
        operation = f"read user {user_id}"
        self._check_user_id(user_id, operation=operation)
        body = self._call("GET", f"/admin/users/{user_id}", operation=operation)
        return self._user(body, operation=operation)

    def create_oauth_user(
        self,
        *,
        email: str,
        given_name: str,
        surname: str,
        subject: str,
        client_id: str,
        max_num_projects: int,
    ) -> HopsworksUser:
        """Create an OAuth account for an Auth0 identity, then find its numeric id.

        Sent once, never retried here: a retried POST could create the account twice.
        Use `ensure_oauth_user` to recover from a failure.
        """
        email = self._clean_email(email, operation="create a user")
        operation = f"create user {email}"
        if not isinstance(subject, str) or not subject.strip():
            raise HopsworksError(f"Hopsworks at {self.api_url}: cannot {operation}: no Auth0 id.")
        if not isinstance(client_id, str) or not client_id.strip():
            raise HopsworksError(
                f"Hopsworks at {self.api_url}: cannot {operation}: no OAuth client id."
            )
        if (
            not isinstance(max_num_projects, int)
            or isinstance(max_num_projects, bool)
            or max_num_projects < 0
        ):
            raise HopsworksError(
                f"Hopsworks at {self.api_url}: cannot {operation}: the project limit must be "
                f"a whole number >= 0, not {max_num_projects!r}."
            )
        params = [
            ("accountType", "REMOTE_ACCOUNT_TYPE"),
            ("type", "OAUTH2"),
            ("email", email),
            ("givenName", str(given_name or "").strip()),
            ("surname", str(surname or "").strip()),
            ("maxNumProjects", str(max_num_projects)),
            ("subject", subject.strip()),
            ("clientId", client_id.strip()),
        ]
        self._call("POST", "/admin/users", params=params, operation=operation)
        # The answer carries no numeric id, which every later call needs.
        created = self.find_user(email=email)
        if created is None:
            raise HopsworksError(
                f"Hopsworks at {self.api_url}: {operation}: Hopsworks accepted the new account "
                "but it does not appear among the OAuth accounts; look for it in Hopsworks.",
                retriable=True,
            )
        return created

    def ensure_oauth_user(
        self,
        *,
        email: str,
        given_name: str,
        surname: str,
        subject: str,
        client_id: str,
        max_num_projects: int,
    ) -> HopsworksUser:
        """The OAuth account for this email, created if absent. Safe to call again.

        An existing account is returned unchanged. When the create fails (a duplicate, a
        lost answer, another worker winning the race) the account is looked up once more
        instead of being created again.
        """
        existing = self.find_user(email=email)
        if existing is not None:
            return existing
        try:
            return self.create_oauth_user(
                email=email,
                given_name=given_name,
                surname=surname,
                subject=subject,
                client_id=client_id,
                max_num_projects=max_num_projects,
            )
        except HopsworksError as error:
            if error.status in (401, 403) or (error.status is None and not error.retriable):
                raise  # a bad key or bad input: looking again cannot help
            try:
                found = self.find_user(email=email)
            except HopsworksError as lookup_error:
                logger.warning(
                    "Hopsworks at %s: lookup after a failed create also failed: %s",
                    self.api_url,
                    lookup_error,
                )
                found = None
            if found is None:
                raise
            logger.info(
                "Hopsworks at %s: create user %s failed (%s) but the account exists; using it",
                self.api_url,
                found.email,
                error,
            )
            return found

    def set_user_active(self, *, user_id: int, active: bool) -> HopsworksUser:
        """Let the account log in (status 2) or stop it (status 3); returns it as it now is.

        The PUT's answer carries no username or names, so the account is read back: a
        caller storing `username` must not get an empty one. Both requests are idempotent,
        so calling this again after an error is safe.
        """
        verb = "activate" if active else "deactivate"
        operation = f"{verb} user {user_id}"
        self._check_user_id(user_id, operation=operation)
        self._call(
            "PUT",
            f"/admin/users/{user_id}",
            json_body={"status": ACTIVE if active else DEACTIVATED},
            operation=operation,
        )
        return self.get_user(user_id=user_id)

    # Projects and connection

    def list_projects(self) -> list[HopsworksProject]:
        """Every project with its creator and Kubernetes namespace."""
        operation = "list projects"
        return [
            self._project(item, operation=operation)
            for item in self._pages(
                "/admin/projects", params=[("expand", "creator")], operation=operation
            )
        ]

    def check_connection(self) -> ConnectionReport:
        """Two cheap requests proving the URL, the CA and the key work; counts for the admin."""
        users = self._count("/admin/users", operation="test connection (count users)")
        projects = self._count("/admin/projects", operation="test connection (count projects)")
        return ConnectionReport(users=users, projects=projects)

    # Transport

    def _call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: list[tuple[str, str | int]] | None = None,
        json_body: dict | None = None,
    ) -> Any:
        """One API call: JSON in, JSON out (None for an empty body), errors as HopsworksError.

        GET and PUT are idempotent, so transport failures and 5xx are retried with
        exponential backoff, within the call's one deadline. POST is sent once.
        """
        attempts = self._max_attempts if method in ("GET", "PUT") else 1
        where = f"Hopsworks at {self.api_url}: {operation} ({method} {path})"
        tried = 0
        with outbound.deadline(self._deadline) as budget:
            for attempt in range(1, attempts + 1):
                tried = attempt
                status: int | None = None
                cause: Exception | None = None
                try:
                    response, body = self._send(
                        method, path, params=params, json_body=json_body, budget=budget
                    )
                except outbound.ResponseTooLarge as exc:
                    raise HopsworksError(
                        f"{where} failed: {exc}, more than a Hopsworks answer can be. Check "
                        "that the URL points at the Hopsworks API."
                    ) from None
                except (requests.RequestException, outbound.DeadlineExceeded) as exc:
                    failure, cause = self._transport_failure(exc, budget=budget, where=where)
                else:
                    if response.status_code < 500:
                        return self._answer(response, body, where=where)
                    failure, status = _describe_answer(response, body), response.status_code
                    self._log_body(where, response, body)

                if attempt == attempts or budget.expired:
                    break
                delay = self._backoff * 2 ** (attempt - 1)
                if delay >= budget.remaining():
                    break  # no time left for another attempt
                logger.warning(
                    "%s failed (%s); retrying in %gs (attempt %d of %d)",
                    where,
                    self._redact(failure),
                    delay,
                    attempt,
                    attempts,
                )
                self._sleep(delay)

        times = "once" if tried == 1 else f"{tried} times"
        if status is None:
            message = (
                f"{where} failed: could not reach the cluster at {self.api_url}: {failure}; "
                f"tried {times}."
            )
        else:
            message = f"{where} failed: Hopsworks failed ({failure}); tried {times}."
        raise HopsworksError(self._redact(message), status=status, retriable=True) from cause

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str | int]] | None,
        json_body: dict | None,
        budget: outbound.Budget,
    ) -> tuple[requests.Response, bytes]:
        """One request, and its whole (capped) body, within what the deadline leaves."""
        connect, read = self._timeout
        response = self._session.request(
            method,
            self._base + path,
            params=params,
            json=json_body,
            timeout=(budget.cap(connect), budget.cap(read)),
            verify=self._verify,
            # A redirect is a misconfigured URL or a login proxy; never follow it with the
            # key attached.
            allow_redirects=False,
            stream=True,
        )
        with response:
            body = outbound.read_capped(
                response.iter_content(CHUNK_BYTES), limit=self._max_response_bytes
            )
        return response, body

    def _transport_failure(
        self, exc: Exception, *, budget: outbound.Budget, where: str
    ) -> tuple[str, Exception]:
        """What went wrong on the way, for a retriable failure; raises for a final one."""
        refused = outbound.find_cause(exc, outbound.DestinationRefused)
        if refused is not None:
            raise HopsworksError(
                f"{where} refused: the cluster's host {refused.problem}. Nothing was sent."
            ) from None
        if budget.expired or outbound.find_cause(exc, outbound.DeadlineExceeded):
            return (
                f"no complete answer within {budget.seconds:g}s (the deadline for one call)",
                exc,
            )
        if isinstance(exc, requests.exceptions.SSLError):
            raise HopsworksError(
                self._redact(
                    f"{where} failed: the cluster at {self.api_url} could not be reached "
                    f"securely: TLS verification failed ({_reason(exc)}). Check the "
                    "cluster's URL and its CA certificate."
                ),
            ) from exc
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return f"no connection within {self._timeout[0]:g}s (connect timeout)", exc
        # A read that times out in the body comes as a ConnectionError around urllib3's.
        if isinstance(exc, requests.exceptions.Timeout) or outbound.find_cause(
            exc, ReadTimeoutError
        ):
            return f"no answer within {self._timeout[1]:g}s (read timeout)", exc
        if isinstance(
            exc,
            requests.exceptions.ConnectionError
            | requests.exceptions.ChunkedEncodingError
            | requests.exceptions.ContentDecodingError,
        ):
            return _reason(exc), exc
        raise HopsworksError(self._redact(f"{where} failed: {_reason(exc)}.")) from exc

    def _answer(self, response: requests.Response, body: bytes, *, where: str) -> Any:
        status = response.status_code
        if 200 <= status < 300:
            if not body.strip():
                return None
            try:
                return json.loads(body)
            except (ValueError, RecursionError):
                self._log_body(where, response, body)
                raise HopsworksError(
                    self._redact(
                        f"{where} failed: Hopsworks answered HTTP {status} but not with JSON "
                        f"({len(body)} bytes). Check that the URL points at the Hopsworks API."
                    ),
                    status=status,
                ) from None
        self._log_body(where, response, body)
        error_code = _error_code(body)
        if status in (401, 403):
            message = (
                f"{where} was refused ({_describe_answer(response, body)}). Check the "
                "cluster's API key: it must be valid and have the admin scope."
            )
        elif 300 <= status < 400:
            message = (
                f"{where} failed: Hopsworks answered with a redirect (HTTP {status}), which "
                "is not followed. Check the cluster URL."
            )
        else:
            message = f"{where} was rejected ({_describe_answer(response, body)})."
        raise HopsworksError(self._redact(message), status=status, error_code=error_code)

    def _log_body(self, where: str, response: requests.Response, body: bytes) -> None:
        """What the server said, for the operator reading the logs (never for a page)."""
        excerpt = body[: LOGGED_BODY_CHARS * 4].decode("utf-8", "replace")[:LOGGED_BODY_CHARS]
        location = response.headers.get("Location")
        logger.warning(
            "%s: HTTP %s%s, %d bytes: %r",
            where,
            response.status_code,
            f" to {self._redact(location)!r}" if location else "",
            len(body),
            self._redact(excerpt),
        )

    def _pages(self, path: str, *, params: list[tuple[str, str]], operation: str) -> Iterator[Any]:
        """Every item of a list endpoint, one page at a time, until `count` is reached; all
        the pages within LISTING_CALLS calls' deadlines (an earlier deadline of the caller's
        binds first)."""
        seconds = self._deadline * LISTING_CALLS
        listing = outbound.Budget(seconds=seconds, ends=time.monotonic() + seconds)
        offset = 0
        for _ in range(MAX_PAGES):
            too_slow = HopsworksError(
                f"Hopsworks at {self.api_url}: {operation} did not finish within {seconds:g} s "
                f"({offset} items read in that time): the listing is too slow."
            )
            if listing.expired:
                raise too_slow
            # Entered and left around each page, never across a `yield`: the caller's code
            # between pages runs under its own deadline, not this one.
            try:
                with outbound.deadline(listing.remaining()):
                    body = self._call(
                        "GET",
                        path,
                        params=[*params, ("offset", offset), ("limit", self._page_size)],
                        operation=operation,
                    )
            except HopsworksError as error:
                if listing.expired:  # cut by the listing's deadline, not the call's own
                    raise too_slow from error
                raise
            data = self._object(body, operation=operation)
            items = data.get("items") or []  # Hopsworks leaves "items" out when empty
            if not isinstance(items, list):
                raise self._malformed(operation, "'items' is not a list")
            count = data.get("count")
            yield from items
            offset += len(items)
            if not items:
                return
            if isinstance(count, int) and not isinstance(count, bool):
                if offset >= count:
                    return
            elif len(items) < self._page_size:
                return
        raise self._malformed(operation, f"the list did not end after {MAX_PAGES} pages")

    def _count(self, path: str, *, operation: str) -> int:
        body = self._call("GET", path, params=[("offset", 0), ("limit", 1)], operation=operation)
        data = self._object(body, operation=operation)
        count = data.get("count")
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            return count
        if count is None and not data.get("items"):
            return 0
        raise self._malformed(operation, "it has no 'count'")

    # Mapping answers

    def _user(self, data: Any, *, operation: str) -> HopsworksUser:
        data = self._object(data, operation=operation)
        email = data.get("email")
        if not isinstance(email, str) or not email:
            raise self._malformed(operation, "a user has no email")
        return HopsworksUser(
            id=self._int(data.get("id"), "id", operation=operation),
            email=email,
            username=str(data.get("username") or ""),
            status=self._optional_int(data.get("status"), "status", operation=operation),
            firstname=str(data.get("firstname") or ""),
            lastname=str(data.get("lastname") or ""),
        )

    def _project(self, data: Any, *, operation: str) -> HopsworksProject:
        data = self._object(data, operation=operation)
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise self._malformed(operation, "a project has no name")
        namespace = data.get("namespace")
        creator = data.get("creator")
        creator = creator if isinstance(creator, dict) else {}
        return HopsworksProject(
            id=self._int(data.get("id"), "id", operation=operation),
            name=name,
            namespace=namespace
            if isinstance(namespace, str) and namespace
            else namespace_for_project(name),
            creator_email=creator.get("email") or None,
            creator_username=creator.get("username") or None,
        )

    # Checks

    def _object(self, data: Any, *, operation: str) -> dict:
        if not isinstance(data, dict):
            raise self._malformed(operation, "it is not a JSON object")
        return data

    def _int(self, value: Any, field: str, *, operation: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise self._malformed(operation, f"{field!r} is not a number")

    def _optional_int(self, value: Any, field: str, *, operation: str) -> int | None:
        return None if value is None else self._int(value, field, operation=operation)

    def _malformed(self, operation: str, what: str) -> HopsworksError:
        return HopsworksError(
            self._redact(f"Hopsworks at {self.api_url}: {operation}: unexpected answer: {what}.")
        )

    def _clean_email(self, email: Any, *, operation: str) -> str:
        if not isinstance(email, str) or "@" not in email:
            raise HopsworksError(
                f"Hopsworks at {self.api_url}: cannot {operation}: {email!r} is not an email "
                "address."
            )
        return email.strip()

    def _check_user_id(self, user_id: Any, *, operation: str) -> None:
        if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id < 0:
            raise HopsworksError(
                f"Hopsworks at {self.api_url}: cannot {operation}: a Hopsworks user id is a "
                f"number, not {user_id!r}."
            )

    def _redact(self, text: str) -> str:
        # Hopsworks or a proxy could echo the key back, and a library's error may quote the
        # header with the key escaped (repr): neither form may reach a message.
        for form in {self._api_key, repr(self._api_key)[1:-1]}:
            if form:
                text = text.replace(form, "[API key]")
        return text


def _error_code(body: bytes) -> int | None:
    """Hopsworks' numeric error code, the one part of an error body a message may carry."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    code = data.get("errorCode") if isinstance(data, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _describe_answer(response: requests.Response, body: bytes) -> str:
    """'HTTP 404 Not Found, Hopsworks error code 160002': the status and, from the body,
    only the numeric code. Hopsworks' own text is logged, not shown."""
    status = response.status_code
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    text = f"HTTP {status} {phrase}".rstrip()
    code = _error_code(body)
    return f"{text}, Hopsworks error code {code}" if code is not None else text


def _reason(exc: requests.RequestException) -> str:
    """The useful part of a transport error: 'Connection refused', not urllib3's pool name."""
    inner = exc.args[0] if exc.args else exc
    inner = getattr(inner, "reason", None) or inner
    text = str(inner)
    text = re.sub(r"^\w+\(host='[^']*', port=\d+\): ", "", text)
    text = text.replace("Failed to establish a new connection: ", "")
    return text or type(exc).__name__
