"""OpenCost: the only module that talks to a cluster's Kubernetes API (and so imports its SDK).

OpenCost is reached through the API server's service proxy, authenticated as the cluster's
kubeconfig user, so nothing but the API server has to be exposed. One call answers one UTC
day's usage per namespace. Every failure becomes a MetricsError whose message an operator
can act on; no message carries a token or key, nor text from the answer's body (it is
logged). The connection goes through `plumbing.outbound`: the server's address is checked
when connecting, no proxy is used, the call has one deadline and the answer a size limit.

Figures stay Decimal from the JSON text on (`json.loads(parse_float=Decimal)`, whole numbers as
exact ints made Decimal when they are read): they are
billed. OpenCost rounds them to 5 places, sends NaN/Inf as null, and sends negatives when its
metrics have gaps; those count as 0 and say so in `NamespaceUsage.notes`. A figure that is
not a number at all leaves its namespace out (`DayAllocations.rejected`), not the whole day.

The answer also says how much of the day it covers (`DayAllocations.coverage_minutes`): each
allocation's `start`/`end` (when OpenCost has data, bounded by `minutes`) within its `window`
and the day, summed over the union of all allocations. A day OpenCost no longer has (its
retention ran out, it was down) answers `data: []` and covers 0 minutes; a re-collection uses
this to never replace a fuller day with a poorer answer.
"""

from __future__ import annotations

import datetime
import json
import logging
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import urllib3
from django.conf import settings
from kubernetes import config as kube_config
from kubernetes.client import Configuration
from kubernetes.client.exceptions import ApiException

from clusters.kubeconfig import KubeconfigError, active_context, parse_kubeconfig
from plumbing import outbound

logger = logging.getLogger(__name__)

OPENCOST_NAMESPACE = "opencost"
OPENCOST_SERVICE = "opencost:9003"
ALLOCATION_PATH = (
    f"/api/v1/namespaces/{OPENCOST_NAMESPACE}/services/{OPENCOST_SERVICE}/proxy/allocation/compute"
)

# Namespaces whose usage belongs to no user: Kubernetes' own (`kube-system`, `kube-public`,
# `kube-node-lease` and any other `kube-*`), `default`, shared add-ons (OpenCost itself,
# cert-manager, ingress-nginx, monitoring), and OpenCost's pseudo-namespaces for idle capacity
# (`__idle__`) and usage it could not attribute (`__unallocated__`).
SYSTEM_NAMESPACES = frozenset(
    {
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "default",
        OPENCOST_NAMESPACE,
        "cert-manager",
        "ingress-nginx",
        "monitoring",
        "__idle__",
        "__unallocated__",
    }
)
SYSTEM_NAMESPACE_PREFIXES = ("kube-",)

# Bytes in the unit storage is billed in (settings.STORAGE_UNIT).
STORAGE_UNIT_BYTES = {"GiB": Decimal(2) ** 30, "GB": Decimal(10) ** 9}
HOURS_PER_DAY = Decimal(24)
DAY_MINUTES = 24 * 60


def gb_held_from_byte_hours(byte_hours: Decimal) -> Decimal:
    """OpenCost's persistent-volume byte-hours for one day, as the average held in the
    billing storage unit: GiB by default (a 100Gi volume is 100, not 107.37), or GB."""
    return Decimal(byte_hours) / HOURS_PER_DAY / STORAGE_UNIT_BYTES[settings.STORAGE_UNIT]


_FIGURES = {
    "cpuCoreHours": "cpu_core_hours",
    "gpuHours": "gpu_hours",
    "pvByteHours": "pv_byte_hours",
    "ramByteHours": "ram_byte_hours",
    "minutes": "minutes",
}
_ZERO = Decimal(0)
_CLIENT_FILES_LOCK = threading.Lock()
CONNECT_TIMEOUT = 5.0
CHUNK_BYTES = 64 * 1024


class MetricsError(Exception):
    """The day's usage could not be read; the message says where and what to check."""


@dataclass(frozen=True)
class NamespaceUsage:
    """One namespace's usage over one UTC day, as OpenCost measured it (never negative)."""

    namespace: str
    cpu_core_hours: Decimal
    gpu_hours: Decimal
    pv_byte_hours: Decimal
    ram_byte_hours: Decimal
    minutes: Decimal
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DayAllocations:
    """OpenCost's answer for one UTC day: usage per namespace, how many minutes of the day
    it has data for (0 to 1440), and namespaces left out because a figure was not a number
    (namespace -> why)."""

    namespaces: list[NamespaceUsage]
    coverage_minutes: int
    rejected: dict[str, str] = field(default_factory=dict)


def is_system_namespace(name: str) -> bool:
    """Whether a namespace's usage is the platform's own rather than a user's (see the list)."""
    return name in SYSTEM_NAMESPACES or name.startswith(SYSTEM_NAMESPACE_PREFIXES)


