"""Stripe: the only module that imports the `stripe` SDK.

Every call goes through a `stripe.StripeClient` with a pinned API version, on our guarded
transport (`plumbing.outbound`): one deadline per operation (connect, reads and retries
together), answers read up to a size limit, no proxy. Inside a web request a call is tried
once (OUTBOUND_DEADLINE_SECONDS); management commands (`background_work`) get network
retries and the longer deadline. Every call that creates or moves something carries a
deterministic idempotency key, so a caller may simply call again after an error. SDK errors
become a `StripeGatewayError` whose message an operator can act on and which never contains
a secret; results are plain dicts and strings, so callers never depend on stripe types.

Settings: STRIPE_SECRET_KEY (empty = not configured), STRIPE_WEBHOOK_SECRET,
STRIPE_API_BASE (empty = https://api.stripe.com; http:// only for a local fake),
STRIPE_METER_EVENTS_API_BASE (the meter event stream's host; empty =
https://meter-events.stripe.com) and STRIPE_METER_STREAM_REQUESTS_PER_SECOND (the pace of
the stream; 0 = Stripe's published limit for the key's mode).
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import requests
import stripe
import urllib3
from django.conf import settings

from plumbing import outbound

logger = logging.getLogger(__name__)

# Pinned, not taken from the SDK at run time: an SDK upgrade must not silently change the
# shapes Stripe sends us. This is the version stripe==16.1.0 is generated for; a test fails
# when the SDK and this constant disagree.
STRIPE_API_VERSION = "2026-10-28.endive"

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_METER_EVENTS_API_BASE = "https://meter-events.stripe.com"
# The v2 meter event stream: "Supports up to 100 events per request", "up to 10,000 requests
# per second in livemode"; in a sandbox (test keys) its calls count toward the basic limit,
# 25 operations a second. A session's token is "only valid for 15 minutes": it is renewed
# this long before it expires.
METER_STREAM_MAX_EVENTS = 100
METER_STREAM_LIVE_REQUESTS_PER_SECOND = 10_000
METER_STREAM_TEST_REQUESTS_PER_SECOND = 25
METER_SESSION_MARGIN_SECONDS = 60
# A 429 is waited out (doubling from the first wait, and the pace halved) this many times
# before the run gives up until the next one.
METER_STREAM_RATE_LIMIT_RETRIES = 4
METER_STREAM_FIRST_WAIT_SECONDS = 0.5
# Network retries in management commands; none inside a web request.
MAX_NETWORK_RETRIES = 2
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 30
CHUNK_BYTES = 64 * 1024
WEBHOOK_TOLERANCE_SECONDS = 300
PAGE_SIZE = 100
CREDITS_PRODUCT_NAME = "Platform credits"

# Stripe's documented zero-decimal currencies (https://docs.stripe.com/currencies). ISK,
# HUF and TWD are left at two decimals: Stripe takes their amounts in two-decimal form.
ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
THREE_DECIMAL_CURRENCIES = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


class StripeGatewayError(Exception):
    """The one error this module raises for a Stripe call.

    `str(error)` says what failed, Stripe's own message and what to check, and never a
    secret. `retriable` says whether calling again later may help (network, 409, 429, 5xx).
    """

    retriable: bool
    status: int | None
    code: str | None
    request_id: str | None

    def __init__(
        self,
        message: str,
        *,
        retriable: bool = False,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status = status
        self.code = code
        self.request_id = request_id


class StripeNotConfigured(StripeGatewayError):
    """STRIPE_SECRET_KEY is empty: nothing can be sent to Stripe."""

    def __init__(self) -> None:
        super().__init__("Stripe is not configured (STRIPE_SECRET_KEY is empty)")


class WebhookSignatureError(Exception):
    """A webhook we must not trust: bad, missing or old signature, or no secret to check it."""


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


@dataclass(frozen=True)
class CatalogItem:
    """What we want in Stripe for one rate-card resource; `unit_amount` is in minor units."""

    resource: str
    display_name: str
    event_name: str
    product_id: str
    lookup_key: str
    unit_amount: int = 1
    currency: str = "usd"


@dataclass(frozen=True)
class CatalogEntry:
    resource: str
    event_name: str
    meter_id: str
    product_id: str
    price_id: str


# Configuration


def _setting(name: str) -> str:
    value = getattr(settings, name, "")
    return value.strip() if isinstance(value, str) else ""


def is_configured() -> bool:
    return bool(_setting("STRIPE_SECRET_KEY"))


def _checked_base(name: str, default: str) -> str:
    """A base URL setting checked: https, or http for this machine only (a credential
    travels along)."""
    raw = _setting(name)
    if not raw:
        return default
    problem = outbound.url_problem(raw)
    if problem:
        raise StripeGatewayError(
            f"{name} {raw!r} is refused: it {problem}. Leave it empty to use {default}."
        )
    return raw.rstrip("/")


def _api_base() -> str:
    return _checked_base("STRIPE_API_BASE", DEFAULT_API_BASE)


def _meter_events_base() -> str:
    return _checked_base("STRIPE_METER_EVENTS_API_BASE", DEFAULT_METER_EVENTS_API_BASE)


class _GuardedRequestsClient(stripe.RequestsClient):
    """The SDK's requests client on our guarded session. Answers are read in chunks up to
    OUTBOUND_MAX_RESPONSE_BYTES, and a retry is made only while the deadline leaves time
    for it (the SDK waits up to MAX_DELAY seconds between attempts)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(session=outbound.guarded_session(), **kwargs)

    def request(self, method, url, headers, post_data=None):
        raw, status, response_headers = self.request_stream(method, url, headers, post_data)
        try:
            content = outbound.read_capped(
                raw.stream(CHUNK_BYTES, decode_content=True),
                limit=int(settings.OUTBOUND_MAX_RESPONSE_BYTES),
            )
        except urllib3.exceptions.HTTPError as exc:
            raw.close()  # half read: the connection cannot be reused
            # What requests raises for the same failure, so the SDK judges it the same way.
            self._handle_request_error(requests.exceptions.ConnectionError(exc))
        except outbound.ResponseTooLarge as exc:
            raw.close()
            self._handle_request_error(exc)
        raw.release_conn()
        return content, status, response_headers

    def _should_retry(self, response, api_connection_error, num_retries, max_network_retries):
        budget = outbound.current_budget()
        if budget is not None and budget.remaining() <= self.MAX_DELAY:
            return False
        return super()._should_retry(
            response, api_connection_error, num_retries, max_network_retries
        )


