"""A local Hopsworks admin API over TLS: users and projects in memory, the real wire format
(query-parameter user creation, paged lists with `count`, JSON errors with `errorCode`,
`usrMsg`, `errorMsg`), and a record of every request so tests assert on what we sent.

Serve it from `tests.fakes.server.local_server(test_ca)` (threaded, so a deliberately slow
answer does not hold up the next request) and `reset(server)` it for each test.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response
from werkzeug.datastructures import Headers, MultiDict

API_KEY = "fake-hopsworks-admin-key.0123456789abcdef"
OAUTH_CLIENT_ID = "test-hopsworks-client-id"
API_PREFIX = "/hopsworks-api/api"
CREATE_PARAMS = (
    "accountType",
    "type",
    "email",
    "givenName",
    "surname",
    "maxNumProjects",
    "subject",
    "clientId",
)


@dataclass(frozen=True)
class RecordedRequest:
    """What the fake received. `path` is relative to /hopsworks-api/api."""

    method: str
    path: str
    args: MultiDict
    headers: Headers
    body: bytes
    # The client's end of the connection it came on (address, port): one per connection.
    peer: tuple[str, int] | None = None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class FakeUser:
    id: int
    email: str
    username: str
    firstname: str
    lastname: str
    status: int = 2
    remote: bool = True
    max_num_projects: int = 0
    subject: str | None = None
    client_id: str | None = None

    @property
    def uuid(self) -> str | None:
        return f"{self.client_id}.{self.subject}" if self.subject else None


@dataclass
class FakeProject:
    id: int
    name: str
    creator_email: str
    # None plays an older Hopsworks, which does not return the namespace.
    namespace: str | None = None
    created: str = "2025-10-31T08:36:00Z"


@dataclass
class _Override:
    status: int | None = None
    body: str | bytes = ""
    content_type: str = "application/json"
    delay: float = 0.0
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return self.method in (None, method) and self.path in (None, path)


@dataclass
class FakeHopsworks:
    server: HTTPServer
    api_key: str = API_KEY
    users: list[FakeUser] = field(default_factory=list)
    projects: list[FakeProject] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._overrides: deque[_Override] = deque()
        self._user_ids = itertools.count(10001)
        self._project_ids = itertools.count(120)

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def install(self) -> None:
        self.server.expect_request(re.compile(".*")).respond_with_handler(self._handle)

    # Arranging state

    def add_user(
        self,
        *,
        email: str,
        firstname: str = "Test",
        lastname: str = "User",
        status: int = 2,
        remote: bool = True,
        max_num_projects: int = 0,
        subject: str | None = None,
        client_id: str | None = OAUTH_CLIENT_ID,
    ) -> FakeUser:
        with self._lock:
            return self._add_user(
                email=email,
                firstname=firstname,
                lastname=lastname,
                status=status,
                remote=remote,
                max_num_projects=max_num_projects,
                subject=subject,
                client_id=client_id,
            )

    def add_project(
        self, name: str, creator_email: str, namespace: str | None = None
    ) -> FakeProject:
        with self._lock:
            project = FakeProject(
                id=next(self._project_ids),
                name=name,
                creator_email=creator_email,
                namespace=namespace,
            )
            self.projects.append(project)
            return project

    def remove_project(self, name: str) -> None:
        """The project is deleted in Hopsworks (its namespace goes with it)."""
        with self._lock:
            self.projects = [p for p in self.projects if p.name != name]

    def user_by_email(self, email: str) -> FakeUser | None:
        wanted = email.casefold()
        return next((u for u in self.users if u.email.casefold() == wanted), None)

    def user_by_id(self, user_id: int) -> FakeUser | None:
        return next((u for u in self.users if u.id == user_id), None)

    # Misbehaving on purpose

    # Each knob applies to the next `count` requests, or to the next ones with this method
    # and path (relative to /hopsworks-api/api) when given.

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer with a Hopsworks-style JSON error with this status."""
        body = json.dumps(
            {"errorCode": 120000, "usrMsg": "Service unavailable", "errorMsg": "GENERIC_ERROR"}
        )
        self._queue(count, _Override(status=status, body=body, method=method, path=path))

    def answer_next(
        self,
        status: int,
        body: str | bytes | dict,
        *,
        content_type: str = "application/json",
        count: int = 1,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer with exactly this (a proxy's HTML page, a stale list, an odd error)."""
        raw = json.dumps(body) if isinstance(body, dict) else body
        override = _Override(
            status=status, body=raw, content_type=content_type, method=method, path=path
        )
        self._queue(count, override)

    def slow_next(
        self,
        count: int = 1,
        *,
        seconds: float,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer normally, but only after `seconds` (or when `release` is called)."""
        self._queue(count, _Override(delay=seconds, method=method, path=path))

    def release(self) -> None:
        """Wake any answer still waiting in `slow_next`, so the server can stop promptly."""
        self._released.set()

    # Reading what was sent

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # The API

    def _handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith(API_PREFIX):
            path = path[len(API_PREFIX) :]
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=path,
                    args=MultiDict(request.args.items(multi=True)),
                    headers=Headers(request.headers),
                    body=request.get_data(),
                    peer=(request.environ.get("REMOTE_ADDR"), request.environ.get("REMOTE_PORT")),
                )
            )
            override = next((o for o in self._overrides if o.matches(request.method, path)), None)
            if override is not None:
                self._overrides.remove(override)
        if override is not None and override.delay:
            self._released.wait(override.delay)
        if override is not None and override.status is not None:
            return Response(override.body, status=override.status, mimetype=override.content_type)

        if not request.path.startswith(API_PREFIX + "/"):
            return _error(404, 404, "Not found", "NOT_FOUND")
        if request.headers.get("Authorization") != f"ApiKey {self.api_key}":
            return _error(401, 200003, "Authorization header not set or invalid.", "UNAUTHORIZED")

        with self._lock:
            if path == "/admin/users" and request.method == "POST":
                return self._create_user(request)
            if path == "/admin/users" and request.method == "GET":
                return self._list_users(request)
            if match := re.fullmatch(r"/admin/users/([^/]+)", path):
                if request.method == "GET":
                    return self._get_user(match.group(1))
                if request.method == "PUT":
                    return self._update_user(match.group(1), request)
            if path == "/admin/projects" and request.method == "GET":
                return self._list_projects(request)
        return _error(404, 404, f"No such endpoint: {request.method} {path}", "NOT_FOUND")

    def _create_user(self, request: Request) -> Response:
        if request.get_data():
            return _error(400, 120004, "This endpoint takes query parameters, not a body.")
        args = request.args
        missing = [name for name in CREATE_PARAMS if not args.get(name)]
        if missing:
            return _error(400, 120004, f"Missing query parameters: {', '.join(missing)}")
        repeated = [name for name in CREATE_PARAMS if len(args.getlist(name)) > 1]
        if repeated:
            return _error(400, 120004, f"Repeated query parameters: {', '.join(repeated)}")
        if args["accountType"] != "REMOTE_ACCOUNT_TYPE" or args["type"] != "OAUTH2":
            return _error(400, 120004, "accountType must be REMOTE_ACCOUNT_TYPE, type OAUTH2")
        try:
            max_num_projects = int(args["maxNumProjects"])
        except ValueError:
            return _error(400, 120004, "maxNumProjects must be a number")
        email = args["email"]
        if self.user_by_email(email) is not None or any(
            u.subject == args["subject"] and u.client_id == args["clientId"] for u in self.users
        ):
            # Approximates Hopsworks' answer; our client treats every 4xx alike.
            return _error(
                409,
                160003,
                "There is an existing account associated with this email",
                "USER_EXISTS",
            )
        user = self._add_user(
            email=email,
            firstname=args["givenName"],
            lastname=args["surname"],
            status=2,
            remote=True,
            max_num_projects=max_num_projects,
            subject=args["subject"],
            client_id=args["clientId"],
        )
        body = {
            "uuid": user.uuid,
            "givenName": user.firstname,
            "surname": user.lastname,
            "email": user.email,
            "username": user.username,
        }
        return _json(body, status=201)

    def _list_users(self, request: Request) -> Response:
        users = list(self.users)
        for rule in request.args.getlist("filter_by"):
            key, _, value = rule.partition(":")
            if key == "type" and value in ("REMOTE_ACCOUNT_TYPE", "M_ACCOUNT_TYPE"):
                remote = value == "REMOTE_ACCOUNT_TYPE"
                users = [u for u in users if u.remote == remote]
            elif key == "status" and value.isdigit():
                users = [u for u in users if u.status == int(value)]
            else:
                return _error(400, 120004, f"Invalid filter_by: {rule}", "FILTER_BY_NOT_VALID")
        for rule in request.args.getlist("sort_by"):
            if rule not in ("email:asc", "email:desc"):
                return _error(400, 120004, f"Invalid sort_by: {rule}", "SORT_BY_NOT_VALID")
            users.sort(key=lambda u: u.email.casefold(), reverse=rule.endswith(":desc"))
        page = _page(users, request.args)
        if isinstance(page, Response):
            return page
        return _list_body(
            f"{self.api_url}{API_PREFIX}/admin/users",
            [self._user_json(u) for u in page],
            count=len(users),
        )

    def _get_user(self, raw_id: str) -> Response:
        user = self.user_by_id(int(raw_id)) if raw_id.isdigit() else None
        if user is None:
            return _error(404, 160002, "User not found", "USER_WAS_NOT_FOUND")
        return _json(self._user_json(user))

    def _update_user(self, raw_id: str, request: Request) -> Response:
        user = self.user_by_id(int(raw_id)) if raw_id.isdigit() else None
        if user is None:
            return _error(404, 160002, "User not found", "USER_WAS_NOT_FOUND")
        if request.mimetype != "application/json":
            return _error(415, 120004, "Expected a JSON body", "UNSUPPORTED_MEDIA_TYPE")
        try:
            changes = json.loads(request.get_data())
        except ValueError:
            return _error(400, 120004, "The body is not valid JSON")
        if not isinstance(changes, dict):
            return _error(400, 120004, "The body must be a JSON object")
        if "status" in changes:
            if changes["status"] not in range(8):
                return _error(400, 160036, "Invalid account status", "STATUS_NOT_VALID")
            user.status = changes["status"]
        if "maxNumProjects" in changes:
            if not isinstance(changes["maxNumProjects"], int):
                return _error(400, 120004, "maxNumProjects must be a number")
            user.max_num_projects = changes["maxNumProjects"]
        return _json(
            {
                "id": user.id,
                "email": user.email,
                "status": user.status,
                "maxNumProjects": user.max_num_projects,
            }
        )

    def _list_projects(self, request: Request) -> Response:
        expand = "creator" in request.args.getlist("expand")
        page = _page(self.projects, request.args)
        if isinstance(page, Response):
            return page
        return _list_body(
            f"{self.api_url}{API_PREFIX}/admin/projects",
            [self._project_json(p, expand=expand) for p in page],
            count=len(self.projects),
        )

    # Helpers (callers hold the lock)

    def _add_user(self, **values: Any) -> FakeUser:
        user_id = next(self._user_ids)
        stem = re.sub(r"[^a-z]", "", values["firstname"].lower())[:8] or "user"
        user = FakeUser(id=user_id, username=f"{stem}{user_id % 10000:04d}", **values)
        self.users.append(user)
        return user

    def _user_json(self, user: FakeUser) -> dict:
        return {
            "href": f"{self.api_url}{API_PREFIX}/users/{user.id}",
            "id": user.id,
            "firstname": user.firstname,
            "lastname": user.lastname,
            "email": user.email,
            "username": user.username,
            "accountType": "OAUTH2" if user.remote else "M_ACCOUNT_TYPE",
            "status": user.status,
            "maxNumProjects": user.max_num_projects,
            "numActiveProjects": sum(
                1 for p in self.projects if p.creator_email.casefold() == user.email.casefold()
            ),
        }

    def _project_json(self, project: FakeProject, *, expand: bool) -> dict:
        creator = self.user_by_email(project.creator_email)
        creator_json: dict[str, Any] = {
            "href": f"{self.api_url}{API_PREFIX}/users/{creator.id if creator else 0}"
        }
        if expand:
            creator_json.update(
                {
                    "firstname": creator.firstname if creator else "",
                    "lastname": creator.lastname if creator else "",
                    "email": project.creator_email,
                    "username": creator.username if creator else "",
                }
            )
        body = {
            "href": f"{self.api_url}{API_PREFIX}/admin/projects/{project.id}",
            "id": project.id,
            "name": project.name,
            "creator": creator_json,
            "created": project.created,
        }
        if project.namespace is not None:
            body["namespace"] = project.namespace
        return body

    def _queue(self, count: int, override: _Override) -> None:
        with self._lock:
            self._overrides.extend(override for _ in range(count))


def _json(body: Any, *, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _error(status: int, code: int, user_message: str, error_message: str = "") -> Response:
    return _json(
        {"errorCode": code, "usrMsg": user_message, "errorMsg": error_message or "BAD_REQUEST"},
        status=status,
    )


def _page(items: list, args: MultiDict) -> list | Response:
    try:
        offset = int(args.get("offset", 0))
        limit = int(args["limit"]) if "limit" in args else None
    except ValueError:
        return _error(400, 120004, "offset and limit must be numbers")
    if offset < 0 or (limit is not None and limit < 0):
        return _error(400, 120004, "offset and limit must not be negative")
    return items[offset:] if limit is None else items[offset : offset + limit]


def _list_body(href: str, items: list[dict], *, count: int) -> Response:
    body: dict[str, Any] = {"href": href, "count": count}
    if items:  # Hopsworks leaves "items" out of an empty page
        body["items"] = items
    return _json(body)


def reset(server: HTTPServer, *, api_key: str = API_KEY) -> FakeHopsworks:
    """A fresh, empty cluster on an already running server."""
    server.clear()
    fake = FakeHopsworks(server=server, api_key=api_key)
    fake.install()
    return fake
