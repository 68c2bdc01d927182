"""A local Kubernetes API server, over TLS, with OpenCost behind its service proxy.

It answers what a real API server answers on the path our client uses: OpenCost's allocation
JSON for a day that was set (the whole day, or only part of it as OpenCost answers when it
was down or its retention ran out), an empty `data` list for any other window, the API server's own
Status objects for a wrong bearer token (401), a forbidden user (403), a missing OpenCost
service (404) or one with no ready pods (503). Every request is recorded, so tests assert on
what our code sent.

    with local_server(test_ca) as server:               # once per module: startup is slow
        fake = FakeKubernetes.on(server)                 # per test: clears the last test's state
        fake.set_allocations(day, {"team-a": {"cpuCoreHours": Decimal("12.34567")}})
        text = kubeconfig_for(fake, test_ca)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.fakes.tls import TestCA

TOKEN = "fake-service-account-token-4f1c9a"
OPENCOST_PATH = "/api/v1/namespaces/opencost/services/opencost:9003/proxy/allocation/compute"

# What the API server says for each refusal, from real clusters.
_STATUS = {
    401: ("Unauthorized", "Unauthorized"),
    403: (
        "Forbidden",
        'services "opencost:9003" is forbidden: User "system:serviceaccount:opencost:reader" '
        'cannot get resource "services/proxy" in API group "" in the namespace "opencost"',
    ),
    404: ("NotFound", 'services "opencost" not found'),
    503: ("ServiceUnavailable", 'no endpoints available for service "opencost:9003"'),
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    args: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeKubernetes:
    """The API server's behaviour; knobs are plain attributes a test sets.

    status: answer every request with this API server status (401, 403, 404, 503; others
        get a generic Status object), even with the right token.
    raw_body: answer the OpenCost path with this text instead of allocations (status
        `raw_status`, content type `raw_content_type`): non-JSON, an OpenCost error, ...
    delay: seconds to wait before answering; `release()` ends the wait early.
    """

    server: HTTPServer
    token: str = TOKEN
    status: int | None = None
    raw_body: str | None = None
    raw_status: int = 200
    raw_content_type: str = "text/plain"
    delay: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    # OpenCost answers given (counted once the answer's figures are read).
    answered: int = 0
    _data_by_window: dict[str, Any] = field(default_factory=dict)
    _released: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def on(cls, server: HTTPServer, *, token: str = TOKEN) -> FakeKubernetes:
        """A fresh fake on a running server, replacing whatever an earlier test installed."""
        server.clear()
        fake = cls(server=server, token=token)
        fake.install()
        return fake

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def install(self) -> None:
        self.server.expect_request(OPENCOST_PATH, method="GET").respond_with_handler(
            self._allocation
        )
        self.server.expect_request(re.compile(".*")).respond_with_handler(self._elsewhere)

    def release(self) -> None:
        """End any `delay` now (call it in teardown so no handler thread is left waiting)."""
        self._released.set()

    def set_allocations(
        self,
        day: dt.date,
        allocations: Mapping[str, Mapping[str, Any]],
        *,
        covering: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> None:
        """Serve these namespaces for `day`'s window, each a full OpenCost allocation.

        Given fields override the defaults (a whole day of nothing). Decimals are written
        exactly as given; floats as Python writes them (NaN as `NaN`); None as null.
        `covering=(start, end)` (UTC) serves what OpenCost answers when it has only part of
        the day: the allocations' `start`/`end` and `minutes` say which part.
        """
        start, end = _day_bounds(day)
        self.set_data(
            day,
            [
                {
                    name: _allocation(name, start, end, fields, covering=covering)
                    for name, fields in allocations.items()
                }
            ],
        )

    def set_data(self, day: dt.date, data: Any) -> None:
        """Serve `{"code": 200, "status": "success", "data": data}` for `day`'s window."""
        start, end = _day_bounds(day)
        self._data_by_window[f"{start},{end}"] = data

    @staticmethod
    def allocation(
        day: dt.date,
        namespace: str,
        *,
        covering: tuple[dt.datetime, dt.datetime] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """One allocation as OpenCost writes it, for building `set_data` payloads by hand
        (`set_data(day, [])` or `[{}]` is OpenCost's answer for a day it has nothing of)."""
        start, end = _day_bounds(day)
        return _allocation(namespace, start, end, fields, covering=covering)

    def _record(self, request: Request) -> None:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                args=dict(request.args),
                headers=dict(request.headers),
            )
        )

    def _refusal(self, request: Request) -> Response | None:
        if self.delay:
            self._released.wait(self.delay)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status_response(401)
        if self.status is not None:
            return _status_response(self.status)
        return None

    def _allocation(self, request: Request) -> Response:
        self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if self.raw_body is not None:
            return Response(
                self.raw_body, status=self.raw_status, content_type=self.raw_content_type
            )
        data = self._data_by_window.get(request.args.get("window", ""), [])
        body = _to_json({"code": 200, "status": "success", "data": data})
        self.answered += 1
        return Response(body, content_type="application/json")

    def _elsewhere(self, request: Request) -> Response:
        self._record(request)
        return self._refusal(request) or _status_response(
            404, message="the server could not find the requested resource"
        )