@functools.lru_cache(maxsize=8)
def _build_client(
    secret_key: str, api_base: str, retries: int, meter_events_base: str = ""
) -> stripe.StripeClient:
    # Cached so the HTTP session (and its connection pool) is reused between calls.
    return stripe.StripeClient(
        secret_key,
        stripe_version=STRIPE_API_VERSION,
        base_addresses={
            "api": api_base,
            "meter_events": meter_events_base or DEFAULT_METER_EVENTS_API_BASE,
        },
        max_network_retries=retries,
        http_client=_GuardedRequestsClient(timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)),
    )


def _retries() -> int:
    return MAX_NETWORK_RETRIES if outbound.limits().attempts > 1 else 0


def _client(*, meter_events: bool = False) -> stripe.StripeClient:
    """The client; with `meter_events`, one whose meter event stream host is checked too."""
    secret_key = _setting("STRIPE_SECRET_KEY")
    if not secret_key:
        raise StripeNotConfigured()
    stream_base = _meter_events_base() if meter_events else ""
    return _build_client(secret_key, _api_base(), _retries(), stream_base)


# Errors


def _redact(text: str) -> str:
    for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
        secret = _setting(name)
        if len(secret) >= 8:  # a shorter "secret" would mangle ordinary words
            text = text.replace(secret, f"[{name}]")
    return text


def _network_reason(exc: stripe.APIConnectionError, budget: outbound.Budget | None) -> str:
    """'Connection refused', 'no answer within 30 s', ... from the HTTP library's error."""
    refused = outbound.find_cause(exc, outbound.DestinationRefused)
    if refused is not None:
        return f"not contacted: its host {refused.problem}"
    too_large = outbound.find_cause(exc, outbound.ResponseTooLarge)
    if too_large is not None:
        return str(too_large)
    if _deadline_passed(exc, budget):
        seconds = budget.seconds if budget is not None else READ_TIMEOUT_SECONDS
        return f"no complete answer within {seconds:g} s (the deadline for one call)"
    cause = exc.__cause__
    name = type(cause).__name__ if cause is not None else ""
    text = str(cause) if cause is not None else (exc.user_message or "")
    if name == "ConnectTimeout":
        return f"no connection within {CONNECT_TIMEOUT_SECONDS} s (connect timeout)"
    if name in ("ReadTimeout", "Timeout"):
        return f"no answer within {READ_TIMEOUT_SECONDS} s (read timeout)"
    if name == "SSLError":
        return f"TLS verification failed ({' '.join(text.split())[:200]})"
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return errno.group(0).strip()
    return " ".join(f"{name}: {text}".split())[:300] if name else "network error"


def _deadline_passed(exc: Exception, budget: outbound.Budget | None) -> bool:
    return (budget is not None and budget.expired) or bool(
        outbound.find_cause(exc, outbound.DeadlineExceeded)
    )


def _translate(
    exc: stripe.StripeError,
    *,
    operation: str,
    idempotency_key: str | None,
    budget: outbound.Budget | None = None,
    base: str | None = None,
) -> StripeGatewayError:
    status = exc.http_status
    code = exc.code
    param = getattr(exc, "param", None)
    said = exc.user_message or "(no message)"
    details = ", ".join(
        part
        for part in (
            f"HTTP {status}" if status else "",
            f"code {code}" if code else "",
            f"param {param}" if param else "",
            f"request {exc.request_id}" if exc.request_id else "",
        )
        if part
    )
    stripe_said = f"Stripe said: {said}" + (f" [{details}]" if details else "")
    retriable = False
    attempts = _retries() + 1
    tries = "one attempt" if attempts == 1 else f"up to {attempts} attempts"

    if isinstance(exc, stripe.APIConnectionError):
        # The SDK marks what is worth retrying: not a failed TLS verification.
        reason = _network_reason(exc, budget)
        # A later call may get an answer in time; a refused address or a huge answer not.
        retriable = _deadline_passed(exc, budget) or (
            bool(getattr(exc, "should_retry", True))
            and not outbound.find_cause(exc, outbound.DestinationRefused)
        )
        message = (
            f"Stripe could not be reached at {base or _api_base()}: {reason}. "
            f"Could not {operation} ({tries}). Check the network, DNS and firewall, and "
            f"{'STRIPE_METER_EVENTS_API_BASE' if base else 'STRIPE_API_BASE'} if it is set."
        )
    elif isinstance(exc, stripe.AuthenticationError):
        message = (
            "Stripe refused the secret key (STRIPE_SECRET_KEY): check it is a current secret "
            f"or restricted key of the right Stripe account and mode. Could not {operation}. "
            f"{stripe_said}."
        )
    elif isinstance(exc, stripe.PermissionError):
        message = (
            f"Stripe refused to {operation} with this key (permission denied): if "
            "STRIPE_SECRET_KEY is a restricted key (rk_...), give it write access to customers, "
            f"Checkout, products, prices, billing meters and subscriptions. {stripe_said}."
        )
    elif isinstance(exc, stripe.IdempotencyError):
        message = (
            f"Stripe refused to {operation}: the idempotency key {idempotency_key!r} was used "
            "in the last 24 hours for a request with different parameters. The earlier request "
            f"already happened; look it up in the Stripe dashboard. {stripe_said}."
        )
    elif isinstance(exc, stripe.RateLimitError):
        message = (
            f"Stripe is rate-limiting us: could not {operation}; try again later. {stripe_said}."
        )
        retriable = True
    elif isinstance(exc, stripe.CardError):
        message = f"Stripe declined to {operation}: {stripe_said}."
    elif isinstance(exc, stripe.InvalidRequestError):
        message = (
            f"Stripe rejected the request to {operation}; check the objects and values it "
            f"names. {stripe_said}."
        )
    else:  # APIError and anything newer: Stripe's side failed or answered oddly
        retriable = status is None or status == 409 or status >= 500
        message = (
            f"Stripe failed to {operation} ({tries}); "
            f"try again later (https://status.stripe.com). {stripe_said}."
        )
    return StripeGatewayError(
        _redact(message),
        retriable=retriable,
        status=status,
        code=code,
        request_id=exc.request_id,
    )