def day_window(day: datetime.date) -> str:
    """OpenCost's `window` for one UTC day: its start and the next day's start, RFC 3339."""
    start = datetime.datetime.combine(day, datetime.time.min, tzinfo=datetime.UTC)
    end = start + datetime.timedelta(days=1)
    return f"{start:%Y-%m-%dT%H:%M:%SZ},{end:%Y-%m-%dT%H:%M:%SZ}"


def fetch_day_allocations(
    *, kubeconfig: str, day: datetime.date, timeout: float | None = None
) -> DayAllocations:
    """Every namespace's usage on `day` (UTC), system namespaces included, sorted by name,
    with the minutes of the day the answer covers.

    Makes one request and does not retry it: the caller reruns the whole day, which is
    idempotent. `timeout` is the call's whole deadline (connect, TLS, every read); by default
    the outbound limit for where it runs (`plumbing.outbound.limits`).
    """
    try:
        config = parse_kubeconfig(kubeconfig)
    except KubeconfigError as exc:
        raise MetricsError(f"The cluster's kubeconfig cannot be used: {exc}") from None
    server = active_context(config).server
    limits = outbound.limits()
    seconds = limits.deadline if timeout is None else timeout
    with outbound.deadline(seconds) as budget:
        body = _get_allocations(
            config=config,
            server=server,
            day=day,
            budget=budget,
            # A day's answer grows with the namespaces: a limit of its own, not the one of
            # other outside answers (limits.max_response_bytes).
            limit=int(settings.OPENCOST_MAX_RESPONSE_BYTES),
        )
    return _parse_allocations(body=body, server=server, day=day)


def _get_allocations(
    *, config: dict, server: str, day: datetime.date, budget: outbound.Budget, limit: int
) -> bytes:
    # The client writes the CA and client key to files for urllib3; keep them in a directory
    # of ours that goes away with the request instead of lingering in /tmp. The client caches
    # those files by content across calls, so one call at a time may own the directory.
    with _client_files(server, budget) as files:
        configuration = Configuration()
        configuration.proxy = None  # not even HTTPS_PROXY from the environment
        # Any error is reported at once; see fetch_day_allocations.
        configuration.retries = urllib3.Retry(total=0, redirect=0)
        try:
            api_client = kube_config.new_client_from_config_dict(
                config_dict=config,
                persist_config=False,
                temp_file_path=files,
                client_configuration=configuration,
            )
        except (kube_config.ConfigException, ValueError) as exc:
            raise MetricsError(
                f"The kubeconfig for {server} could not be loaded by the Kubernetes client: {exc}"
            ) from None
        try:
            manager = api_client.rest_client.pool_manager
            if type(manager) is not urllib3.PoolManager:
                raise MetricsError(
                    f"The Kubernetes client for {server} would use a proxy; this server "
                    "connects to the API server directly."
                )
            # Our connections: the address rule on connect, and the deadline on every read.
            manager.pool_classes_by_scheme = outbound.GUARDED_POOL_CLASSES
            request = api_client.param_serialize(
                method="GET",
                resource_path=ALLOCATION_PATH,
                query_params=[
                    ("window", day_window(day)),
                    ("aggregate", "namespace"),
                    ("accumulate", "true"),
                ],
                header_params={"Accept": "application/json", "Accept-Encoding": "identity"},
                auth_settings=["BearerToken"],
            )
            response = api_client.call_api(
                *request,
                _request_timeout=(budget.cap(CONNECT_TIMEOUT), budget.cap(budget.seconds)),
            )
            raw = response.response
            try:
                body = outbound.read_capped(
                    raw.stream(CHUNK_BYTES, decode_content=True), limit=limit
                )
            finally:
                raw.release_conn()
        except outbound.ResponseTooLarge as exc:
            raise MetricsError(
                f"OpenCost behind the Kubernetes API server at {server} sent a bad answer: {exc}."
            ) from None
        except ApiException as exc:
            # The client turns TLS failures into ApiException(status=0).
            if budget.expired:
                raise MetricsError(_deadline_message(server, budget)) from exc
            raise MetricsError(_tls_message(server, str(exc.reason))) from exc
        except (urllib3.exceptions.HTTPError, outbound.DeadlineExceeded) as exc:
            raise MetricsError(_transport_message(server, exc, budget)) from exc
        except OSError as exc:
            raise MetricsError(
                f"The Kubernetes API server at {server} is unreachable: {exc}"
            ) from exc
        finally:
            api_client.close()
    _check_status(server=server, status=response.status, body=body)
    return body


