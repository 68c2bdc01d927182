"""A local Stripe API for tests, driven by the real `stripe` SDK.

It speaks Stripe's wire format: form-encoded requests in bracket notation
(`line_items[0][price_data][unit_amount]=2500`), JSON objects in Stripe's shapes, list
objects with `has_more` and cursor paging, Stripe-style errors
(`{"error": {"type": ..., "message": ..., "code": ..., "param": ...}}`), `Authorization:
Bearer <key>`, `Stripe-Version`, and `Idempotency-Key` (same key and same request: the stored
answer is replayed and nothing new is created; same key, different request: 400
idempotency_error). Unknown parameters are refused, as Stripe does, so a typo in our code
fails a test. Objects live in memory; every request is recorded for assertions.

Bodies carry the fields our code and its callers read, in the shape of Stripe's published
examples, not every field Stripe sends.

Serve it from `tests.fakes.server.local_server()` (module-scoped) and `reset(server)` it for a
fresh account per test; point STRIPE_API_BASE at `fake.api_base` and STRIPE_SECRET_KEY at
`fake.api_key`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response
from werkzeug.datastructures import Headers

API_KEY = "sk_test_fake51PlatformConsole0123456789abcdef"
WEBHOOK_SECRET = "whsec_test_fake0123456789abcdef0123456789abcdef"
FAKE_API_VERSION = "2026-10-28.endive"  # answered when a request names no version
ACCOUNT = "acct_fake0123456789"

MAX_LIMIT = 100
METER_EVENT_PAST_SECONDS = 35 * 24 * 3600
METER_EVENT_FUTURE_SECONDS = 5 * 60
VERSION_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}(\.[a-z]+)?")
KEY_PATTERN = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header value for `payload`, computed exactly as Stripe does:
    `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<payload>" keyed with the endpoint secret>`."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    signed = f"{timestamp}.".encode() + payload
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def make_event(
    event_type: str,
    data_object: dict,
    *,
    event_id: str | None = None,
    created: int | None = None,
    api_version: str = FAKE_API_VERSION,
    previous_attributes: dict | None = None,
) -> dict:
    """A webhook event body in Stripe's shape, e.g. make_event("invoice.paid", invoice)."""
    data: dict[str, Any] = {"object": data_object}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id or _new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": int(time.time()) if created is None else created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


@dataclass
class RecordedRequest:
    """What the fake received, and how it answered.

    `form` is the flat form (the body of a POST, the query string otherwise) keyed by
    bracket names, e.g. `form["line_items[0][price]"]`; a repeated name keeps its last value
    (`form_items` has them all). `params` is the same nested: `params["line_items"][0]
    ["price"]` (numbered brackets become lists). `replayed` is True when the answer was an
    idempotent replay.
    """

    method: str
    path: str
    query: str
    form: dict[str, str]
    form_items: list[tuple[str, str]]
    params: dict[str, Any]
    headers: Headers
    body: bytes
    status: int | None = None
    replayed: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")

    @property
    def stripe_version(self) -> str | None:
        return self.headers.get("Stripe-Version")


@dataclass
class _Failure:
    status: int
    error: dict
    method: str | None
    path: str | None
    should_retry: bool | None

    def matches(self, method: str, path: str) -> bool:
        return self.method in (None, method) and self.path in (None, path)


@dataclass
class _Stored:
    method: str
    path: str
    fingerprint: tuple
    status: int
    body: dict
    request_id: str