@contextmanager
def _stripe_errors(
    operation: str, *, idempotency_key: str | None = None, base: str | None = None
) -> Iterator[None]:
    """One operation's SDK calls: within one deadline, their errors as StripeGatewayError."""
    with outbound.deadline(outbound.limits().deadline) as budget:
        try:
            yield
        except stripe.StripeError as exc:
            raise _translate(
                exc, operation=operation, idempotency_key=idempotency_key, budget=budget, base=base
            ) from exc


def _every_page(operation: str, first_page) -> list[dict]:
    """Every object of a Stripe list, all pages (`first_page(client)` asks for the first)."""
    client = _client()
    with _stripe_errors(operation):
        page = first_page(client)
        return [_plain(obj) for obj in page.auto_paging_iter()]


def _options(idempotency_key: str) -> dict[str, str]:
    return {"idempotency_key": idempotency_key}


def _plain(obj: Any) -> dict:
    """The object as the JSON Stripe sent (decimal strings stay strings)."""
    return obj.to_dict(for_json=True)


# Money


def _exponent(currency: str) -> int:
    if not isinstance(currency, str) or len(currency.strip()) != 3:
        raise ValueError(f"{currency!r} is not a three-letter currency code.")
    code = currency.strip().lower()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Stripe's integer amount for `amount`; never rounds (a lost fraction is lost money)."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError(f"Amounts are Decimal, not {type(amount).__name__}.")
    amount = Decimal(amount)
    if not amount.is_finite():
        raise ValueError(f"{amount} is not a finite amount.")
    exponent = _exponent(currency)
    scaled = amount.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise ValueError(
            f"{amount} {currency.upper()} has more than {exponent} decimal places; "
            "round it before sending it to Stripe."
        )
    return int(scaled)


def datetime_from_timestamp(timestamp) -> dt.datetime:
    """A Stripe timestamp (Unix seconds) as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(int(timestamp), tz=dt.UTC)


def from_minor_units(amount: int, currency: str) -> Decimal:
    """Stripe's integer amount as a Decimal with the currency's decimal places."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"Stripe amounts are integers, not {type(amount).__name__}.")
    return Decimal(amount).scaleb(-_exponent(currency))


def _currency(currency: str) -> str:
    _exponent(currency)
    return currency.strip().lower()


# Customers and Checkout


def create_customer(*, user_id: str, email: str, name: str | None) -> str:
    """The Stripe customer id for a user; a repeat within 24 hours returns the same customer."""
    client = _client()
    key = f"customer-{user_id}"
    params: dict[str, Any] = {"email": email, "metadata": {"user_id": str(user_id)}}
    if name:
        params["name"] = name
    with _stripe_errors(f"create the customer for user {user_id}", idempotency_key=key):
        customer = client.v1.customers.create(params=params, options=_options(key))
    return customer.id


def _session(obj: Any, *, operation: str) -> CheckoutSession:
    session = _plain(obj)
    if not session.get("url"):
        raise StripeGatewayError(
            f"Stripe created Checkout Session {session['id']} but gave no URL; "
            f"could not {operation}."
        )
    return CheckoutSession(id=session["id"], url=session["url"])