def kubeconfig_for(
    fake: FakeKubernetes,
    test_ca: TestCA,
    *,
    token: str | None = None,
    server: str | None = None,
    user: str = "opencost-reader",
) -> str:
    """A kubeconfig (YAML) for `fake`: its server, `test_ca` as the cluster CA, a token user.

    `server` points it elsewhere (e.g. a closed port); another CA makes TLS verification fail.
    """
    ca_data = base64.b64encode(test_ca.ca_path.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fake-cluster",
                "cluster": {"server": server or fake.url, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": user, "user": {"token": token or fake.token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake-cluster", "user": user}}],
        "current-context": "fake",
    }
    return yaml.safe_dump(config, sort_keys=False)


def _day_bounds(day: dt.date) -> tuple[str, str]:
    return f"{day:%Y-%m-%d}T00:00:00Z", f"{day + dt.timedelta(days=1):%Y-%m-%d}T00:00:00Z"


def _allocation(
    namespace: str,
    start: str,
    end: str,
    fields: Mapping[str, Any],
    *,
    covering: tuple[dt.datetime, dt.datetime] | None = None,
) -> dict:
    # OpenCost keeps the asked window in `window`; `start`/`end` are when it has data, and
    # `minutes` is end - start.
    seen_start, seen_end, minutes = start, end, 1440
    if covering is not None:
        seen_start, seen_end = (f"{moment:%Y-%m-%dT%H:%M:%SZ}" for moment in covering)
        minutes = int((covering[1] - covering[0]).total_seconds() // 60)
    allocation = {
        "name": namespace,
        "properties": {"cluster": "default-cluster", "namespace": namespace},
        "window": {"start": start, "end": end},
        "start": seen_start,
        "end": seen_end,
        "cpuCores": 0,
        "cpuCoreRequestAverage": 0,
        "cpuCoreUsageAverage": 0,
        "cpuCoreHours": 0,
        "cpuCost": 0,
        "cpuEfficiency": 0,
        "gpuCount": 0,
        "gpuHours": 0,
        "gpuCost": 0,
        "networkTransferBytes": 0,
        "networkReceiveBytes": 0,
        "networkCost": 0,
        "loadBalancerCost": 0,
        "pvBytes": 0,
        "pvByteHours": 0,
        "pvCost": 0,
        "pvs": None,
        "ramBytes": 0,
        "ramByteRequestAverage": 0,
        "ramByteUsageAverage": 0,
        "ramByteHours": 0,
        "ramCost": 0,
        "ramEfficiency": 0,
        "sharedCost": 0,
        "externalCost": 0,
        "totalCost": 0,
        "totalEfficiency": 0,
        "minutes": minutes,
    }
    allocation.update(fields)
    return allocation


def _status_response(code: int, *, message: str | None = None) -> Response:
    reason, default_message = _STATUS.get(code, ("InternalError", f"status {code}"))
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message or default_message,
        "reason": reason,
        "code": code,
    }
    return Response(json.dumps(body), status=code, content_type="application/json")


def _to_json(value: Any) -> str:
    """JSON with Decimals written digit for digit (json.dumps would need floats)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(key))}: {_to_json(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_to_json(item) for item in value) + "]"
    return json.dumps(value)
