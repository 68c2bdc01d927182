"""Calls to outside systems: where a credential may be sent, and how long a call may take.

Every outside system we call with a credential (a Hopsworks cluster's API key, a kubeconfig's
token, Stripe's secret key) goes through the rules here.

Where (`url_problem`, `destination_problem`): https only. DEBUG runs (`make run`, the tests)
may also use plain http to this machine and reach any address. With DEBUG off, a host's every
address must be public: no loopback, private, link-local, shared or cloud metadata address
(169.254.169.254 and friends), unless the host is named in OUTBOUND_ALLOWED_HOSTS (a cluster
on a private network). The rule is checked when a URL is saved and again on every connection
(`GuardedAdapter`, `GUARDED_POOL_CLASSES`), which then connects to an address it checked, so a
DNS answer that changes in between cannot send the credential elsewhere.

How long (`deadline`, `limits`): every call runs inside a deadline covering connect, TLS, every
read and write, retries and their pauses. A socket opened by the guarded transport never waits
longer than the time left, so a server that drips one byte at a time cannot hold a worker
past it (a per-read timeout alone restarts with every byte). Inside a web request a call gets
OUTBOUND_DEADLINE_SECONDS and one attempt; management commands declare `background_work()`
and get OUTBOUND_BACKGROUND_DEADLINE_SECONDS and retries. Answers are read up to
OUTBOUND_MAX_RESPONSE_BYTES (`read_capped`).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# Cloud instance metadata services: they hand out the machine's own credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)


class DeadlineExceeded(TimeoutError):
    """The call's deadline passed (raised by the guarded sockets; libraries see a timeout)."""


class ResponseTooLarge(Exception):
    """The answer was longer than we read (OUTBOUND_MAX_RESPONSE_BYTES)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


class DestinationRefused(NewConnectionError):
    """A connection we would not open: the host resolves to an address the rule refuses."""

    def __init__(self, conn, problem: str) -> None:
        super().__init__(conn, f"refused: the host {problem}")
        self.problem = problem


# Where


def _local_allowed() -> bool:
    return bool(getattr(settings, "OUTBOUND_ALLOW_LOCAL", False))


def _allowed_host(host: str) -> bool:
    allowed = getattr(settings, "OUTBOUND_ALLOWED_HOSTS", None) or ()
    return host.strip("[]").rstrip(".").lower() in {h.strip().lower() for h in allowed}


def url_problem(url: str) -> str | None:
    """What is wrong with `url` as a place to send a credential, or None when it is fine.

    Checks the URL itself (no DNS). The message completes "The URL ..." style sentences:
    callers prefix what the URL is.
    """
    if not isinstance(url, str) or not url.strip():
        return "is empty"
    url = url.strip()
    if any(char.isspace() or ord(char) < 32 for char in url):
        return "must not contain spaces or control characters"
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
    if parts.scheme == "http":
        if not _local_allowed():
            return "must use https:// (the credential is sent with every request)"
        if parts.hostname not in LOCAL_HOSTS:
            return (
                "must use https:// (http:// is accepted only for localhost or 127.0.0.1 in "
                "development, because the key is sent with every request)"
            )
    return None


def address_problem(address: str) -> str | None:
    """Why the rule refuses this IP address, or None for a public one.

    The message completes "The host ...": "resolves to 10.0.0.5, a private network address".
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"resolves to {address!r}, which is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            ip = embedded
    what = None
    if ip in METADATA_ADDRESSES:
        what = "a cloud metadata address"
    elif ip.is_loopback:
        what = "this machine (loopback)"
    elif ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        what = "not a public address"
    elif ip.is_link_local:
        what = "a link-local address"
    elif ip.is_private:
        what = "a private network address"
    elif not ip.is_global:
        what = "not a public address"
    return f"resolves to {address}, {what}" if what else None


# A name lookup's own limit where no deadline is set (a form checking an address), and its
# cap inside one: the resolver's retries could otherwise take half a minute.
DNS_SECONDS = 5.0
# Lookups run on these threads so that the caller can stop waiting (getaddrinfo cannot be
# interrupted): one that hangs keeps its thread until the resolver gives up.
_RESOLVER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="outbound-dns")