def create_credit_checkout(
    *,
    customer_id: str,
    user_id: str,
    amount: Decimal,
    currency: str = "usd",
    success_url: str,
    cancel_url: str,
    request_key: str,
) -> CheckoutSession:
    """A hosted payment page for buying `amount` of credits; credited by the webhook, not here."""
    client = _client()
    currency = _currency(currency)
    unit_amount = to_minor_units(amount, currency)
    if unit_amount <= 0:
        raise ValueError(f"A credit purchase must be positive, not {amount}.")
    key = f"credit-checkout-{request_key}"
    params: dict[str, Any] = {
        "mode": "payment",
        "customer": customer_id,
        "client_reference_id": str(user_id),
        "line_items": [
            {
                "price_data": {
                    "currency": currency,
                    "unit_amount": unit_amount,
                    "product_data": {"name": CREDITS_PRODUCT_NAME},
                },
                "quantity": 1,
            }
        ],
        "metadata": {"purpose": "credits", "user_id": str(user_id)},
        "payment_intent_data": {"metadata": {"purpose": "credits", "user_id": str(user_id)}},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    operation = f"start a {amount} {currency.upper()} credit checkout for user {user_id}"
    with _stripe_errors(operation, idempotency_key=key):
        session = client.v1.checkout.sessions.create(params=params, options=_options(key))
    return _session(session, operation=operation)


def create_subscription_checkout(
    *,
    customer_id: str,
    user_id: str,
    price_ids: list[str],
    success_url: str,
    cancel_url: str,
    request_key: str,
    billing_cycle_anchor: int | None = None,
) -> CheckoutSession:
    """A hosted page to start a postpaid subscription to metered prices (billed on usage)."""
    client = _client()
    if not price_ids:
        raise ValueError("A subscription needs at least one price.")
    key = f"subscription-checkout-{request_key}"
    subscription_data: dict[str, Any] = {"metadata": {"user_id": str(user_id)}}
    if billing_cycle_anchor is not None:
        subscription_data["billing_cycle_anchor"] = int(billing_cycle_anchor)
    params: dict[str, Any] = {
        "mode": "subscription",
        "customer": customer_id,
        "client_reference_id": str(user_id),
        # Metered prices take no quantity: Stripe rejects one.
        "line_items": [{"price": price_id} for price_id in price_ids],
        "subscription_data": subscription_data,
        "metadata": {"purpose": "subscription", "user_id": str(user_id)},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    operation = f"start a subscription checkout for user {user_id}"
    with _stripe_errors(operation, idempotency_key=key):
        session = client.v1.checkout.sessions.create(params=params, options=_options(key))
    return _session(session, operation=operation)


# Catalog: meters, products, prices


def _active_meters(client: stripe.StripeClient) -> dict[str, str]:
    """event_name -> id of the first active meter with it."""
    found: dict[str, str] = {}
    with _stripe_errors("list billing meters"):
        meters = client.v1.billing.meters.list(params={"status": "active", "limit": PAGE_SIZE})
        for meter in map(_plain, meters.auto_paging_iter()):
            if meter.get("status") == "active":
                found.setdefault(meter["event_name"], meter["id"])
    return found


def _create_meter(client: stripe.StripeClient, item: CatalogItem) -> str:
    key = f"meter-{item.event_name}"
    params = {
        "display_name": item.display_name,
        "event_name": item.event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": "value"},
    }
    with _stripe_errors(f"create the billing meter {item.event_name!r}", idempotency_key=key):
        meter = client.v1.billing.meters.create(params=params, options=_options(key))
    logger.info("Stripe: created billing meter %s for %s", meter.id, item.event_name)
    return meter.id


def _ensure_product(client: stripe.StripeClient, item: CatalogItem) -> str:
    operation = f"look up product {item.product_id!r}"
    try:
        with _stripe_errors(operation):
            return client.v1.products.retrieve(item.product_id).id
    except StripeGatewayError as error:
        if error.status != 404:
            raise
    key = f"product-{item.product_id}"
    params = {"id": item.product_id, "name": item.display_name}
    with _stripe_errors(f"create product {item.product_id!r}", idempotency_key=key):
        product = client.v1.products.create(params=params, options=_options(key))
    logger.info("Stripe: created product %s", product.id)
    return product.id


def _ensure_price(client: stripe.StripeClient, item: CatalogItem, *, meter_id: str) -> str:
    currency = _currency(item.currency)
    with _stripe_errors(f"look up prices with lookup key {item.lookup_key!r}"):
        prices = client.v1.prices.list(
            params={"lookup_keys": [item.lookup_key], "active": True, "limit": PAGE_SIZE}
        )
        for price in map(_plain, prices.auto_paging_iter()):
            recurring = price.get("recurring") or {}
            if (
                recurring.get("meter") == meter_id
                and price.get("unit_amount") == item.unit_amount
                and price.get("currency") == currency
                and price.get("product") == item.product_id
            ):
                return price["id"]
    key = f"price-{item.lookup_key}-{meter_id}-{item.unit_amount}-{currency}"
    params = {
        "currency": currency,
        "unit_amount": item.unit_amount,
        "product": item.product_id,
        "lookup_key": item.lookup_key,
        # A rate change makes a new price; the lookup key moves to it from the old one.
        "transfer_lookup_key": True,
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
        "billing_scheme": "per_unit",
    }
    with _stripe_errors(f"create the price {item.lookup_key!r}", idempotency_key=key):
        price = client.v1.prices.create(params=params, options=_options(key))
    logger.info("Stripe: created price %s (%s)", price.id, item.lookup_key)
    return price.id


def ensure_billing_catalog(items: list[CatalogItem]) -> list[CatalogEntry]:
    """Find or create the meter, product and metered price for each item. Safe to re-run:
    once everything exists it only reads."""
    client = _client()
    for item in items:
        if isinstance(item.unit_amount, bool) or not isinstance(item.unit_amount, int):
            raise ValueError(f"{item.resource}: unit_amount must be whole minor units.")
        if item.unit_amount < 0:
            raise ValueError(f"{item.resource}: unit_amount must not be negative.")
        _currency(item.currency)
    meters = _active_meters(client) if items else {}
    entries = []
    for item in items:
        meter_id = meters.get(item.event_name)
        if meter_id is None:
            meter_id = meters[item.event_name] = _create_meter(client, item)
        product_id = _ensure_product(client, item)
        price_id = _ensure_price(client, item, meter_id=meter_id)
        entries.append(
            CatalogEntry(
                resource=item.resource,
                event_name=item.event_name,
                meter_id=meter_id,
                product_id=product_id,
                price_id=price_id,
            )
        )
    return entries


# Usage and subscriptions


@dataclass(frozen=True)
class MeterEvent:
    """One meter event: `value` in the meter's unit (cents here), negative to correct
    over-reported usage; `timestamp` in Unix seconds; `identifier` unique, as Stripe drops
    an event whose identifier it has seen in the last 24 hours."""

    event_name: str
    customer_id: str
    value: int
    identifier: str
    timestamp: int

    def wire(self) -> dict:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise TypeError(f"A meter event value is a whole number, not {self.value!r}.")
        return {
            "event_name": self.event_name,
            "identifier": self.identifier,
            "payload": {"stripe_customer_id": self.customer_id, "value": str(self.value)},
            "timestamp": _wire_moment(int(self.timestamp)),
        }


@functools.lru_cache(maxsize=64)  # a run's events carry a few moments (one per month)
def _wire_moment(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _JsonOnly(list):
    """A list the SDK sends as JSON but does not also form-encode. For every request the
    SDK form-encodes the parameters first (stripe._api_requestor), then sends a v2 request's
    body as JSON and never uses that form; for a stream request of 100 events the unused
    form took 3.5 ms, more than the JSON and the HTTP round trip together. The form encoder
    takes a value with an `id` as that id (an expanded object) and stops there; JSON sees a
    plain list. Should a later SDK encode it otherwise, the body is the same, only slower
    (test_the_stream_s_events_are_encoded_as_json_only says so)."""

    id = "(sent as JSON)"


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _monotonic() -> float:
    return time.monotonic()


def meter_stream_requests_per_second() -> float:
    """STRIPE_METER_STREAM_REQUESTS_PER_SECOND, or Stripe's published limit for the key's
    mode when it is 0."""
    configured = float(getattr(settings, "STRIPE_METER_STREAM_REQUESTS_PER_SECOND", 0) or 0)
    if configured > 0:
        return configured
    if _setting("STRIPE_SECRET_KEY").startswith(("sk_test_", "rk_test_")):
        return METER_STREAM_TEST_REQUESTS_PER_SECOND
    return METER_STREAM_LIVE_REQUESTS_PER_SECOND


class MeterEventStream:
    """Stripe's v2 meter event stream, for one run: a meter event session asked for with the
    secret key, whose token (valid 15 minutes) authenticates the stream's requests and is
    renewed before it expires or when Stripe says it has; requests paced to
    `meter_stream_requests_per_second()`; a 429 waited out, slowing down.

    The stream answers `{}`: no event is echoed and validation is asynchronous. An accepted
    request means Stripe has its events; a failed one may or may not have reached it, so the
    caller sends the same events again (same identifiers, same values): Stripe drops an
    identifier it has seen in the last 24 hours."""

    def __init__(self) -> None:
        self._token = ""
        self._expires = 0.0
        self._sent_at: collections.deque[float] = collections.deque()
        self._pace(meter_stream_requests_per_second())
        self.requests = 0
        self.sessions = 0
        # The client and the stream's host, checked on the first send and kept for the run:
        # checking both settings before every request was a tenth of its cost.
        self._stream_client: stripe.StripeClient | None = None
        self._base = ""

    def send(self, events: list[MeterEvent]) -> None:
        """Send up to METER_STREAM_MAX_EVENTS events in one request; raises
        StripeGatewayError (retriable after a 429 that did not pass, 5xx or no answer)."""
        if not events:
            return
        if len(events) > METER_STREAM_MAX_EVENTS:
            raise ValueError(f"The stream takes up to {METER_STREAM_MAX_EVENTS} events a request.")
        params: dict[str, Any] = {"events": _JsonOnly(event.wire() for event in events)}
        first, last = events[0].identifier, events[-1].identifier
        operation = f"send {len(events)} meter events ({first} .. {last}) on the meter event stream"
        renewed = rate_limited = 0
        if self._stream_client is None:
            self._stream_client = _client(meter_events=True)
            self._base = _meter_events_base()
        client = self._stream_client
        while True:
            token = self._session()
            self._wait_turn()
            try:
                with _stripe_errors(operation, base=self._base):
                    self.requests += 1
                    client.v2.billing.meter_event_stream.create(
                        params=params, options={"api_key": token}
                    )
                return
            except StripeGatewayError as error:
                cause = error.__cause__
                if isinstance(cause, stripe.TemporarySessionExpiredError) and renewed < 2:
                    renewed += 1
                    self._token = ""  # Stripe says it expired: a new session, the same events
                    continue
                if (
                    isinstance(cause, stripe.RateLimitError)
                    and rate_limited < METER_STREAM_RATE_LIMIT_RETRIES
                ):
                    _pause(METER_STREAM_FIRST_WAIT_SECONDS * 2**rate_limited)
                    rate_limited += 1
                    self._pace(self._rate / 2)  # over Stripe's limit: slower from now on
                    continue
                raise StripeGatewayError(
                    str(error).replace(token, "[meter event session token]"),
                    retriable=error.retriable,
                    status=error.status,
                    code=error.code,
                    request_id=error.request_id,
                ) from cause

    def _pace(self, rate: float) -> None:
        """Stripe limits requests per second: at most `rate` requests in any window of a
        second (of `per_window / rate` seconds for a rate under one). The window slides, so
        the time we spend between requests (reading and writing the next batch) is part of
        the wait rather than added to it: a run is bounded by the rate, not rate plus work."""
        self._rate = rate
        self._per_window = max(1, int(rate))
        self._window = self._per_window / rate
        # The newest requests already sent count against a new, lower rate too (a 429).
        self._sent_at = collections.deque(self._sent_at, maxlen=self._per_window)

    def _wait_turn(self) -> None:
        now = _monotonic()
        if len(self._sent_at) == self._per_window:
            opens_at = self._sent_at[0] + self._window  # the oldest leaves the window
            if opens_at > now:
                _pause(opens_at - now)
                now = opens_at
        self._sent_at.append(now)

    def _session(self) -> str:
        if self._token and time.time() < self._expires - METER_SESSION_MARGIN_SECONDS:
            return self._token
        client = _client()
        with _stripe_errors("start a meter event session"):
            session = _plain(client.v2.billing.meter_event_session.create())
        self.sessions += 1
        self._token = session["authentication_token"]
        expires = dt.datetime.fromisoformat(str(session["expires_at"]).replace("Z", "+00:00"))
        self._expires = expires.timestamp()
        return self._token


def send_meter_event(
    *, event_name: str, customer_id: str, value: int, identifier: str, timestamp: int
) -> None:
    """Report one usage event on the meter event stream (see MeterEventStream)."""
    MeterEventStream().send(
        [
            MeterEvent(
                event_name=event_name,
                customer_id=customer_id,
                value=value,
                identifier=identifier,
                timestamp=timestamp,
            )
        ]
    )


def meter_event_summary_total(
    *, meter_id: str, customer_id: str, start_time: int, end_time: int
) -> int:
    """What Stripe has counted on a meter for a customer over [start_time, end_time) (Unix
    seconds, aligned to the minute as Stripe requires): the sum of `aggregated_value` over
    every page of its meter event summaries."""
    client = _client()
    for name, value in (("start_time", start_time), ("end_time", end_time)):
        if isinstance(value, bool) or not isinstance(value, int) or value % 60:
            raise ValueError(f"{name} must be whole Unix seconds on a minute, not {value!r}.")
    params = {
        "customer": customer_id,
        "start_time": start_time,
        "end_time": end_time,
        "limit": PAGE_SIZE,
    }
    total = Decimal(0)
    operation = f"read the meter event summaries of meter {meter_id} for {customer_id}"
    with _stripe_errors(operation):
        page = client.v1.billing.meters.event_summaries.list(meter_id, params=params)
        for summary in map(_plain, page.auto_paging_iter()):
            total += Decimal(str(summary.get("aggregated_value") or 0))
    if total != total.to_integral_value():
        raise StripeGatewayError(
            f"Stripe's total on meter {meter_id} for {customer_id} is {total}, not a whole "
            "number of cents: the meter holds events that are not ours."
        )
    return int(total)


def create_invoice_item(
    *,
    customer_id: str,
    amount: Decimal,
    currency: str,
    description: str,
    subscription_id: str | None,
    idempotency_key: str,
    metadata: dict[str, str] | None = None,
    invoice_id: str | None = None,
) -> dict:
    """An item on the customer's next invoice (of `subscription_id`, if given; on the draft
    `invoice_id`, if given): `amount` in major units, negative for a credit. A retry with the
    same key within 24 hours returns the same item; after that, look it up with
    `list_invoice_items`."""
    client = _client()
    currency = _currency(currency)
    minor = to_minor_units(amount, currency)
    if minor == 0:
        raise ValueError("An invoice item of zero changes nothing.")
    params: dict[str, Any] = {
        "customer": customer_id,
        "amount": minor,
        "currency": currency,
        "description": description,
        "metadata": dict(metadata or {}),
    }
    if subscription_id:
        params["subscription"] = subscription_id
    if invoice_id:
        params["invoice"] = invoice_id
    operation = f"add an invoice item of {amount} {currency.upper()} for {customer_id}"
    with _stripe_errors(operation, idempotency_key=idempotency_key):
        item = client.v1.invoice_items.create(params=params, options=_options(idempotency_key))
    return _plain(item)


def list_invoice_items(*, customer_id: str) -> list[dict]:
    """All of a customer's invoice items, newest first, every page."""
    return _every_page(
        f"list the invoice items of customer {customer_id}",
        lambda client: client.v1.invoice_items.list(
            params={"customer": customer_id, "limit": PAGE_SIZE}
        ),
    )


def create_customer_balance_transaction(
    *,
    customer_id: str,
    amount: Decimal,
    currency: str,
    description: str,
    idempotency_key: str,
    metadata: dict[str, str] | None = None,
) -> dict:
    """Move the customer's invoice balance by `amount` (major units): negative is a credit
    Stripe takes off the customer's next invoices, positive a debit. A retry with the same
    key within 24 hours returns the same transaction; after that, look it up with
    `list_customer_balance_transactions`."""
    client = _client()
    currency = _currency(currency)
    minor = to_minor_units(amount, currency)
    if minor == 0:
        raise ValueError("A balance transaction of zero changes nothing.")
    params: dict[str, Any] = {
        "amount": minor,
        "currency": currency,
        "description": description,
        "metadata": dict(metadata or {}),
    }
    operation = f"move the balance of customer {customer_id} by {amount} {currency.upper()}"
    with _stripe_errors(operation, idempotency_key=idempotency_key):
        transaction = client.v1.customers.balance_transactions.create(
            customer_id, params=params, options=_options(idempotency_key)
        )
    return _plain(transaction)


def list_customer_balance_transactions(*, customer_id: str) -> list[dict]:
    """All of a customer's balance transactions, newest first, every page."""
    return _every_page(
        f"list the balance transactions of customer {customer_id}",
        lambda client: client.v1.customers.balance_transactions.list(
            customer_id, params={"limit": PAGE_SIZE}
        ),
    )


def create_credit_note(
    *,
    invoice_id: str,
    amount: Decimal,
    currency: str,
    memo: str,
    idempotency_key: str,
    metadata: dict[str, str] | None = None,
) -> dict:
    """A credit note of `amount` (major units, positive) on a finalized invoice: on an open
    one it lowers what is due. A retry with the same key within 24 hours returns the same
    note; after that, look it up with `list_credit_notes`."""
    client = _client()
    currency = _currency(currency)
    minor = to_minor_units(amount, currency)
    if minor <= 0:
        raise ValueError(f"A credit note must be positive, not {amount}.")
    params: dict[str, Any] = {
        "invoice": invoice_id,
        "amount": minor,
        "memo": memo,
        "metadata": dict(metadata or {}),
    }
    operation = f"issue a credit note of {amount} {currency.upper()} on invoice {invoice_id}"
    with _stripe_errors(operation, idempotency_key=idempotency_key):
        note = client.v1.credit_notes.create(params=params, options=_options(idempotency_key))
    return _plain(note)


def cancel_subscription(*, subscription_id: str) -> None:
    """Cancel now. Stripe answers 404 for one already canceled (or gone): that is done too."""
    client = _client()
    key = f"cancel-{subscription_id}"
    try:
        with _stripe_errors(f"cancel subscription {subscription_id}", idempotency_key=key):
            client.v1.subscriptions.cancel(subscription_id, options=_options(key))
    except StripeGatewayError as error:
        if error.status != 404:
            raise
        logger.info("Stripe: subscription %s was already canceled or is gone", subscription_id)


def cancel_subscription_with_final_invoice(*, subscription_id: str) -> dict:
    """Cancel now and have Stripe invoice the current period's usage at once (a final,
    finalized invoice; no proration). Returns the subscription; its `latest_invoice` is the
    final invoice. One already canceled raises (404, not retriable): the caller reads it
    with `retrieve_subscription`."""
    client = _client()
    key = f"cancel-final-{subscription_id}"
    params: dict[str, Any] = {"invoice_now": True, "prorate": False}
    with _stripe_errors(f"cancel subscription {subscription_id}", idempotency_key=key):
        return _plain(
            client.v1.subscriptions.cancel(subscription_id, params=params, options=_options(key))
        )


def list_subscription_invoices(*, subscription_id: str) -> list[dict]:
    """All invoices of a subscription, newest first, every page."""
    return _every_page(
        f"list the invoices of subscription {subscription_id}",
        lambda client: client.v1.invoices.list(
            params={"subscription": subscription_id, "limit": PAGE_SIZE}
        ),
    )


def create_draft_invoice(
    *, customer_id: str, description: str, idempotency_key: str, metadata: dict[str, str]
) -> dict:
    """A draft invoice of only the items later added to it (`invoice_id` on
    `create_invoice_item`), never the customer's other pending items."""
    client = _client()
    params: dict[str, Any] = {
        "customer": customer_id,
        "description": description,
        "auto_advance": True,
        "collection_method": "charge_automatically",
        "pending_invoice_items_behavior": "exclude",
        "metadata": dict(metadata),
    }
    with _stripe_errors(f"create an invoice for {customer_id}", idempotency_key=idempotency_key):
        invoice = client.v1.invoices.create(params=params, options=_options(idempotency_key))
    return _plain(invoice)


def finalize_invoice(*, invoice_id: str) -> dict:
    """Finalize a draft (Stripe then collects it); one already finalized is returned as is."""
    client = _client()
    invoice = retrieve_invoice(invoice_id=invoice_id)
    if invoice.get("status") != "draft":
        return invoice
    key = f"finalize-{invoice_id}"
    with _stripe_errors(f"finalize invoice {invoice_id}", idempotency_key=key):
        return _plain(client.v1.invoices.finalize_invoice(invoice_id, options=_options(key)))


def retrieve_subscription(*, subscription_id: str) -> dict:
    client = _client()
    with _stripe_errors(f"read subscription {subscription_id}"):
        return _plain(client.v1.subscriptions.retrieve(subscription_id))


def retrieve_invoice(*, invoice_id: str) -> dict:
    client = _client()
    with _stripe_errors(f"read invoice {invoice_id}"):
        return _plain(client.v1.invoices.retrieve(invoice_id))


def list_credit_notes(*, invoice_id: str) -> list[dict]:
    """Every credit note of one invoice (issued and void), every page."""
    return _every_page(
        f"list the credit notes of invoice {invoice_id}",
        lambda client: client.v1.credit_notes.list(
            params={"invoice": invoice_id, "limit": PAGE_SIZE}
        ),
    )


def invoice_id_for_payment_intent(*, payment_intent_id: str) -> str | None:
    """The invoice a payment intent paid, or None (a payment outside invoices, such as a
    credit purchase). Since API 2025-03-31 a charge no longer names its invoice: the
    invoice payment links them."""
    client = _client()
    params: dict[str, Any] = {
        "payment": {"type": "payment_intent", "payment_intent": payment_intent_id},
        "limit": PAGE_SIZE,
    }
    with _stripe_errors(f"find the invoice paid by {payment_intent_id}"):
        page = client.v1.invoice_payments.list(params=params)
        invoices = {_plain(payment)["invoice"] for payment in page.auto_paging_iter()}
    invoices.discard(None)
    return min(invoices) if invoices else None


def list_refunds(*, charge_id: str) -> list[dict]:
    """Every refund of one charge as Stripe holds it now (pending, succeeded, failed...)."""
    return _every_page(
        f"list the refunds of charge {charge_id}",
        lambda client: client.v1.refunds.list(params={"charge": charge_id, "limit": PAGE_SIZE}),
    )


def create_refund(
    *, payment_intent_id: str, amount: Decimal, currency: str, idempotency_key: str
) -> dict:
    """Refund `amount` (major units) of a payment intent's charge. The key makes a retry of
    the same request one refund."""
    client = _client()
    currency = _currency(currency)
    minor = to_minor_units(amount, currency)
    if minor <= 0:
        raise ValueError(f"A refund must be positive, not {amount}.")
    params: dict[str, Any] = {
        "payment_intent": payment_intent_id,
        "amount": minor,
        "metadata": {"request": idempotency_key},
    }
    operation = f"refund {amount} {currency.upper()} of {payment_intent_id}"
    with _stripe_errors(operation, idempotency_key=idempotency_key):
        refund = client.v1.refunds.create(params=params, options=_options(idempotency_key))
    return _plain(refund)


def list_invoices(*, customer_id: str) -> list[dict]:
    """All of a customer's invoices, newest first (Stripe's order), every page."""
    return _every_page(
        f"list the invoices of customer {customer_id}",
        lambda client: client.v1.invoices.list(
            params={"customer": customer_id, "limit": PAGE_SIZE}
        ),
    )


# The upcoming invoice (the user's page and the users admin).


@dataclass(frozen=True)
class UpcomingInvoice:
    """Stripe's preview of a subscription's next invoice, in major units."""

    currency: str
    total: Decimal
    amount_due: Decimal
    period_start: dt.datetime | None
    period_end: dt.datetime | None
    lines: tuple[tuple[str, Decimal], ...]


def preview_upcoming_invoice(*, customer_id: str, subscription_id: str) -> UpcomingInvoice:
    """What Stripe would invoice for the subscription's current period if it ended now
    (the metered usage reported so far, pending invoice items). Creates nothing at Stripe."""
    client = _client()
    params: dict[str, Any] = {"customer": customer_id, "subscription": subscription_id}
    with _stripe_errors(f"preview the upcoming invoice of subscription {subscription_id}"):
        invoice = _plain(client.v1.invoices.create_preview(params=params))
    currency = invoice.get("currency") or "usd"

    def major(amount) -> Decimal:
        return from_minor_units(int(amount or 0), currency)

    lines = tuple(
        (line.get("description") or "Usage", major(line.get("amount")))
        for line in (invoice.get("lines") or {}).get("data") or ()
    )
    period = {
        name: datetime_from_timestamp(invoice[name]) if invoice.get(name) else None
        for name in ("period_start", "period_end")
    }
    return UpcomingInvoice(
        currency=currency.upper(),
        total=major(invoice.get("total")),
        amount_due=major(invoice.get("amount_due")),
        lines=lines,
        **period,
    )


# Reconciliation (billing/reconciliation.py): what Stripe has counted and invoiced.


def list_invoice_lines(*, invoice_id: str) -> list[dict]:
    """Every line of an invoice (Stripe's `line_item` objects), every page."""
    return _every_page(
        f"list the lines of invoice {invoice_id}",
        lambda client: client.v1.invoices.line_items.list(invoice_id, params={"limit": PAGE_SIZE}),
    )


# Webhooks and links


def verify_webhook(*, payload: bytes, signature_header: str | None) -> dict:
    """The event, only if Stripe signed exactly this body in the last five minutes."""
    secret = _setting("STRIPE_WEBHOOK_SECRET")
    if not secret:
        raise WebhookSignatureError("STRIPE_WEBHOOK_SECRET is empty: cannot verify Stripe webhooks")
    if not signature_header:
        raise WebhookSignatureError("no Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature_header, secret, WEBHOOK_TOLERANCE_SECONDS
        )
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureError(
            f"bad Stripe-Signature: {_redact(exc.user_message or 'verification failed')}"
        ) from None
    except UnicodeDecodeError:
        raise WebhookSignatureError("the payload is not UTF-8") from None
    try:
        # NaN, Infinity and 1e400 are no JSON Stripe sends, and PostgreSQL cannot store them.
        event = json.loads(payload, parse_constant=_not_a_number, parse_float=_finite_float)
    except RecursionError:
        raise WebhookSignatureError("the signed payload is nested too deeply") from None
    except ValueError:
        raise WebhookSignatureError("the signed payload is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookSignatureError("the signed payload is not a JSON object")
    return event


def _not_a_number(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is not a finite number")
    return number


def dashboard_url(kind: str, object_id: str, *, livemode: bool | None = None) -> str:
    """A link for operators, e.g. dashboard_url("customers", "cus_123"). An object that
    says whether it is live (an event's `livemode`) is linked by that; otherwise by our key."""
    if livemode is None:
        key = _setting("STRIPE_SECRET_KEY")
        livemode = not key.startswith(("sk_test_", "rk_test_"))
    mode = "" if livemode else "test/"
    return (
        f"https://dashboard.stripe.com/{mode}{quote(kind.strip('/'), safe='/')}/"
        f"{quote(object_id, safe='')}"
    )