@contextmanager
def _client_files(server: str, budget: outbound.Budget) -> Iterator[str]:
    """The directory the client may write its files to, ours alone while the call lasts;
    waiting for another call to give it up counts against this call's deadline."""
    if not _CLIENT_FILES_LOCK.acquire(timeout=budget.remaining()):
        raise MetricsError(_deadline_message(server, budget))
    try:
        with tempfile.TemporaryDirectory(prefix="kubeconfig-") as files:
            yield files
    finally:
        _CLIENT_FILES_LOCK.release()


def _deadline_message(server: str, budget: outbound.Budget) -> str:
    return (
        f"The Kubernetes API server at {server} did not answer within {budget.seconds:g} "
        "seconds (the deadline for the whole request)."
    )


def _tls_message(server: str, reason: str) -> str:
    detail = reason.splitlines()[-1] if reason else "TLS handshake failed"
    return (
        f"TLS verification of the Kubernetes API server at {server} failed ({detail}): check "
        "that the kubeconfig's certificate-authority-data is the CA that signed the server's "
        "certificate."
    )


def _transport_message(server: str, exc: Exception, budget: outbound.Budget) -> str:
    refused = outbound.find_cause(exc, outbound.DestinationRefused)
    if refused is not None:
        return (
            f"The Kubernetes API server at {server} was not contacted: its host {refused.problem}."
        )
    if budget.expired or outbound.find_cause(exc, outbound.DeadlineExceeded):
        return _deadline_message(server, budget)
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, urllib3.exceptions.SSLError):
        return _tls_message(server, str(reason))
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: ask about it first.
    if isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ProtocolError):
        return (
            f"The Kubernetes API server at {server} is unreachable (connection failed): check "
            "the kubeconfig's server address and that the cluster is up."
        )
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return (
            f"The Kubernetes API server at {server} did not answer within "
            f"{budget.seconds:g} seconds (timeout)."
        )
    return f"The request to the Kubernetes API server at {server} failed: {reason}"


def _check_status(*, server: str, status: int, body: bytes) -> None:
    if 200 <= status < 300:
        return
    _log_body(server, status, body)
    if status == 401:
        raise MetricsError(
            f"The Kubernetes API server at {server} rejected the kubeconfig's credentials "
            "(HTTP 401): check the kubeconfig's token or client certificate."
        )
    if status == 403:
        raise MetricsError(
            f"The Kubernetes API server at {server} refused access to the OpenCost service "
            f"(HTTP 403): the kubeconfig's user needs `get` on services/proxy in namespace "
            f"{OPENCOST_NAMESPACE}."
        )
    if status in (404, 502, 503):
        raise MetricsError(
            f"OpenCost was not found behind the Kubernetes API server at {server} (HTTP "
            f"{status}): check that the service {OPENCOST_SERVICE} runs in namespace "
            f"{OPENCOST_NAMESPACE} and is ready."
        )
    raise MetricsError(
        f"OpenCost behind the Kubernetes API server at {server} answered HTTP {status}; "
        "its message is in the console's log."
    )


def _log_body(server: str, status: int, body: bytes) -> None:
    """What OpenCost or the API server said, for the log only: a page never shows it."""
    logger.warning(
        "Kubernetes API server at %s: HTTP %s, %d bytes: %r",
        server,
        status,
        len(body),
        body[:800].decode("utf-8", "replace")[:200],
    )