def resolve(host: str, port: int) -> list[tuple[int, int, tuple]]:
    """(family, protocol, socket address) for each address of `host`; raises socket.gaierror,
    also when no answer comes within the time the current deadline leaves (at most
    DNS_SECONDS)."""
    budget = _budget.get()
    within = budget.cap(DNS_SECONDS) if budget is not None else DNS_SECONDS
    lookup = _RESOLVER.submit(socket.getaddrinfo, host.strip("[]"), port, 0, socket.SOCK_STREAM)
    try:
        answers = lookup.result(timeout=within)
    except FutureTimeout:
        raise socket.gaierror(
            socket.EAI_AGAIN, f"no answer from DNS for {host} within {within:g} s"
        ) from None
    return [(family, proto, sockaddr) for family, _, proto, _, sockaddr in answers]


def _checked(host: str, port: int) -> tuple[list[tuple[int, int, tuple]], str | None]:
    """The addresses to connect to, and why they are refused (None when they may be used).

    Every address is checked, not just the first: a client may fall back to any of them.
    """
    addresses = resolve(host, port)
    if _local_allowed() or _allowed_host(host):
        return addresses, None
    for _, _, sockaddr in addresses:
        problem = address_problem(sockaddr[0])
        if problem:
            return addresses, (
                f"{problem} (a host on a private network can be named in OUTBOUND_ALLOWED_HOSTS)"
            )
    return addresses, None