class _Refusal(Exception):
    """A Stripe error answer, raised from anywhere in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.error["param"] = param
        self.should_retry = should_retry


def _required(param: str) -> _Refusal:
    return _Refusal(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def _missing(kind: str, object_id: str, param: str) -> _Refusal:
    return _Refusal(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


# Parameter schemas: which names each endpoint accepts. None = a scalar, [None] = a list of
# scalars, [dict] = a list of hashes, ANY = a free-form hash (metadata, payload).
ANY: Any = object()


def _names(words: str = "", **nested: Any) -> dict[str, Any]:
    return {**dict.fromkeys(words.split()), **nested}


EXPAND = {"expand": [None]}
LIST = _names("limit starting_after ending_before", **EXPAND)
CUSTOMER_CREATE = _names(
    "email name description phone",
    metadata=ANY,
    address=ANY,
    invoice_settings=ANY,
    preferred_locales=[None],
    **EXPAND,
)
PRICE_DATA = _names(
    "currency unit_amount unit_amount_decimal product tax_behavior",
    product_data=_names("name description tax_code unit_label", metadata=ANY, images=[None]),
    recurring=_names("interval interval_count"),
)
LINE_ITEM = _names(
    "price quantity",
    price_data=PRICE_DATA,
    adjustable_quantity=ANY,
    tax_rates=[None],
    dynamic_tax_rates=[None],
)
CHECKOUT_CREATE = _names(
    "mode customer customer_email client_reference_id success_url cancel_url currency ui_mode"
    " locale allow_promotion_codes billing_address_collection expires_at",
    line_items=[LINE_ITEM],
    metadata=ANY,
    payment_intent_data=_names(
        "description capture_method setup_future_usage statement_descriptor"
        " statement_descriptor_suffix receipt_email",
        metadata=ANY,
    ),
    subscription_data=_names(
        "billing_cycle_anchor description trial_period_days trial_end proration_behavior",
        metadata=ANY,
        default_tax_rates=[None],
    ),
    automatic_tax=ANY,
    customer_update=ANY,
    invoice_creation=ANY,
    tax_id_collection=ANY,
    payment_method_types=[None],
    **EXPAND,
)
METER_CREATE = _names(
    "display_name event_name event_time_window",
    default_aggregation=_names("formula"),
    customer_mapping=_names("event_payload_key type"),
    value_settings=_names("event_payload_key"),
    **EXPAND,
)
METER_EVENT_CREATE = _names("event_name identifier timestamp", payload=ANY, **EXPAND)
PRODUCT_CREATE = _names(
    "id name active description shippable statement_descriptor tax_code unit_label url",
    metadata=ANY,
    images=[None],
    marketing_features=ANY,
    default_price_data=ANY,
    **EXPAND,
)
PRICE_CREATE = _names(
    "currency unit_amount unit_amount_decimal product lookup_key transfer_lookup_key"
    " billing_scheme active nickname tax_behavior tiers_mode",
    recurring=_names("interval interval_count meter usage_type trial_period_days"),
    metadata=ANY,
    product_data=ANY,
    tiers=ANY,
    transform_quantity=ANY,
    custom_unit_amount=ANY,
    currency_options=ANY,
    **EXPAND,
)
PRICE_LIST = {**LIST, **_names("active currency product type", lookup_keys=[None])}
METER_LIST = {**LIST, **_names("status")}
INVOICE_LIST = {**LIST, **_names("customer status subscription collection_method", created=ANY)}
SUBSCRIPTION_CANCEL = _names("invoice_now prorate", cancellation_details=ANY, **EXPAND)


@dataclass
class FakeStripe:
    """One Stripe account (test mode) in memory. Attributes are dicts id -> Stripe object."""

    server: HTTPServer
    api_key: str = API_KEY
    customers: dict[str, dict] = field(default_factory=dict)
    checkout_sessions: dict[str, dict] = field(default_factory=dict)
    meters: dict[str, dict] = field(default_factory=dict)
    products: dict[str, dict] = field(default_factory=dict)
    prices: dict[str, dict] = field(default_factory=dict)
    meter_events: list[dict] = field(default_factory=list)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    invoices: dict[str, dict] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._failures: deque[_Failure] = deque()
        self._idempotency: dict[str, _Stored] = {}
        # What Checkout needs to turn a completed session into a subscription.
        self._session_line_items: dict[str, list[dict]] = {}
        self._session_subscription_data: dict[str, dict] = {}

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def install(self) -> None:
        self.server.expect_request(re.compile(".*")).respond_with_handler(self._handle)

    # Misbehaving on purpose

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        error: dict | None = None,
        method: str | None = None,
        path: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """Answer the next `count` requests (matching method/path if given) with this error.

        The failure happens before the endpoint runs (like an outage at Stripe's edge), so it
        is not stored under the request's idempotency key: a retry is processed normally.
        `should_retry` sets Stripe's `Stripe-Should-Retry` header.
        """
        if error is None:
            error = (
                {"type": "api_error", "message": "An unknown error occurred"}
                if status >= 500
                else {"type": "invalid_request_error", "message": "Injected failure"}
            )
        with self._lock:
            self._failures.extend(
                _Failure(status, error, method, path, should_retry) for _ in range(count)
            )

    def forget_idempotency_keys(self) -> None:
        """What Stripe does after 24 hours: a reused key is processed as a new request."""
        with self._lock:
            self._idempotency.clear()

    # Arranging state

    def add_customer(
        self, *, email: str | None = None, name: str | None = None, metadata: dict | None = None
    ) -> dict:
        with self._lock:
            return self._store_customer(email=email, name=name, metadata=metadata or {})

    def add_meter(
        self,
        *,
        event_name: str,
        display_name: str | None = None,
        status: str = "active",
    ) -> dict:
        with self._lock:
            meter = self._store_meter(
                display_name=display_name or event_name,
                event_name=event_name,
                formula="sum",
                customer_key="stripe_customer_id",
                value_key="value",
            )
            if status != "active":
                meter["status"] = status
                meter["status_transitions"]["deactivated_at"] = meter["created"]
            return meter

    def add_product(self, *, product_id: str | None = None, name: str = "Product") -> dict:
        with self._lock:
            return self._store_product(product_id=product_id, name=name)

    def add_price(
        self,
        *,
        product: str,
        unit_amount: int,
        currency: str = "usd",
        meter: str | None = None,
        lookup_key: str | None = None,
        active: bool = True,
    ) -> dict:
        """A monthly price: metered on `meter` when given, licensed otherwise."""
        with self._lock:
            if product not in self.products:
                self._store_product(product_id=product, name=product)
            recurring = {
                "interval": "month",
                "usage_type": "metered" if meter else "licensed",
                "meter": meter,
            }
            price = self._store_price(
                product=product,
                currency=currency,
                unit_amount=unit_amount,
                lookup_key=lookup_key,
                recurring=recurring,
                billing_scheme="per_unit",
            )
            price["active"] = active
            return price

    def add_subscription(
        self,
        *,
        customer: str,
        price_ids: Iterable[str] = (),
        status: str = "active",
        metadata: dict | None = None,
        billing_cycle_anchor: int | None = None,
        current_period_start: int | None = None,
        current_period_end: int | None = None,
        created: int | None = None,
    ) -> dict:
        """A subscription with one item per price (prices must exist: see `add_price`)."""
        with self._lock:
            return self._store_subscription(
                customer=customer,
                price_ids=list(price_ids),
                status=status,
                metadata=metadata or {},
                billing_cycle_anchor=billing_cycle_anchor,
                current_period_start=current_period_start,
                current_period_end=current_period_end,
                created=created,
            )

    def add_invoice(
        self,
        *,
        customer: str,
        status: str = "paid",
        amount_due: int = 0,
        amount_paid: int | None = None,
        currency: str = "usd",
        subscription: str | None = None,
        created: int | None = None,
        period_start: int | None = None,
        period_end: int | None = None,
        number: str | None = None,
        description: str = "Usage",
        metadata: dict | None = None,
    ) -> dict:
        """An invoice in Stripe's shape; amounts in minor units. Listed newest first."""
        if status not in ("draft", "open", "paid", "uncollectible", "void"):
            raise ValueError(f"Stripe has no invoice status {status!r}")
        with self._lock:
            now = int(time.time()) if created is None else created
            invoice_id = _new_id("in")
            paid = amount_due if amount_paid is None and status == "paid" else amount_paid or 0
            finalized = status != "draft"
            invoice = {
                "id": invoice_id,
                "object": "invoice",
                "account_country": "US",
                "account_name": "Fake platform",
                "amount_due": amount_due,
                "amount_paid": paid,
                "amount_remaining": max(amount_due - paid, 0) if status != "void" else 0,
                "attempt_count": 1 if status in ("paid", "uncollectible") else 0,
                "attempted": status in ("paid", "uncollectible"),
                "auto_advance": status in ("draft", "open"),
                "billing_reason": "subscription_cycle" if subscription else "manual",
                "collection_method": "charge_automatically",
                "created": now,
                "currency": currency,
                "customer": customer,
                "customer_email": (self.customers.get(customer) or {}).get("email"),
                "customer_name": (self.customers.get(customer) or {}).get("name"),
                "description": None,
                "due_date": None,
                "hosted_invoice_url": (
                    f"https://invoice.stripe.com/i/{ACCOUNT}/test_{invoice_id}"
                    if finalized
                    else None
                ),
                "invoice_pdf": (
                    f"https://pay.stripe.com/invoice/{ACCOUNT}/test_{invoice_id}/pdf"
                    if finalized
                    else None
                ),
                "lines": {
                    "object": "list",
                    "data": [
                        {
                            "id": _new_id("il"),
                            "object": "line_item",
                            "amount": amount_due,
                            "currency": currency,
                            "description": description,
                            "invoice": invoice_id,
                            "livemode": False,
                            "metadata": {},
                            "period": {
                                "start": period_start or now,
                                "end": period_end or now,
                            },
                            "quantity": 1,
                            "subscription": subscription,
                        }
                    ],
                    "has_more": False,
                    "url": f"/v1/invoices/{invoice_id}/lines",
                },
                "livemode": False,
                "metadata": dict(metadata or {}),
                "number": number or (f"FAKE-{len(self.invoices) + 1:04d}" if finalized else None),
                "parent": (
                    {
                        "type": "subscription_details",
                        "quote_details": None,
                        "subscription_details": {"metadata": None, "subscription": subscription},
                    }
                    if subscription
                    else None
                ),
                "period_end": period_end or now,
                "period_start": period_start or now,
                "status": status,
                "status_transitions": {
                    "finalized_at": now if finalized else None,
                    "marked_uncollectible_at": now if status == "uncollectible" else None,
                    "paid_at": now if status == "paid" else None,
                    "voided_at": now if status == "void" else None,
                },
                "subscription": subscription,
                "subtotal": amount_due,
                "subtotal_excluding_tax": amount_due,
                "total": amount_due,
                "total_excluding_tax": amount_due,
            }
            self.invoices[invoice_id] = invoice
            return invoice

    def complete_checkout(self, session_id: str) -> dict:
        """What Stripe does when the customer pays: the session completes; a subscription-mode
        session gets its subscription. Returns the session (make_event it for a webhook)."""
        with self._lock:
            session = self.checkout_sessions[session_id]
            session.update(status="complete", payment_status="paid")
            if session["mode"] == "payment":
                session["payment_intent"] = _new_id("pi")
            elif session["mode"] == "subscription":
                data = self._session_subscription_data.get(session_id, {})
                subscription = self._store_subscription(
                    customer=session["customer"],
                    price_ids=[item["price"] for item in self._session_line_items[session_id]],
                    status="active",
                    metadata=dict(data.get("metadata") or {}),
                    billing_cycle_anchor=data.get("billing_cycle_anchor"),
                )
                session["subscription"] = subscription["id"]
                session["payment_status"] = "no_payment_required"
            return session

    # Reading what was sent

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def posts(self, path: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and path in (None, r.path)]

    def meter_event_totals(self, event_name: str, customer_id: str) -> Decimal:
        """The sum of the values of the accepted meter events (replays counted once)."""
        with self._lock:
            return sum(
                (
                    Decimal(event["payload"].get("value", "0"))
                    for event in self.meter_events
                    if event["event_name"] == event_name
                    and event["payload"].get("stripe_customer_id") == customer_id
                ),
                Decimal(0),
            )

    # The API

    def _handle(self, request: Request) -> Response:
        with self._lock:
            record = self._record(request)
            status, body, headers = self._answer(request, record)
            record.status = status
        headers.setdefault("Request-Id", _new_id("req", 14))
        headers["Stripe-Version"] = record.stripe_version or FAKE_API_VERSION
        if record.idempotency_key:
            headers["Idempotency-Key"] = record.idempotency_key
        return Response(
            json.dumps(body), status=status, headers=headers, mimetype="application/json"
        )

    def _record(self, request: Request) -> RecordedRequest:
        body = request.get_data()
        source = body.decode("utf-8", "replace") if request.method == "POST" else ""
        if request.method != "POST":
            source = request.query_string.decode("utf-8", "replace")
        items = parse_qsl(source, keep_blank_values=True)
        try:
            params = _nest(items)
        except _Refusal:
            params = {}
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query_string.decode("utf-8", "replace"),
            form=dict(items),
            form_items=items,
            params=params,
            headers=Headers(request.headers),
            body=body,
        )
        self.requests.append(record)
        return record

    def _answer(self, request: Request, record: RecordedRequest) -> tuple[int, dict, dict]:
        failure = next((f for f in self._failures if f.matches(record.method, record.path)), None)
        if failure is not None:
            self._failures.remove(failure)
            headers = {}
            if failure.should_retry is not None:
                headers["Stripe-Should-Retry"] = str(failure.should_retry).lower()
            return failure.status, {"error": dict(failure.error)}, headers
        try:
            self._check_auth(request)
            self._check_version(record)
            params = self._params(request, record)
            stored = self._replay(record)
            if stored is not None:
                record.replayed = True
                headers = {"Idempotent-Replayed": "true", "Original-Request": stored.request_id}
                return stored.status, stored.body, headers
            status, body = self._route(record.method, record.path, params)
        except _Refusal as refusal:
            headers = {}
            if refusal.should_retry is not None:
                headers["Stripe-Should-Retry"] = str(refusal.should_retry).lower()
            return refusal.status, {"error": refusal.error}, headers
        request_id = _new_id("req", 14)
        if record.method == "POST" and record.idempotency_key:
            # Only answers from a completed endpoint are kept (validation errors are not).
            self._idempotency[record.idempotency_key] = _Stored(
                method=record.method,
                path=record.path,
                fingerprint=_fingerprint(record),
                status=status,
                body=body,
                request_id=request_id,
            )
        return status, body, {"Request-Id": request_id}

    def _check_auth(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            raise _Refusal(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        scheme, _, key = header.partition(" ")
        if scheme != "Bearer" or key != self.api_key:
            raise _Refusal(401, f"Invalid API Key provided: {_mask(key)}")

    def _check_version(self, record: RecordedRequest) -> None:
        version = record.stripe_version
        if version is not None and not VERSION_PATTERN.fullmatch(version):
            raise _Refusal(400, f"Invalid Stripe API version: {version}")

    def _params(self, request: Request, record: RecordedRequest) -> dict[str, Any]:
        form = "application/x-www-form-urlencoded"
        if record.method == "POST" and record.body and request.mimetype != form:
            raise _Refusal(400, f"Invalid request: unsupported Content-Type {request.mimetype}.")
        return _nest(record.form_items)

    def _replay(self, record: RecordedRequest) -> _Stored | None:
        key = record.idempotency_key
        if record.method != "POST" or not key:
            return None  # Stripe ignores idempotency keys on GET and DELETE
        stored = self._idempotency.get(key)
        if stored is None:
            return None
        if (stored.method, stored.path) != (record.method, record.path):
            raise _Refusal(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{stored.method} {stored.path}' vs '{record.method} "
                f"{record.path}'). Try using a key other than '{key}' if you meant to execute "
                "a different request.",
                type="idempotency_error",
            )
        if stored.fingerprint != _fingerprint(record):
            raise _Refusal(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
            )
        return stored

    def _route(self, method: str, path: str, params: dict) -> tuple[int, dict]:
        routes: list[tuple[str, str, Any]] = [
            ("POST", r"/v1/customers", self._create_customer),
            ("GET", r"/v1/customers/([^/]+)", self._get_customer),
            ("POST", r"/v1/checkout/sessions", self._create_checkout_session),
            ("GET", r"/v1/checkout/sessions/([^/]+)", self._get_checkout_session),
            ("GET", r"/v1/billing/meters", self._list_meters),
            ("POST", r"/v1/billing/meters", self._create_meter),
            ("GET", r"/v1/billing/meters/([^/]+)", self._get_meter),
            ("POST", r"/v1/billing/meter_events", self._create_meter_event),
            ("GET", r"/v1/products/([^/]+)", self._get_product),
            ("POST", r"/v1/products", self._create_product),
            ("GET", r"/v1/prices", self._list_prices),
            ("POST", r"/v1/prices", self._create_price),
            ("GET", r"/v1/prices/([^/]+)", self._get_price),
            ("GET", r"/v1/subscriptions/([^/]+)", self._get_subscription),
            ("DELETE", r"/v1/subscriptions/([^/]+)", self._cancel_subscription),
            ("GET", r"/v1/invoices", self._list_invoices),
            ("GET", r"/v1/invoices/([^/]+)", self._get_invoice),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                return handler(params, *match.groups())
        raise _Refusal(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    # Customers

    def _create_customer(self, params: dict) -> tuple[int, dict]:
        _check_names(params, CUSTOMER_CREATE)
        metadata = _metadata(params.get("metadata"), "metadata")
        customer = self._store_customer(
            email=params.get("email"), name=params.get("name"), metadata=metadata
        )
        return 200, customer

    def _get_customer(self, params: dict, customer_id: str) -> tuple[int, dict]:
        _check_names(params, EXPAND)
        if customer_id not in self.customers:
            raise _missing("customer", customer_id, "id")
        return 200, self.customers[customer_id]

    def _store_customer(self, *, email: str | None, name: str | None, metadata: dict) -> dict:
        customer_id = _new_id("cus", 14)
        customer = {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": int(time.time()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "email": email,
            "invoice_prefix": customer_id[-8:].upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": metadata,
            "name": name,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self.customers[customer_id] = customer
        return customer

    # Checkout

    def _create_checkout_session(self, params: dict) -> tuple[int, dict]:
        _check_names(params, CHECKOUT_CREATE)
        mode = params.get("mode")
        if mode is None:
            raise _required("mode")
        if mode not in ("payment", "subscription", "setup"):
            raise _Refusal(
                400, "Invalid mode: must be one of payment, setup, or subscription", param="mode"
            )
        customer = params.get("customer")
        if customer is not None and customer not in self.customers:
            raise _missing("customer", customer, "customer")
        for name in ("success_url", "cancel_url"):
            url = params.get(name)
            if url is not None and not re.match(r"https?://[^\s/]+", url):
                raise _Refusal(400, "Not a valid URL", code="url_invalid", param=name)
        if mode != "payment" and "payment_intent_data" in params:
            raise _Refusal(
                400,
                f"You can not pass `payment_intent_data` in `{mode}` mode.",
                param="payment_intent_data",
            )
        if mode != "subscription" and "subscription_data" in params:
            raise _Refusal(
                400,
                f"You can not pass `subscription_data` in `{mode}` mode.",
                param="subscription_data",
            )
        subscription_data = params.get("subscription_data") or {}
        if "billing_cycle_anchor" in subscription_data:
            anchor = _integer(
                subscription_data["billing_cycle_anchor"], "subscription_data[billing_cycle_anchor]"
            )
            if anchor <= time.time():
                raise _Refusal(
                    400,
                    "`subscription_data[billing_cycle_anchor]` must be in the future.",
                    param="subscription_data[billing_cycle_anchor]",
                )
            subscription_data = {**subscription_data, "billing_cycle_anchor": anchor}
        metadata = _metadata(params.get("metadata"), "metadata")
        for section in ("payment_intent_data", "subscription_data"):
            _metadata((params.get(section) or {}).get("metadata"), f"{section}[metadata]")

        items = params.get("line_items") or []
        if mode in ("payment", "subscription") and not items:
            raise _Refusal(
                400,
                f"`line_items` is required in `{mode}` mode.",
                code="parameter_missing",
                param="line_items",
            )
        lines = [self._checkout_line(mode, item, n) for n, item in enumerate(items)]
        currencies = {line["currency"] for line in lines}
        if len(currencies) > 1:
            raise _Refusal(400, "All line items must use the same currency.", param="line_items")
        if mode == "subscription" and not any(line["recurring"] for line in lines):
            raise _Refusal(
                400,
                "You specified `subscription` mode but didn't pass any recurring prices.",
                param="line_items",
            )
        currency = currencies.pop() if currencies else None
        amount_total = sum(line["amount"] for line in lines)
        if mode == "payment" and currency == "usd" and amount_total < 50:
            raise _Refusal(
                400,
                "The Checkout Session's total amount due must add up to at least $0.50 usd",
                param="line_items",
            )

        now = int(time.time())
        session_id = "cs_test_" + _random(58)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": now,
            "currency": currency,
            "customer": customer,
            "customer_email": params.get("customer_email"),
            "expires_at": now + 24 * 3600,
            "invoice": None,
            "livemode": False,
            "metadata": metadata,
            "mode": mode,
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": params.get("success_url"),
            "ui_mode": "hosted",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.checkout_sessions[session_id] = session
        self._session_line_items[session_id] = lines
        self._session_subscription_data[session_id] = subscription_data
        return 200, session

    def _checkout_line(self, mode: str, item: dict, n: int) -> dict:
        where = f"line_items[{n}]"
        if ("price" in item) == ("price_data" in item):
            raise _Refusal(
                400,
                f"You must specify exactly one of `price` or `price_data` in `{where}`.",
                param=where,
            )
        if "price" in item:
            price = self.prices.get(item["price"])
            if price is None:
                raise _missing("price", item["price"], f"{where}[price]")
            if not price["active"]:
                raise _Refusal(
                    400,
                    f"The price specified is inactive: '{price['id']}'",
                    param=f"{where}[price]",
                )
            recurring = price["recurring"]
            currency, unit_amount = price["currency"], price["unit_amount"] or 0
        else:
            data = item["price_data"]
            if not data.get("currency"):
                raise _required(f"{where}[price_data][currency]")
            if "unit_amount" not in data and "unit_amount_decimal" not in data:
                raise _required(f"{where}[price_data][unit_amount]")
            if not data.get("product") and not (data.get("product_data") or {}).get("name"):
                raise _Refusal(
                    400,
                    f"Specify either `product` or `product_data` in `{where}[price_data]`.",
                    param=f"{where}[price_data]",
                )
            unit_amount = _integer(
                data.get("unit_amount", "0"), f"{where}[price_data][unit_amount]"
            )
            if unit_amount < 0:
                raise _Refusal(
                    400,
                    "This value must be greater than or equal to 0.",
                    param=f"{where}[price_data][unit_amount]",
                )
            currency = _currency(data["currency"], f"{where}[price_data][currency]")
            recurring = data.get("recurring")
        metered = bool(recurring) and recurring.get("usage_type") == "metered"
        quantity = None
        if "quantity" in item:
            if metered:
                raise _Refusal(
                    400,
                    "Quantity should not be specified where usage_type is `metered`. Remove "
                    f"quantity from `{where}`.",
                    param=f"{where}[quantity]",
                )
            quantity = _integer(item["quantity"], f"{where}[quantity]")
            if quantity < 1:
                raise _Refusal(
                    400,
                    "This value must be greater than or equal to 1.",
                    param=f"{where}[quantity]",
                )
        elif not metered:
            raise _Refusal(
                400,
                f"Quantity is required. Add `quantity` to `{where}`.",
                code="parameter_missing",
                param=f"{where}[quantity]",
            )
        if mode == "payment" and recurring:
            raise _Refusal(
                400,
                "You specified `payment` mode but passed a recurring price. Either switch to "
                "`subscription` mode or use only one-time prices.",
                param=where,
            )
        return {
            "price": item.get("price"),
            "currency": currency,
            "amount": 0 if metered else unit_amount * (quantity or 1),
            "recurring": recurring,
        }

    def _get_checkout_session(self, params: dict, session_id: str) -> tuple[int, dict]:
        _check_names(params, EXPAND)
        if session_id not in self.checkout_sessions:
            raise _missing("checkout.session", session_id, "session")
        return 200, self.checkout_sessions[session_id]

    # Billing meters and meter events

    def _list_meters(self, params: dict) -> tuple[int, dict]:
        _check_names(params, METER_LIST)
        meters = list(self.meters.values())
        status = params.get("status")
        if status is not None:
            if status not in ("active", "inactive"):
                raise _Refusal(400, f"Invalid status: {status}", param="status")
            meters = [m for m in meters if m["status"] == status]
        return 200, _page("/v1/billing/meters", meters, params, kind="billing.meter")

    def _get_meter(self, params: dict, meter_id: str) -> tuple[int, dict]:
        _check_names(params, EXPAND)
        if meter_id not in self.meters:
            raise _missing("billing.meter", meter_id, "id")
        return 200, self.meters[meter_id]

    def _create_meter(self, params: dict) -> tuple[int, dict]:
        _check_names(params, METER_CREATE)
        for name in ("display_name", "event_name"):
            if not params.get(name):
                raise _required(name)
        formula = (params.get("default_aggregation") or {}).get("formula")
        if formula is None:
            raise _required("default_aggregation[formula]")
        if formula not in ("sum", "count", "last"):
            raise _Refusal(
                400,
                "Invalid default_aggregation[formula]: must be one of count, last, or sum",
                param="default_aggregation[formula]",
            )
        mapping = params.get("customer_mapping") or {}
        if mapping and mapping.get("type") != "by_id":
            raise _Refusal(
                400,
                "Invalid customer_mapping[type]: must be by_id",
                param="customer_mapping[type]",
            )
        event_name = params["event_name"]
        clash = next((m for m in self.meters.values() if m["event_name"] == event_name), None)
        if clash is not None:
            raise _Refusal(
                400,
                f"A meter with event_name `{event_name}` already exists ({clash['id']}). Event "
                "names must be unique across meters.",
                param="event_name",
            )
        meter = self._store_meter(
            display_name=params["display_name"],
            event_name=event_name,
            formula=formula,
            customer_key=mapping.get("event_payload_key", "stripe_customer_id"),
            value_key=(params.get("value_settings") or {}).get("event_payload_key", "value"),
        )
        return 200, meter

    def _store_meter(
        self, *, display_name: str, event_name: str, formula: str, customer_key: str, value_key: str
    ) -> dict:
        now = int(time.time())
        meter = {
            "id": "mtr_test_" + _random(24),
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
            "default_aggregation": {"formula": formula},
            "display_name": display_name,
            "event_name": event_name,
            "event_time_window": None,
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {"event_payload_key": value_key},
        }
        self.meters[meter["id"]] = meter
        return meter

    def _create_meter_event(self, params: dict) -> tuple[int, dict]:
        _check_names(params, METER_EVENT_CREATE)
        event_name = params.get("event_name")
        if not event_name:
            raise _required("event_name")
        payload = params.get("payload")
        if not isinstance(payload, dict) or not payload:
            raise _required("payload")
        meter = next(
            (
                m
                for m in self.meters.values()
                if m["event_name"] == event_name and m["status"] == "active"
            ),
            None,
        )
        customer_key = (
            meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
        )
        value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
        for key in (customer_key, value_key):
            if not payload.get(key):
                raise _required(f"payload[{key}]")
        try:
            value = Decimal(payload[value_key])
        except InvalidOperation:
            value = None
        if value is None or not value.is_finite():
            raise _Refusal(
                400,
                f"Invalid payload[{value_key}]: must be a number, not {payload[value_key]!r}.",
                param=f"payload[{value_key}]",
            )
        now = int(time.time())
        timestamp = now
        if "timestamp" in params:
            timestamp = _integer(params["timestamp"], "timestamp")
            if not now - METER_EVENT_PAST_SECONDS <= timestamp <= now + METER_EVENT_FUTURE_SECONDS:
                raise _Refusal(
                    400,
                    "The timestamp must be within the past 35 calendar days or up to 5 minutes "
                    "in the future.",
                    param="timestamp",
                )
        identifier = params.get("identifier") or _new_id("mevt")
        if len(identifier) > 100:
            raise _Refusal(400, "identifier must be at most 100 characters.", param="identifier")
        if any(e["identifier"] == identifier for e in self.meter_events):
            raise _Refusal(
                400,
                f"An event already exists with identifier {identifier}.",
                param="identifier",
                should_retry=False,
            )
        event = {
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": dict(payload),
            "timestamp": timestamp,
        }
        self.meter_events.append(event)
        return 200, event

    # Products and prices

    def _get_product(self, params: dict, product_id: str) -> tuple[int, dict]:
        _check_names(params, EXPAND)
        if product_id not in self.products:
            raise _missing("product", product_id, "id")
        return 200, self.products[product_id]

    def _create_product(self, params: dict) -> tuple[int, dict]:
        _check_names(params, PRODUCT_CREATE)
        if not params.get("name"):
            raise _required("name")
        product_id = params.get("id")
        if product_id is not None and product_id in self.products:
            raise _Refusal(
                400, "Product already exists.", code="resource_already_exists", param="id"
            )
        product = self._store_product(product_id=product_id, name=params["name"])
        product["metadata"] = _metadata(params.get("metadata"), "metadata")
        return 200, product

    def _store_product(self, *, product_id: str | None, name: str) -> dict:
        now = int(time.time())
        product = {
            "id": product_id or _new_id("prod", 14),
            "object": "product",
            "active": True,
            "created": now,
            "default_price": None,
            "description": None,
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": {},
            "name": name,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": now,
            "url": None,
        }
        self.products[product["id"]] = product
        return product

    def _list_prices(self, params: dict) -> tuple[int, dict]:
        _check_names(params, PRICE_LIST)
        prices = list(self.prices.values())
        if "active" in params:
            active = _boolean(params["active"], "active")
            prices = [p for p in prices if p["active"] == active]
        if "product" in params:
            prices = [p for p in prices if p["product"] == params["product"]]
        if "currency" in params:
            prices = [p for p in prices if p["currency"] == params["currency"]]
        if "type" in params:
            prices = [p for p in prices if p["type"] == params["type"]]
        if "lookup_keys" in params:
            keys = params["lookup_keys"]
            if not isinstance(keys, list):
                raise _Refusal(400, "Invalid array", param="lookup_keys")
            prices = [p for p in prices if p["lookup_key"] in keys]
        return 200, _page("/v1/prices", prices, params, kind="price")

    def _get_price(self, params: dict, price_id: str) -> tuple[int, dict]:
        _check_names(params, EXPAND)
        if price_id not in self.prices:
            raise _missing("price", price_id, "price")
        return 200, self.prices[price_id]

    def _create_price(self, params: dict) -> tuple[int, dict]:
        _check_names(params, PRICE_CREATE)
        if not params.get("currency"):
            raise _required("currency")
        currency = _currency(params["currency"], "currency")
        product = params.get("product")
        if not product:
            raise _Refusal(
                400,
                "You must specify either `product` or `product_data` when creating a price.",
                param="product",
            )
        if product not in self.products:
            raise _missing("product", product, "product")
        billing_scheme = params.get("billing_scheme", "per_unit")
        if billing_scheme not in ("per_unit", "tiered"):
            raise _Refusal(400, "Invalid billing_scheme", param="billing_scheme")
        if "unit_amount" not in params:
            raise _required("unit_amount")
        unit_amount = _integer(params["unit_amount"], "unit_amount")
        if unit_amount < 0:
            raise _Refusal(
                400, "This value must be greater than or equal to 0.", param="unit_amount"
            )
        recurring = params.get("recurring")
        if recurring is not None:
            if recurring.get("interval") not in ("day", "week", "month", "year"):
                raise _Refusal(
                    400,
                    "Invalid recurring[interval]: must be one of day, month, week, or year",
                    param="recurring[interval]",
                )
            usage_type = recurring.get("usage_type", "licensed")
            if usage_type not in ("licensed", "metered"):
                raise _Refusal(400, "Invalid recurring[usage_type]", param="recurring[usage_type]")
            meter = recurring.get("meter")
            if usage_type == "metered" and not meter:
                raise _Refusal(
                    400,
                    "Missing required param: recurring[meter]. Metered prices must be backed "
                    "by a billing meter.",
                    code="parameter_missing",
                    param="recurring[meter]",
                )
            if meter is not None:
                if usage_type != "metered":
                    raise _Refusal(
                        400,
                        "recurring[meter] can only be set when recurring[usage_type] is metered.",
                        param="recurring[meter]",
                    )
                if meter not in self.meters or self.meters[meter]["status"] != "active":
                    raise _missing("billing meter", meter, "recurring[meter]")
            recurring = {
                "interval": recurring["interval"],
                "usage_type": usage_type,
                "meter": meter,
            }
        lookup_key = params.get("lookup_key")
        holder = next(
            (p for p in self.prices.values() if lookup_key and p["lookup_key"] == lookup_key),
            None,
        )
        if holder is not None:
            if not _boolean(params.get("transfer_lookup_key", "false"), "transfer_lookup_key"):
                raise _Refusal(
                    400,
                    f"A price (`{holder['id']}`) already uses that lookup key.",
                    param="lookup_key",
                )
            holder["lookup_key"] = None
        price = self._store_price(
            product=product,
            currency=currency,
            unit_amount=unit_amount,
            lookup_key=lookup_key,
            recurring=recurring,
            billing_scheme=billing_scheme,
        )
        price["metadata"] = _metadata(params.get("metadata"), "metadata")
        return 200, price

    def _store_price(
        self,
        *,
        product: str,
        currency: str,
        unit_amount: int | None,
        lookup_key: str | None,
        recurring: dict | None,
        billing_scheme: str,
    ) -> dict:
        price = {
            "id": _new_id("price"),
            "object": "price",
            "active": True,
            "billing_scheme": billing_scheme,
            "created": int(time.time()),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": {},
            "nickname": None,
            "product": product,
            "recurring": (
                {
                    "interval": recurring["interval"],
                    "interval_count": 1,
                    "meter": recurring.get("meter"),
                    "trial_period_days": None,
                    "usage_type": recurring.get("usage_type", "licensed"),
                }
                if recurring
                else None
            ),
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
        }
        self.prices[price["id"]] = price
        return price

    # Subscriptions and invoices

    def _store_subscription(
        self,
        *,
        customer: str,
        price_ids: list[str],
        status: str,
        metadata: dict,
        billing_cycle_anchor: int | None = None,
        current_period_start: int | None = None,
        current_period_end: int | None = None,
        created: int | None = None,
    ) -> dict:
        now = int(time.time()) if created is None else created
        subscription_id = _new_id("sub")
        start = current_period_start or now
        end = current_period_end or (billing_cycle_anchor or start + 30 * 24 * 3600)
        items = []
        for price_id in price_ids:
            if price_id not in self.prices:
                raise ValueError(f"No price {price_id!r} in the fake: add it first (add_price)")
            price = self.prices[price_id]
            item = {
                "id": _new_id("si", 14),
                "object": "subscription_item",
                "created": now,
                "current_period_end": end,
                "current_period_start": start,
                "discounts": [],
                "metadata": {},
                "price": price,
                "subscription": subscription_id,
                "tax_rates": [],
            }
            if (price["recurring"] or {}).get("usage_type") != "metered":
                item["quantity"] = 1
            items.append(item)
        currency = self.prices[price_ids[0]]["currency"] if price_ids else "usd"
        canceled = status == "canceled"
        subscription = {
            "id": subscription_id,
            "object": "subscription",
            "billing_cycle_anchor": billing_cycle_anchor or start,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": now if canceled else None,
            "collection_method": "charge_automatically",
            "created": now,
            "currency": currency,
            "customer": customer,
            "default_payment_method": None,
            "description": None,
            "ended_at": now if canceled else None,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={subscription_id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": metadata,
            "start_date": now,
            "status": status,
            "test_clock": None,
            "trial_end": None,
            "trial_start": None,
        }
        self.subscriptions[subscription_id] = subscription
        return subscription

    def _get_subscription(self, params: dict, subscription_id: str) -> tuple[int, dict]:
        _check_names(params, EXPAND)
        if subscription_id not in self.subscriptions:
            raise _missing("subscription", subscription_id, "id")
        return 200, self.subscriptions[subscription_id]

    def _cancel_subscription(self, params: dict, subscription_id: str) -> tuple[int, dict]:
        _check_names(params, SUBSCRIPTION_CANCEL)
        subscription = self.subscriptions.get(subscription_id)
        # A canceled subscription can still be read, but Stripe answers a second cancel
        # with "No such subscription".
        if subscription is None or subscription["status"] == "canceled":
            raise _missing("subscription", subscription_id, "id")
        now = int(time.time())
        subscription.update(status="canceled", canceled_at=now, ended_at=now)
        return 200, subscription

    def _list_invoices(self, params: dict) -> tuple[int, dict]:
        _check_names(params, INVOICE_LIST)
        invoices = list(self.invoices.values())
        for name in ("customer", "status", "subscription", "collection_method"):
            if name in params:
                invoices = [i for i in invoices if i[name] == params[name]]
        return 200, _page("/v1/invoices", invoices, params, kind="invoice")

    def _get_invoice(self, params: dict, invoice_id: str) -> tuple[int, dict]:
        _check_names(params, EXPAND)
        if invoice_id not in self.invoices:
            raise _missing("invoice", invoice_id, "invoice")
        return 200, self.invoices[invoice_id]


# Wire helpers


def _random(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def _new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_{_random(length)}"


def _mask(key: str) -> str:
    """How Stripe echoes a wrong key: its prefix and last four characters only."""
    match = re.match(r"(?:sk|rk|pk)_(?:test|live)_", key)
    prefix = match.group(0) if match else ""
    if len(key) < len(prefix) + 8:
        return prefix + "*" * 4
    return prefix + "*" * (len(key) - len(prefix) - 4) + key[-4:]


def _fingerprint(record: RecordedRequest) -> tuple:
    return (record.method, record.path, tuple(sorted(record.form_items)))


def _nest(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket notation as nested dicts; numbered (or empty) brackets as lists."""
    root: dict[str, Any] = {}
    for key, value in items:
        match = KEY_PATTERN.match(key)
        if not match:
            raise _Refusal(400, f"Invalid parameter name: {key}", param=key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for depth, part in enumerate(parts):
            if part == "":
                part = str(sum(1 for k in node if k.isdigit()))
            if depth == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise _Refusal(400, "Invalid hash", param=key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise _Refusal(400, "Invalid hash", param=key)
                node = child
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(key.isdigit() for key in node):
        return [_listify(node[key]) for key in sorted(node, key=int)]
    return {key: _listify(value) for key, value in node.items()}


def _check_names(params: dict, schema: dict, prefix: str = "") -> None:
    """Refuse a parameter the endpoint does not know, as Stripe does."""
    for name, value in params.items():
        where = f"{prefix}[{name}]" if prefix else name
        if name not in schema:
            raise _Refusal(400, f"Received unknown parameter: {where}", param=where)
        expected = schema[name]
        if expected is ANY:
            if not isinstance(value, dict) and value != "":
                raise _Refusal(400, "Invalid hash", param=where)
        elif expected is None:
            if not isinstance(value, str):
                raise _Refusal(400, f"Invalid string: {value!r}", param=where)
        elif isinstance(expected, list):
            if not isinstance(value, list):
                raise _Refusal(400, "Invalid array", param=where)
            for n, element in enumerate(value):
                if expected[0] is None:
                    if not isinstance(element, str):
                        raise _Refusal(400, "Invalid string", param=f"{where}[{n}]")
                elif not isinstance(element, dict):
                    raise _Refusal(400, "Invalid hash", param=f"{where}[{n}]")
                else:
                    _check_names(element, expected[0], f"{where}[{n}]")
        else:
            if not isinstance(value, dict):
                raise _Refusal(400, "Invalid hash", param=where)
            _check_names(value, expected, where)


def _integer(value: Any, param: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _Refusal(400, f"Invalid integer: {value}", param=param)
    return int(value)


def _boolean(value: Any, param: str) -> bool:
    if value not in ("true", "false"):
        raise _Refusal(400, f"Invalid boolean: {value}", param=param)
    return value == "true"


def _currency(value: Any, param: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{3}", value):
        raise _Refusal(400, f"Invalid currency: {value}", param=param)
    return value.lower()


def _metadata(value: Any, param: str) -> dict:
    if value is None or value == "":
        return {}
    if len(value) > 50:
        raise _Refusal(400, "Metadata can have at most 50 keys.", param=param)
    for key, item in value.items():
        if not isinstance(item, str):
            raise _Refusal(400, "Invalid string", param=f"{param}[{key}]")
        if len(key) > 40:
            raise _Refusal(
                400, "Metadata keys can be at most 40 characters long.", param=f"{param}[{key}]"
            )
        if len(item) > 500:
            raise _Refusal(
                400, "Metadata values can be at most 500 characters long.", param=f"{param}[{key}]"
            )
    return dict(value)


def _page(url: str, objects: list[dict], params: dict, *, kind: str) -> dict:
    """A Stripe list object, newest first, with cursor paging."""
    limit = _integer(params.get("limit", "10"), "limit")
    if not 1 <= limit <= MAX_LIMIT:
        raise _Refusal(
            400,
            f"This value must be between 1 and {MAX_LIMIT} (it currently is {limit}).",
            param="limit",
        )
    # Newest first; among equal `created`, the later-made object first.
    ordered = sorted(reversed(objects), key=lambda o: o["created"], reverse=True)
    ids = [o["id"] for o in ordered]
    if "starting_after" in params:
        cursor = params["starting_after"]
        if cursor not in ids:
            raise _missing(kind, cursor, "starting_after")
        start = ids.index(cursor) + 1
        data = ordered[start : start + limit]
        has_more = start + limit < len(ordered)
    elif "ending_before" in params:
        cursor = params["ending_before"]
        if cursor not in ids:
            raise _missing(kind, cursor, "ending_before")
        end = ids.index(cursor)
        data = ordered[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        data = ordered[:limit]
        has_more = limit < len(ordered)
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def reset(server: HTTPServer, *, api_key: str = API_KEY) -> FakeStripe:
    """A fresh, empty Stripe account on an already running server."""
    server.clear()
    fake = FakeStripe(server=server, api_key=api_key)
    fake.install()
    return fake