def _parse_allocations(*, body: bytes, server: str, day: datetime.date) -> DayAllocations:
    def bad(why: str) -> MetricsError:
        return MetricsError(
            f"OpenCost behind the Kubernetes API server at {server} sent a bad answer: {why}."
        )

    try:
        # Integers stay int (exact, and the parser's fast path: a day's answer has hundreds
        # of thousands of figures, most of them whole); a billed one becomes Decimal below.
        answer = json.loads(body, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError):
        _log_body(server, 200, body)
        raise bad(f"not JSON ({len(body)} bytes)") from None
    if not isinstance(answer, dict):
        raise bad("not a JSON object")
    code = answer.get("code")
    if not _is_number(code) or code != 200:
        _log_body(server, 200, body)
        code = code if _is_number(code) else "(none)"
        raise bad(f"code {code}; its message is in the console's log")

    data = answer.get("data")
    if data is None:
        return DayAllocations(namespaces=[], coverage_minutes=0)
    sets = [data] if isinstance(data, dict) else data
    if not isinstance(sets, list) or not all(isinstance(s, dict) for s in sets):
        raise bad("`data` is not a list of namespace -> allocation mappings")

    # accumulate=true gives one set; several (e.g. a window split by OpenCost) are summed.
    totals: dict[str, dict[str, Decimal]] = {}
    notes: dict[str, list[str]] = {}
    rejected: dict[str, str] = {}
    covered: set[tuple[datetime.datetime, datetime.datetime]] = set()
    # The allocations of a day repeat the same few times (the window, when OpenCost has
    # data, its minutes) in each of their tens of thousands of namespaces: each distinct
    # set of times is worked out once.
    spans: dict[tuple, tuple[datetime.datetime, datetime.datetime] | None] = {}
    for allocation_set in sets:
        for namespace, allocation in allocation_set.items():
            if not isinstance(allocation, dict):
                rejected.setdefault(namespace, "its allocation is not a JSON object")
                continue
            times = _times(allocation)
            if times not in spans:
                spans[times] = _covered_span(times, day)
            span = spans[times]
            if span is not None:
                covered.add(span)
            figures = totals.setdefault(namespace, dict.fromkeys(_FIGURES.values(), _ZERO))
            namespace_notes = notes.setdefault(namespace, [])
            for source, target in _FIGURES.items():
                # The common case inline (five figures of tens of thousands of namespaces):
                # a number neither negative nor NaN/Inf; anything else through `_figure`.
                value = allocation.get(source)
                kind = type(value)
                if (kind is int or (kind is Decimal and value.is_finite())) and value >= 0:
                    if value:  # not "-0"
                        figures[target] += value
                    continue
                value, note = _figure(allocation, source)
                if value is None:
                    rejected.setdefault(
                        namespace, f"{source} is not a number: {_shown(allocation[source])}"
                    )
                    continue
                figures[target] += value
                if note and note not in namespace_notes:
                    namespace_notes.append(note)
    return DayAllocations(
        namespaces=[
            NamespaceUsage(namespace=namespace, **totals[namespace], notes=tuple(notes[namespace]))
            for namespace in sorted(totals)
            if namespace not in rejected
        ],
        coverage_minutes=_union_minutes(covered),
        rejected=dict(sorted(rejected.items())),
    )


def _shown(value: Any) -> str:
    """A junk figure as it came, short: it is shown to operators on the run."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: Any) -> bool:
    """A JSON number as parsed: an int (not a bool: JSON's true and false) or a Decimal."""
    return type(value) is int or isinstance(value, Decimal)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _times(allocation: Mapping[str, Any]) -> tuple:
    """What of an allocation says when it has data (hashable, junk as None): its window's
    start and end, its start and end, its minutes."""
    window = allocation.get("window")
    window = window if isinstance(window, dict) else {}
    minutes = allocation.get("minutes")
    if type(minutes) is int:
        minutes = Decimal(minutes)
    elif not (isinstance(minutes, Decimal) and minutes.is_finite()):
        minutes = None
    return (
        _text(window.get("start")),
        _text(window.get("end")),
        _text(allocation.get("start")),
        _text(allocation.get("end")),
        minutes,
    )


def _moment(value: str | None) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _covered_span(
    times: tuple, day: datetime.date
) -> tuple[datetime.datetime, datetime.datetime] | None:
    """When, within the day, an allocation with these `_times` has data: [start, end]
    (bounded by `minutes` after start) inside its window and the day. None when it says
    nothing of its times."""
    window_start, window_end, start, end, minutes = times
    window_start, window_end = _moment(window_start), _moment(window_end)
    start, end = _moment(start), _moment(end)
    if not any((window_start, window_end, start, end)) and minutes is None:
        return None
    day_start = datetime.datetime.combine(day, datetime.time.min, tzinfo=datetime.UTC)
    day_end = day_start + datetime.timedelta(days=1)
    lower = start or window_start or day_start
    upper = end or window_end or day_end
    if minutes is not None:
        upper = min(upper, lower + datetime.timedelta(minutes=float(max(minutes, _ZERO))))
    lower = max(lower, window_start or lower, day_start)
    upper = min(upper, window_end or upper, day_end)
    return (lower, upper) if upper > lower else None


def _union_minutes(spans: set[tuple[datetime.datetime, datetime.datetime]]) -> int:
    seconds, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is not None and start < reach:
            start = reach
        if end > start:
            seconds += (end - start).total_seconds()
            reach = end
    return min(DAY_MINUTES, round(seconds / 60))


def _figure(allocation: Mapping[str, Any], field: str) -> tuple[Decimal | None, str | None]:
    """A figure as a non-negative Decimal and a note when it was not one; (None, None) if junk."""
    if field not in allocation:
        return _ZERO, f"{field} was missing; counted as 0"
    value = allocation[field]
    if value is None:
        return _ZERO, f"{field} was null; counted as 0"
    if type(value) is int:
        value = Decimal(value)
    elif not isinstance(value, Decimal):
        return None, None
    if not value.is_finite():
        return _ZERO, f"{field} was {value}; counted as 0"
    if value < 0:
        return _ZERO, f"{field} was {value}; counted as 0"
    if value == 0:
        return _ZERO, None  # not "-0"
    return value, None