def host_problem(host: str, port: int) -> str | None:
    """Why `host` may not be called (it does not resolve, or to a refused address), or None.
    Nothing to check (and no DNS lookup) in DEBUG runs or for an allowed host."""
    if _local_allowed() or _allowed_host(host):
        return None
    try:
        _, problem = _checked(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        return f"does not resolve ({exc.args[-1] if exc.args else exc})"
    return problem


def destination_problem(url: str) -> str | None:
    """`url_problem` and then the host's addresses (resolving it): for checks at save time.

    Host messages complete "The URL's host ..." sentences; url ones "The URL ...".
    """
    problem = url_problem(url)
    if problem:
        return problem
    parts = urlsplit(url.strip())
    problem = host_problem(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    return f"points at a refused address: its host {problem}" if problem else None


# How long


@dataclass
class Budget:
    """The time one call (or one piece of work) may still take, on the monotonic clock.
    `seconds` is the deadline's size, for messages."""

    seconds: float
    ends: float

    def remaining(self) -> float:
        return max(0.0, self.ends - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.ends

    def cap(self, timeout: float | None) -> float:
        """`timeout` (None: no limit of its own) cut to the time left; raises once none is."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"the {self.seconds:g} s deadline has passed")
        return left if timeout is None else min(timeout, left)


_budget: ContextVar[Budget | None] = ContextVar("outbound_budget", default=None)
_background: ContextVar[bool] = ContextVar("outbound_background", default=False)


@contextmanager
def deadline(seconds: float) -> Iterator[Budget]:
    """Everything sent and received inside must finish within `seconds`; nested deadlines
    keep the earlier end, so a piece of work can bound the calls it is made of."""
    budget = Budget(seconds=seconds, ends=time.monotonic() + seconds)
    outer = _budget.get()
    if outer is not None and outer.ends < budget.ends:
        budget = outer  # the earlier deadline binds, and messages name it
    token = _budget.set(budget)
    try:
        yield budget
    finally:
        _budget.reset(token)


def current_budget() -> Budget | None:
    return _budget.get()


@contextmanager
def background_work() -> Iterator[None]:
    """Mark work done outside a web request (management commands): calls get the longer
    deadline and retries. Anything not marked is treated as inside a web request."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


def in_background() -> bool:
    return _background.get()


@dataclass(frozen=True)
class Limits:
    """How long one call may take (connect, reads, retries and pauses), how often it is
    tried, and how much of an answer is read."""

    deadline: float
    attempts: int
    max_response_bytes: int


def limits(*, quick: bool = False) -> Limits:
    """The limits for a call made now: short and single inside a web request (or when the
    caller asks for `quick`), longer with retries in `background_work()`."""
    background = in_background() and not quick
    return Limits(
        deadline=float(
            settings.OUTBOUND_BACKGROUND_DEADLINE_SECONDS
            if background
            else settings.OUTBOUND_DEADLINE_SECONDS
        ),
        attempts=3 if background else 1,
        max_response_bytes=int(settings.OUTBOUND_MAX_RESPONSE_BYTES),
    )


def is_header_safe(credential: str) -> bool:
    """Whether a credential can be sent in an HTTP header as it is: visible ASCII only, no
    space, line break or control character. A key pasted with a line break would fail every
    request in an error that quotes the header (and the key)."""
    return bool(credential) and all(33 <= ord(c) <= 126 for c in credential)


def read_capped(chunks: Iterable[bytes], *, limit: int) -> bytes:
    """The answer's bytes, or ResponseTooLarge as soon as they pass `limit`."""
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise ResponseTooLarge(limit)
    return bytes(body)


def find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first `kind` in an exception's chain (causes, contexts, and the errors that
    requests and urllib3 keep in `args` and `reason`)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            return item
        todo.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return None


# The guarded transport: urllib3 connections that check the address and obey the deadline.


class _DeadlineSocketMixin:
    """Every blocking send and receive waits at most the time the current deadline leaves."""

    _wanted_timeout: float | None = None

    def settimeout(self, value):
        self._wanted_timeout = value
        super().settimeout(value)

    def _within_deadline(self, operation, *args):
        budget = _budget.get()
        super().settimeout(
            self._wanted_timeout if budget is None else budget.cap(self._wanted_timeout)
        )
        try:
            return operation(*args)
        except TimeoutError as exc:
            if budget is not None and budget.expired:
                raise DeadlineExceeded(f"the {budget.seconds:g} s deadline has passed") from exc
            raise

    def recv(self, *args):
        return self._within_deadline(super().recv, *args)

    def recv_into(self, *args):
        return self._within_deadline(super().recv_into, *args)

    def send(self, *args):
        return self._within_deadline(super().send, *args)

    def sendall(self, *args):
        return self._within_deadline(super().sendall, *args)


class _DeadlineSocket(_DeadlineSocketMixin, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineSocketMixin, ssl.SSLSocket):
    pass


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) else None


class _GuardedConnectionMixin:
    def _new_conn(self) -> socket.socket:
        budget = _budget.get()
        if budget is None:
            # A programming error, not a network one: every outbound call sets a deadline.
            raise RuntimeError("An outbound connection was opened outside outbound.deadline().")
        try:
            addresses, problem = _checked(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        if problem:
            raise DestinationRefused(self, problem)
        error: Exception | None = None
        for tried, (family, proto, sockaddr) in enumerate(addresses):
            if tried and budget.expired:
                break  # the last address's error says why
            # Cut for each address to what is left: N addresses that never answer must not
            # take N connect timeouts.
            timeout = budget.cap(_number(self.timeout))
            sock = _DeadlineSocket(family, socket.SOCK_STREAM, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)  # an address we checked: no second DNS lookup
            except TimeoutError as exc:
                sock.close()
                error = ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={timeout:g})"
                )
                error.__cause__ = exc
            except OSError as exc:
                sock.close()
                error = NewConnectionError(self, f"Failed to establish a new connection: {exc}")
                error.__cause__ = exc
            else:
                # Keep the cut timeout for the TLS handshake (one call in C that our socket
                # methods do not see); later operations cut urllib3's own timeouts again.
                sock._wanted_timeout = _number(self.timeout)
                return sock
        raise error or NewConnectionError(self, f"{self.host} has no address")


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    def connect(self) -> None:
        # The TLS handshake is bounded by the connect timeout, itself cut to the time left.
        super().connect()
        if type(self.sock) is ssl.SSLSocket:
            wanted = self.sock.gettimeout()
            # Same layout, our socket methods: the deadline now covers every TLS read too.
            self.sock.__class__ = _DeadlineSSLSocket
            self.sock._wanted_timeout = wanted


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


# For a urllib3.PoolManager: `manager.pool_classes_by_scheme = GUARDED_POOL_CLASSES`.
GUARDED_POOL_CLASSES = {"http": _GuardedHTTPConnectionPool, "https": _GuardedHTTPSConnectionPool}


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections check addresses and obey the deadline. No proxy:
    a proxy would make the address check meaningless."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = GUARDED_POOL_CLASSES

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        raise requests.exceptions.InvalidProxyURL("Outbound calls do not go through proxies.")


def guarded_session() -> requests.Session:
    """A requests session for outside systems: guarded connections, no retries of its own,
    and nothing taken from the environment (no HTTP(S)_PROXY, no .netrc credentials)."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
