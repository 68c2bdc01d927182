"""A local Stripe API for tests, driven by the real `stripe` SDK.

It speaks Stripe's wire format: form-encoded requests in bracket notation
(`line_items[0][price_data][unit_amount]=2500`), JSON answers, list objects with `has_more`
and cursor paging, Stripe's error body (`{"error": {"type", "message", "code", "param"}}`),
`Authorization: Bearer <key>`, `Stripe-Version`, and `Idempotency-Key` (same key, same
request: the first answer is replayed; same key, other request: 400 idempotency_error). A
parameter our code does not send is refused as unknown, as Stripe refuses one, so a typo
fails a test. Objects live in memory; every request is recorded for assertions.

It serves only what our code uses: each kind of object is a row of `FakeStripe.RESOURCES`,
and one generic handler creates, retrieves, lists and cancels them all. Bodies have the
top-level fields of Stripe's published examples (test_stripe_fake_shapes.py holds them to
stripe_fields.json): real values where our code reads them, a new object's values elsewhere.

The v2 meter event stream is served too, in its own wire format: JSON bodies, a session
(`POST /v2/billing/meter_event_session`, with the secret key) whose `authentication_token`
is the Bearer of `POST /v2/billing/meter_event_stream` (up to 100 events, answered `{}`;
events are checked as Stripe checks them synchronously, and an identifier already seen in
the last 24 hours is dropped, as Stripe drops it), and errors in the v2 shape
(`{"error": {"type", "code", "message"}}`: an expired token is 401
`temporary_session_expired` / `billing_meter_event_session_expired`).

Serve it from `tests.fakes.server.local_server()` and `reset(server)` it for each test; point
STRIPE_API_BASE at `fake.api_base` and STRIPE_SECRET_KEY at `fake.api_key`.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
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
METER_EVENT_WINDOW = (35 * 24 * 3600, 5 * 60)  # how far in the past, and in the future
VERSION_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}(\.[a-z]+)?")
NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
)
KEY_PATTERN = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
METER_EVENT_SESSION = "/v2/billing/meter_event_session"
METER_EVENT_STREAM = "/v2/billing/meter_event_stream"
SESSION_SECONDS = 15 * 60  # "Authentication tokens are only valid for 15 minutes"
STREAM_MAX_EVENTS = 100
STREAM_EVENT_KEYS = {"event_name", "identifier", "payload", "timestamp"}
# The v2 error bodies a test can make the stream answer with (fail_next(error=...)).
RATE_LIMITED = {"type": "rate_limit", "code": "rate_limit", "message": "Too many requests."}
SESSION_EXPIRED = {
    "type": "temporary_session_expired",
    "code": "billing_meter_event_session_expired",
    "message": "The temporary session token has expired.",
}


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header value for `payload`, computed exactly as Stripe does:
    `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<payload>" keyed with the endpoint secret>`."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    signed = f"{timestamp}.".encode() + payload
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def make_event(event_type: str, data_object: dict, *, created: int | None = None) -> dict:
    """A webhook event body in Stripe's shape, e.g. make_event("invoice.paid", invoice)."""
    return {
        "id": _new_id("evt_"),
        "object": "event",
        "api_version": FAKE_API_VERSION,
        "created": int(time.time()) if created is None else created,
        "data": {"object": data_object},
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
    form: dict[str, str]
    form_items: list[tuple[str, str]]
    params: dict[str, Any]
    headers: Headers
    body: bytes
    status: int | None = None
    replayed: bool = False
    peer: tuple[str, int] | None = None  # the client's address and port: its connection

    @property
    def json(self) -> Any:
        """The JSON body of a v2 request (None if it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")

    @property
    def stripe_version(self) -> str | None:
        return self.headers.get("Stripe-Version")


class _Refusal(Exception):
    """A Stripe error answer, raised from anywhere in a handler."""

    def __init__(self, status: int, message: str, param: str | None = None, **error: str):
        super().__init__(message)
        self.status = status
        self.error = {"type": "invalid_request_error", "message": message, **error}
        if "code" in error:
            page = error["code"].replace("_", "-")
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{page}"
        if param is not None:
            self.error["param"] = param


def _ensure(ok: Any, message: str, param: str | None = None, **error: str) -> None:
    """Stripe's 400 answer with `message` unless `ok`."""
    if not ok:
        raise _Refusal(400, message, param, **error)


def _need(params: dict, names: str, within: str = "") -> None:
    for name in names.split():
        param = f"{within}[{name}]" if within else name
        if params.get(name) in (None, ""):
            raise _Refusal(
                400, f"Missing required param: {param}.", param, code="parameter_missing"
            )


def _missing(kind: str, object_id: str, param: str = "id") -> _Refusal:
    return _Refusal(404, f"No such {kind}: '{object_id}'", param, code="resource_missing")


# What each endpoint accepts: the names our code sends, in bracket notation, with `[]` for
# any index and `[*]` for any key of a free-form hash. Anything else is an unknown parameter.
LIST = "limit starting_after expand[]"
CUSTOMER = "email name metadata[*] expand[]"
CHECKOUT = (
    "mode customer client_reference_id success_url cancel_url metadata[*] expand[]"
    " line_items[][price] line_items[][quantity] line_items[][price_data][currency]"
    " line_items[][price_data][unit_amount] line_items[][price_data][product_data][name]"
    " payment_intent_data[metadata][*] subscription_data[metadata][*]"
    " subscription_data[billing_cycle_anchor]"
)
METER = (
    "display_name event_name default_aggregation[formula] customer_mapping[event_payload_key]"
    " customer_mapping[type] value_settings[event_payload_key] expand[]"
)
REFUND = "payment_intent amount reason metadata[*] expand[]"
METER_EVENT = "event_name identifier timestamp payload[*] expand[]"
PRODUCT = "id name metadata[*] expand[]"
INVOICE_PREVIEW = "customer subscription expand[]"
INVOICE_ITEM = "customer amount currency description subscription invoice metadata[*] expand[]"
BALANCE_TRANSACTION = "amount currency description metadata[*] expand[]"
CREDIT_NOTE = "invoice amount memo reason metadata[*] expand[]"
CANCEL = "invoice_now prorate expand[]"
INVOICE = (
    "customer description auto_advance collection_method pending_invoice_items_behavior"
    " metadata[*] expand[]"
)
PRICE = (
    "currency unit_amount product lookup_key transfer_lookup_key billing_scheme metadata[*]"
    " recurring[interval] recurring[usage_type] recurring[meter] expand[]"
)

# The rest of each body: `name` is null, `name=<JSON>` that value, `name=word` that string.
CUSTOMER_BODY = (
    "address currency default_source description discount phone shipping test_clock balance=0"
    ' delinquent=false invoice_settings={"custom_fields":null,"default_payment_method":null,'
    '"footer":null,"rendering_options":null} next_invoice_sequence=1 preferred_locales=[]'
    " tax_exempt=none"
)
CHECKOUT_BODY = (
    "after_expiration allow_promotion_codes billing_address_collection client_secret"
    " collected_information consent consent_collection currency_conversion customer_account"
    " customer_creation customer_details customer_email discounts integration_identifier"
    " invoice locale managed_payments origin_context payment_intent payment_link"
    " payment_method_collection payment_method_configuration_details permissions"
    " recovered_from saved_payment_method_options setup_intent shipping_address_collection"
    ' shipping_cost submit_type subscription wallet_options adaptive_pricing={"enabled":false}'
    ' automatic_tax={"enabled":false,"liability":null,"provider":null,"status":null}'
    ' custom_fields=[] custom_text={"after_submit":null,"shipping_address":null,"submit":null,'
    '"terms_of_service_acceptance":null} payment_method_options={} payment_method_types=["card"]'
    ' payment_status=unpaid phone_number_collection={"enabled":false} shipping_options=[]'
    ' status=open total_details={"amount_discount":0,"amount_shipping":0,"amount_tax":0}'
    " ui_mode=hosted"
)
METER_BODY = 'event_time_window status=active status_transitions={"deactivated_at":null}'
PRODUCT_BODY = (
    "default_price description package_dimensions shippable statement_descriptor tax_code"
    " unit_label url active=true images=[] marketing_features=[] type=service"
)
PRICE_BODY = (
    "custom_unit_amount nickname tiers_mode transform_quantity active=true tax_behavior=unspecified"
)
SUBSCRIPTION_BODY = (
    "application application_fee_percent billing_cycle_anchor_config billing_thresholds"
    " cancel_at canceled_at customer_account days_until_due default_payment_method"
    " default_source description ended_at latest_invoice managed_payments"
    " next_pending_invoice_item_invoice on_behalf_of pause_collection payment_settings"
    " pending_invoice_item_interval pending_setup_intent pending_update schedule test_clock"
    ' transfer_data trial_end trial_start automatic_tax={"disabled_reason":null,'
    '"enabled":false,"liability":null} billing_mode={"type":"classic"} billing_schedules=[]'
    ' cancel_at_period_end=false cancellation_details={"comment":null,"feedback":null,'
    '"reason":null} collection_method=charge_automatically default_tax_rates=[] discounts=[]'
    ' invoice_settings={"account_tax_ids":null,"issuer":{"type":"self"}}'
    ' trial_settings={"end_behavior":{"missing_payment_method":"create_invoice"}}'
)
SUBSCRIPTION_ITEM_BODY = (
    "billing_thresholds object=subscription_item discounts=[] metadata={} tax_rates=[]"
)
INVOICE_BODY = (
    "account_tax_ids application automatically_finalizes_at custom_fields customer_account"
    " customer_address customer_phone customer_shipping default_payment_method"
    " default_source description due_date footer from_invoice last_finalization_error"
    " latest_revision next_payment_attempt on_behalf_of payment_settings receipt_number"
    " rendering shipping_cost shipping_details statement_descriptor test_clock"
    " effective_at ending_balance account_country=US account_name=Fake amount_overpaid=0"
    " amount_shipping=0 attempt_count=0 attempted=false auto_advance=false currency=usd"
    ' automatic_tax={"disabled_reason":null,"enabled":false,"liability":null,"provider":null,'
    '"status":null} collection_method=charge_automatically customer_tax_exempt=none'
    ' customer_tax_ids=[] default_tax_rates=[] discounts=[] issuer={"type":"self"} metadata={}'
    " post_payment_credit_notes_amount=0 pre_payment_credit_notes_amount=0 starting_balance=0"
    " total_discount_amounts=[] total_pretax_credit_amounts=[] total_taxes=[]"
)
INVOICE_ITEM_BODY = (
    "customer_account invoice test_clock discountable=true discounts=[] proration=false"
    " quantity=1 quantity_decimal=1 tax_rates=[]"
)
LINE_ITEM_BODY = (
    "parent pretax_credit_amounts quantity_decimal taxes object=line_item currency=usd"
    " livemode=false"
    " description=Usage discount_amounts=[] discountable=true discounts=[] metadata={}"
    ' quantity=1 pricing={"price_details":null,"type":"price_details","unit_amount_decimal":null}'
)
# Refunds and credit notes on invoices (stripe_events: credit_note.*, charge.refunded).
CREDIT_NOTE_BODY = (
    "customer_account customer_balance_transaction memo out_of_band_amount reason"
    " total_excluding_tax total_taxes amount_shipping=0 currency=usd discount_amount=0"
    " discount_amounts=[] metadata={} pretax_credit_amounts=[] refunds=[]"
    ' shipping_cost={"amount_subtotal":0,"amount_tax":0,"amount_total":0,"shipping_rate":null}'
)
CHARGE_BODY = (
    "application application_fee application_fee_amount balance_transaction"
    " calculated_statement_descriptor description failure_balance_transaction failure_code"
    " failure_message on_behalf_of payment_method receipt_email receipt_number review source"
    " source_transfer statement_descriptor statement_descriptor_suffix transfer_data"
    ' transfer_group billing_details={"address":null,"email":null,"name":null,"phone":null,'
    '"tax_id":null} captured=true currency=usd disputed=false fraud_details={} metadata={}'
    ' outcome={"type":"authorized"} paid=true payment_method_details={"type":"card"}'
    " shipping={} status=succeeded"
)
REFUND_BODY = (
    "balance_transaction customer_account payment_method reason receipt_number"
    " source_transfer_reversal transfer_reversal currency=usd"
    ' destination_details={"card":{"type":"refund"},"type":"card"} metadata={} status=succeeded'
)
# An operator's credit (negative) or debit on a customer's invoice balance.
BALANCE_TRANSACTION_BODY = "checkout_session credit_note customer_account invoice type=adjustment"
DISPUTE_BODY = (
    "balance_transactions=[] currency=usd enhanced_eligibility_types=[] evidence={}"
    ' evidence_details={"due_by":null,"enhanced_eligibility":{},"has_evidence":false,'
    '"past_due":false,"submission_count":0} is_charge_refundable=false metadata={}'
    ' payment_method_details={"type":"card"} reason=fraudulent status=needs_response'
)


@dataclass(frozen=True)
class Resource:
    """A kind of Stripe object, at Stripe's path for it (`/v1/` and the object's name in the
    plural, dots as slashes: /v1/checkout/sessions). POST there creates one (if `create`
    names parameters), GET lists them (if `filters` is set), GET `<path>/<id>` retrieves one
    and DELETE `<path>/<id>` cancels one (if `cancel` is set). Parameters are names in
    bracket notation, `[]` for any index and `[*]` for any key; any other is refused.

    `build(fake, params, new)` checks the parameters and returns the body's fields beyond
    `new` (id, object, created, livemode) and `defaults` (`name` null, `name=<JSON>`, or
    `name=word`). `FakeStripe.add_*` arrange objects through the same builders."""

    kind: str  # Stripe's `object`
    id_prefix: str  # "" for objects without an id
    build: Callable[[FakeStripe, dict, dict], dict]
    defaults: str = ""
    create: str = ""
    filters: str | None = None
    cancel: Callable[[FakeStripe, dict, dict], None] | None = None
    dated: bool = False  # its time is `date`, not `created` (an invoice item)

    @property
    def path(self) -> str:
        return "/v1/" + self.kind.replace(".", "/") + "s"

    @property
    def store(self) -> str:  # the FakeStripe attribute: customers, checkout_sessions, meters...
        return self.kind.removeprefix("billing.").replace(".", "_") + "s"


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
    credit_notes: dict[str, dict] = field(default_factory=dict)
    charges: dict[str, dict] = field(default_factory=dict)
    refunds: dict[str, dict] = field(default_factory=dict)
    disputes: dict[str, dict] = field(default_factory=dict)
    invoice_payments: dict[str, dict] = field(default_factory=dict)
    invoiceitems: dict[str, dict] = field(default_factory=dict)
    customer_balance_transactions: dict[str, dict] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._failures: list[tuple[int, dict, str | None, str | None, bool]] = []
        # Meter event session token -> when it expires (Unix seconds).
        self._sessions: dict[str, float] = {}
        # After this many more accepted stream requests, every session token expires.
        self._sessions_last: int | None = None
        self._identifiers: dict[str, int] = {}
        self._identifiers_seen: tuple | None = None
        # Meter events before this index no longer count for identifier uniqueness.
        self._forgotten_identifiers = 0
        # Meter events from this index on are not aggregated yet (hold_meter_summaries).
        self._summaries_upto: int | None = None
        # Idempotency-Key -> (method, path, sorted form items, answer, request id)
        self._idempotency: dict[str, tuple] = {}
        # Checkout session id -> (price ids, subscription_data): what completing it needs.
        self._checkouts: dict[str, tuple[list[str], dict]] = {}
        # Checkout session id -> payment_intent_data[metadata] (its charge carries it).
        self._payment_metadata: dict[str, dict] = {}

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
        processed: bool = False,
    ) -> None:
        """Answer the next `count` requests (matching method/path if given) with this error.

        By default the failure happens before the endpoint runs (like an outage at Stripe's
        edge), so it is not stored under the request's idempotency key: a retry is processed
        normally. With `processed=True` the endpoint runs (and its answer is kept under the
        idempotency key) and the answer is lost on the way back: the caller sees the error
        although Stripe did the work (a timeout after the request arrived).
        """
        client_error = {"type": "invalid_request_error", "message": "Injected failure"}
        server_error = {"type": "api_error", "message": "An unknown error occurred"}
        error = error or (server_error if status >= 500 else client_error)
        with self._lock:
            self._failures.extend([(status, error, method, path, processed)] * count)

    def clear_failures(self) -> None:
        """Drop the failures `fail_next` queued that no request has met yet."""
        with self._lock:
            self._failures.clear()

    def forget_idempotency_keys(self) -> None:
        """What Stripe does after 24 hours: a reused key is processed as a new request."""
        with self._lock:
            self._idempotency.clear()

    def hold_meter_summaries(self) -> None:
        """Stripe aggregates meter events asynchronously: until `release_meter_summaries`,
        events accepted from now on are not in the meter event summaries yet."""
        with self._lock:
            self._summaries_upto = len(self.meter_events)

    def release_meter_summaries(self) -> None:
        with self._lock:
            self._summaries_upto = None

    def forget_meter_event_identifiers(self) -> None:
        """Stripe keeps a meter event identifier unique for about 24 hours only: after that
        an event resent with the same identifier may be counted again (as here)."""
        with self._lock:
            self._forgotten_identifiers = len(self.meter_events)

    def expire_meter_event_sessions(self, *, after_stream_requests: int = 0) -> None:
        """Every meter event session token issued so far expires once the stream has
        accepted `after_stream_requests` more requests (at once by default)."""
        with self._lock:
            self._sessions_last = after_stream_requests
            if after_stream_requests == 0:
                self._expire_sessions()

    def _expire_sessions(self) -> None:
        self._sessions = dict.fromkeys(self._sessions, 0.0)
        self._sessions_last = None

    # Arranging state

    def add_customer(
        self, *, email: str | None = None, name: str | None = None, metadata: dict | None = None
    ) -> dict:
        return self._make("customer", {"email": email, "name": name, "metadata": metadata})

    def add_meter(self, *, event_name: str, status: str = "active") -> dict:
        params = {"display_name": event_name, "event_name": event_name}
        params["default_aggregation"] = {"formula": "sum"}
        with self._lock:
            meter = self._make("billing.meter", params)
            if status != "active":
                meter.update(status=status, status_transitions={"deactivated_at": meter["created"]})
            return meter

    def add_subscription(
        self,
        *,
        customer: str,
        price_ids: Iterable[str] = (),
        status: str = "active",
        metadata: dict | None = None,
        billing_cycle_anchor: int | None = None,
        start_date: int | None = None,
    ) -> dict:
        """A subscription with one item per price (the prices must exist); `start_date`
        (default now) for one that began earlier."""
        params = {"customer": customer, "price_ids": list(price_ids), "status": status}
        params.update(metadata=dict(metadata or {}), billing_cycle_anchor=billing_cycle_anchor)
        params.update(start_date=start_date)
        return self._make("subscription", params)

    def add_invoice(
        self,
        *,
        customer: str,
        status: str = "paid",
        amount_due: int = 0,
        subscription: str | None = None,
        created: int | None = None,
        number: str | None = None,
        period_start: int | None = None,
        period_end: int | None = None,
    ) -> dict:
        """A USD invoice with one line; amounts in minor units. Listed newest first. Its
        period is [period_start, period_end] (default: the moment it was created)."""
        if status not in ("draft", "open", "paid", "uncollectible", "void"):
            raise ValueError(f"Stripe has no invoice status {status!r}")
        params = {"customer": customer, "status": status, "amount_due": amount_due}
        params.update(subscription=subscription, created=created, number=number)
        params.update(period_start=period_start, period_end=period_end)
        return self._make("invoice", params)

    def add_usage_invoice(
        self, *, subscription_id: str, period_start: int, period_end: int, status: str = "open"
    ) -> dict:
        """The invoice Stripe makes for a subscription's period: one line per metered price,
        its quantity what the price's meter summed for the customer over [start, end) (the
        meter events accepted so far), its amount quantity times the unit amount."""
        with self._lock:
            subscription = self.subscriptions[subscription_id]
            customer, lines = subscription["customer"], []
            for item in subscription["items"]["data"]:
                price = item["price"]
                if price["recurring"]["usage_type"] != "metered":
                    continue
                meter = self.meters[price["recurring"]["meter"]]
                quantity = self._summed(meter, customer, period_start, period_end)
                quantity = int(quantity)
                amount = quantity * price["unit_amount"]
                parent = {"invoice_item": None, "proration": False}
                parent.update(proration_details={"credited_items": None})
                parent.update(subscription=subscription_id, subscription_item=item["id"])
                lines.append(
                    {
                        "id": _new_id("il_"),
                        "amount": amount,
                        "currency": price["currency"],
                        "description": f"{quantity} x {price['product']}",
                        "parent": {
                            "invoice_item_details": None,
                            "subscription_item_details": parent,
                            "type": "subscription_item_details",
                        },
                        "period": {"end": period_end, "start": period_start},
                        "pricing": {
                            "price_details": {"price": price["id"], "product": price["product"]},
                            "type": "price_details",
                            "unit_amount_decimal": price["unit_amount_decimal"],
                        },
                        "quantity": quantity,
                        "quantity_decimal": str(quantity),
                        "subtotal": amount,
                    }
                )
            params = {"customer": customer, "status": status, "number": None, "created": None}
            params.update(amount_due=sum(line["amount"] for line in lines))
            params.update(subscription=subscription_id, lines=lines)
            params.update(period=(period_start, period_end))
            return self._make("invoice", params)

    def add_charge(self, *, customer: str, amount: int) -> dict:
        """A card charge outside any invoice (a credit purchase's, say)."""
        return self._make("charge", {"amount": amount, "customer": customer})

    def pay_invoice(self, invoice_id: str) -> dict:
        """The invoice paid by card: a charge (returned) through a payment intent, and the
        invoice payment that links them (as Stripe records it since the 2025 API versions)."""
        with self._lock:
            invoice = self.invoices[invoice_id]
            amount = invoice["amount_due"]
            charge = self._make("charge", {"amount": amount, "customer": invoice["customer"]})
            self._make(
                "invoice_payment",
                {
                    "invoice": invoice_id,
                    "amount": amount,
                    "payment_intent": charge["payment_intent"],
                },
            )
            invoice.update(status="paid", amount_paid=amount, amount_remaining=0)
            invoice["status_transitions"]["paid_at"] = charge["created"]
            return charge

    def refund_charge(self, charge_id: str, amount: int) -> dict:
        """A (partial) refund of a charge; returns the charge as `charge.refunded` carries it."""
        with self._lock:
            charge = self.charges[charge_id]
            if charge["amount_refunded"] + amount > charge["amount"]:
                raise ValueError("Stripe refuses to refund more than was charged")
            refund = self._make("refund", {"charge": charge, "amount": amount})
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount"]
            charge["refunds"]["data"].insert(0, refund)
            return charge

    def dispute_charge(self, charge_id: str, amount: int | None = None) -> dict:
        """The card holder disputes a charge (all of it by default); returns the dispute as
        `charge.dispute.created` carries it."""
        with self._lock:
            charge = self.charges[charge_id]
            charge["disputed"] = True
            return self._make("dispute", {"charge": charge, "amount": amount})

    def close_dispute(self, dispute_id: str, status: str) -> dict:
        """The dispute decided (`won` or `lost`); returns it as `charge.dispute.closed` has it."""
        with self._lock:
            dispute = self.disputes[dispute_id]
            dispute["status"] = status
            return dispute

    def charge_of(self, payment_intent_id: str) -> dict:
        with self._lock:
            return next(
                c for c in self.charges.values() if c["payment_intent"] == payment_intent_id
            )

    def add_credit_note(self, *, invoice_id: str, amount: int, refund_amount: int = 0) -> dict:
        """An issued credit note on an invoice, for `amount` minor units (`refund_amount` of
        it refunded: post-payment)."""
        params = {"invoice": invoice_id, "amount": amount, "refund_amount": refund_amount}
        return self._make("credit_note", params)

    def void_credit_note(self, credit_note_id: str) -> dict:
        with self._lock:
            note = self.credit_notes[credit_note_id]
            note.update(status="void", voided_at=int(time.time()))
            return note

    def complete_checkout(self, session_id: str) -> dict:
        """What Stripe does when the customer pays: the session completes; a subscription-mode
        session gets its subscription. Returns the session (make_event it for a webhook)."""
        with self._lock:
            session = self.checkout_sessions[session_id]
            session.update(status="complete", payment_status="paid")
            if session["mode"] == "payment":
                # Paid by card: a payment intent and its charge, which carries the payment
                # intent's metadata (as Stripe copies it).
                metadata = self._payment_metadata.get(session_id, {})
                charge = self._make(
                    "charge",
                    {
                        "amount": session["amount_total"],
                        "customer": session["customer"],
                        "metadata": metadata,
                    },
                )
                session["payment_intent"] = charge["payment_intent"]
            else:
                price_ids, data = self._checkouts[session_id]  # metadata, billing_cycle_anchor
                subscription = self.add_subscription(
                    customer=session["customer"], price_ids=price_ids, **data
                )
                session.update(
                    subscription=subscription["id"], payment_status="no_payment_required"
                )
            return session

    # Reading what was sent

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def posts(self, path: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and path in (None, r.path)]

    def stream_requests(self) -> list[RecordedRequest]:
        return self.requests_to("POST", METER_EVENT_STREAM)

    def streamed_identifiers(self) -> list[str]:
        """The identifier of every event of every stream request, answered or not."""
        return [
            event.get("identifier")
            for request in self.stream_requests()
            for event in (request.json or {}).get("events", [])
        ]

    def invoice_items_of(self, customer_id: str) -> list[dict]:
        with self._lock:
            return [i for i in self.invoiceitems.values() if i["customer"] == customer_id]

    def balance_transactions_of(self, customer_id: str) -> list[dict]:
        with self._lock:
            return [
                t
                for t in self.customer_balance_transactions.values()
                if t["customer"] == customer_id
            ]

    def meter_event_totals(self, event_name: str, customer_id: str) -> Decimal:
        """The sum of the values of the accepted meter events (replays counted once)."""
        with self._lock:
            events = [e["payload"] for e in self.meter_events if e["event_name"] == event_name]
            mine = [p["value"] for p in events if p.get("stripe_customer_id") == customer_id]
            return sum(map(Decimal, mine), Decimal(0))

    # The API: one generic handler for every resource

    def _handle(self, request: Request) -> Response:
        if request.path.startswith("/v2/"):
            return self._handle_v2(request)
        body, query = request.get_data(), request.query_string.decode("utf-8", "replace")
        source = body.decode("utf-8", "replace") if request.method == "POST" else query
        items = parse_qsl(source, keep_blank_values=True)
        try:
            params = _nest(items)
        except _Refusal:
            params = {}
        headers = Headers(request.headers)
        record = RecordedRequest(
            request.method, request.path, dict(items), items, params, headers, body
        )
        record.peer = _peer(request)
        with self._lock:
            self.requests.append(record)
            status, answer, headers = self._answer(request, record)
            record.status = status
        headers.setdefault("Request-Id", _new_id("req_", 14))
        headers["Stripe-Version"] = record.stripe_version or FAKE_API_VERSION
        if record.idempotency_key:
            headers["Idempotency-Key"] = record.idempotency_key
        return Response(json.dumps(answer), status, headers, mimetype="application/json")

    def _answer(self, request: Request, record: RecordedRequest) -> tuple[int, dict, dict]:
        method, path = record.method, record.path
        for failure in self._failures:
            status, error, only_method, only_path, processed = failure
            if only_method in (None, method) and only_path in (None, path):
                self._failures.remove(failure)
                if processed:
                    self._process(request, record)  # done at Stripe, the answer lost
                return status, {"error": dict(error)}, {}
        return self._process(request, record)

    def _process(self, request: Request, record: RecordedRequest) -> tuple[int, dict, dict]:
        method, path = record.method, record.path
        key = record.idempotency_key if method == "POST" else None  # Stripe ignores it elsewhere
        sent = [method, path, sorted(record.form_items)]
        try:
            scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
            if not secret:
                raise _Refusal(401, NO_KEY)
            if scheme != "Bearer" or secret != self.api_key:
                raise _Refusal(401, f"Invalid API Key provided: {_mask(secret)}")
            version = record.stripe_version
            valid = not version or VERSION_PATTERN.fullmatch(version)
            _ensure(valid, f"Invalid Stripe API version: {version}")
            form = request.mimetype == "application/x-www-form-urlencoded"
            _ensure(method != "POST" or not record.body or form, "Unsupported Content-Type.")
            if key in self._idempotency:
                *first, answer, request_id = self._idempotency[key]
                _ensure(
                    first == sent,
                    "Keys for idempotent requests can only be used with the same parameters they"
                    f" were first used with. Try a key other than '{key}' for a new request.",
                    type="idempotency_error",
                )
                record.replayed = True
                return 200, answer, {"Idempotent-Replayed": "true", "Original-Request": request_id}
            answer = self._route(method, path, record.form_items, _nest(record.form_items))
        except _Refusal as refusal:
            return refusal.status, {"error": refusal.error}, {}
        request_id = _new_id("req_", 14)
        if key:  # only answers from a completed endpoint are kept (validation errors are not)
            self._idempotency[key] = (*sent, answer, request_id)
        return 200, answer, {"Request-Id": request_id}

    def _route(self, method: str, path: str, items: list, params: dict) -> dict:
        answer = self._reconciliation_route(method, path, items, params)
        if answer is None:
            answer = self._customer_balance_route(method, path, items, params)
        if answer is None:
            answer = self._invoice_route(method, path, items, params)
        if answer is not None:
            return answer
        if method == "POST" and path == "/v1/invoices/create_preview":
            _check_names(items, INVOICE_PREVIEW)
            return self._invoice_preview(params)
        for resource in self.RESOURCES:
            object_id = path.removeprefix(resource.path + "/")
            if path == resource.path and method == "POST" and resource.create:
                _check_names(items, resource.create)
                return self._make(resource.kind, params)
            if path == resource.path and method == "GET" and resource.filters is not None:
                _check_names(items, f"limit starting_after expand[] {resource.filters}")
                objects = list(getattr(self, resource.store).values())
                names = {re.sub(r"\[.*", "", name) for name in resource.filters.split()}
                for name in names & params.keys():
                    objects = [o for o in objects if _matches(o, name, params[name])]
                return _page(resource.path, objects, params, kind=resource.kind)
            one = object_id != path and "/" not in object_id and resource.id_prefix
            deleting = method == "DELETE" and resource.cancel
            if one and (method == "GET" or deleting):
                _check_names(items, CANCEL if deleting else "expand[]")
                obj = getattr(self, resource.store).get(object_id)
                if obj is None:
                    raise _missing(resource.kind, object_id)
                if deleting:
                    resource.cancel(self, obj, params)
                return obj
        raise _Refusal(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    # API v2: the meter event stream (JSON in, JSON out)

    def _handle_v2(self, request: Request) -> Response:
        body = request.get_data()
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            params = None
        headers = Headers(request.headers)
        record = RecordedRequest(request.method, request.path, {}, [], params or {}, headers, body)
        record.peer = _peer(request)
        with self._lock:
            self.requests.append(record)
            status, answer = self._answer_v2(request, record, params)
            record.status = status
        response_headers = {"Request-Id": _new_id("req_", 14)}
        response_headers["Stripe-Version"] = record.stripe_version or FAKE_API_VERSION
        return Response(json.dumps(answer), status, response_headers, mimetype="application/json")

    def _answer_v2(self, request: Request, record: RecordedRequest, params) -> tuple[int, dict]:
        for failure in self._failures:
            status, error, only_method, only_path, processed = failure
            if only_method in (None, record.method) and only_path in (None, record.path):
                self._failures.remove(failure)
                if processed:
                    self._process_v2(request, record, params)  # done at Stripe, answer lost
                return status, {"error": dict(error)}
        return self._process_v2(request, record, params)

    def _process_v2(self, request: Request, record: RecordedRequest, params) -> tuple[int, dict]:
        def refused(status: int, error_type: str, code: str, message: str) -> tuple[int, dict]:
            return status, {"error": {"type": error_type, "code": code, "message": message}}

        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if request.method != "POST" or record.path not in (
            METER_EVENT_SESSION,
            METER_EVENT_STREAM,
        ):
            return refused(404, "invalid_request_error", "not_found", "Unrecognized request URL.")
        if request.mimetype != "application/json" or not isinstance(params, dict):
            return refused(400, "invalid_request_error", "invalid_json", "The body is not JSON.")
        if record.path == METER_EVENT_SESSION:
            if scheme != "Bearer" or secret != self.api_key:
                return refused(401, "invalid_request_error", "unauthorized", NO_KEY)
            if params:
                return refused(400, "invalid_request_error", "invalid_field", "No parameters.")
            return 200, self._new_session()
        if scheme != "Bearer" or secret not in self._sessions:
            # The stream takes only a session token, never the secret key.
            return refused(401, "invalid_request_error", "unauthorized", "Invalid token.")
        if self._sessions[secret] <= time.time():
            return 401, {"error": dict(SESSION_EXPIRED)}
        try:
            events = self._stream_events(params)
        except _Refusal as refusal:
            return refusal.status, {"error": refusal.error}
        recent = self._recent_identifiers()
        for event in events:
            if recent.get(event["identifier"], -1) >= self._forgotten_identifiers:
                continue  # Stripe drops a duplicate identifier (asynchronously)
            recent[event["identifier"]] = len(self.meter_events)
            self.meter_events.append(event)
        self._identifiers_seen = self._events_state()
        if self._sessions_last is not None:
            self._sessions_last -= 1
            if self._sessions_last <= 0:
                self._expire_sessions()
        return 200, {}

    def _events_state(self) -> tuple:
        events = self.meter_events
        return (len(events), id(events[0]) if events else None, id(events[-1]) if events else None)

    def _recent_identifiers(self) -> dict[str, int]:
        """identifier -> index of its latest event; rebuilt only when a test changed
        `meter_events` itself (so a stream of many requests stays linear)."""
        if self._identifiers_seen != self._events_state():
            self._identifiers = {e["identifier"]: n for n, e in enumerate(self.meter_events)}
        return self._identifiers

    def _new_session(self) -> dict:
        now = time.time()
        token = "ek_test_" + _new_id("", 40)
        self._sessions[token] = now + SESSION_SECONDS
        return {
            "id": _new_id("mes_"),
            "object": "v2.billing.meter_event_session",
            "authentication_token": token,
            "created": _rfc3339(now),
            "expires_at": _rfc3339(now + SESSION_SECONDS),
            "livemode": False,
        }

    def _stream_events(self, params: dict) -> list[dict]:
        """The request's events as Stripe checks them on arrival (the rest of its checks,
        such as whether the customer exists, happen later and do not fail the request)."""
        _ensure(set(params) == {"events"}, "The body takes `events` only.", "events")
        events = params["events"]
        _ensure(
            isinstance(events, list) and 1 <= len(events) <= STREAM_MAX_EVENTS,
            f"`events` takes 1 to {STREAM_MAX_EVENTS} events.",
            "events",
        )
        now = int(time.time())
        past, future = METER_EVENT_WINDOW
        accepted = []
        for n, event in enumerate(events):
            where = f"events[{n}]"
            _ensure(isinstance(event, dict), "An event is an object.", where)
            unknown = set(event) - STREAM_EVENT_KEYS
            _ensure(not unknown, f"Unknown field {sorted(unknown)}.", where)
            payload = event.get("payload")
            _ensure(isinstance(event.get("event_name"), str), "Missing event_name.", where)
            _ensure(isinstance(payload, dict), "Missing payload.", where)
            _ensure(
                all(isinstance(v, str) for v in payload.values()),
                "Payload values are strings.",
                f"{where}.payload",
            )
            _need(payload, "stripe_customer_id value", f"{where}.payload")
            _ensure(re.fullmatch(r"-?\d+", payload["value"]), "Invalid value.", f"{where}.payload")
            stamp = event.get("timestamp")
            timestamp = now if stamp is None else _from_rfc3339(stamp, f"{where}.timestamp")
            _ensure(
                now - past <= timestamp <= now + future,
                "The timestamp must be within the past 35 days or up to 5 minutes in the future.",
                f"{where}.timestamp",
            )
            accepted.append(
                {
                    "event_name": event["event_name"],
                    "identifier": event.get("identifier") or _new_id("mevt_"),
                    "payload": dict(payload),
                    "timestamp": timestamp,
                }
            )
        return accepted

    # Reconciliation: meter event summaries and invoice lines (billing/reconciliation.py).

    def _reconciliation_route(self, method, path, items, params) -> dict | None:
        if method != "GET":
            return None
        summaries = re.fullmatch(r"/v1/billing/meters/([^/]+)/event_summaries", path)
        if summaries:
            accepted = "customer start_time end_time value_grouping_window " + LIST
            _check_names(items, accepted)
            return self._event_summaries(summaries.group(1), params)
        lines = re.fullmatch(r"/v1/invoices/([^/]+)/lines", path)
        if lines:
            _check_names(items, LIST)
            invoice = self.invoices.get(lines.group(1))
            if invoice is None:
                raise _missing("invoice", lines.group(1))
            return _page_in_order(path, invoice["lines"]["data"], params, kind="line_item")
        return None

    def _customer_balance_route(self, method, path, items, params) -> dict | None:
        """A customer's balance transactions: /v1/customers/<id>/balance_transactions."""
        found = re.fullmatch(r"/v1/customers/([^/]+)/balance_transactions", path)
        if not found:
            return None
        customer = found.group(1)
        if customer not in self.customers:
            raise _missing("customer", customer)
        if method == "POST":
            _check_names(items, BALANCE_TRANSACTION)
            return self._make("customer_balance_transaction", {**params, "customer": customer})
        _check_names(items, LIST)
        mine = [t for t in self.customer_balance_transactions.values() if t["customer"] == customer]
        return _page(path, mine, params, kind="customer_balance_transaction")

    def _invoice_preview(self, params: dict) -> dict:
        """Stripe's preview of a subscription's next invoice: its current period's metered
        usage (the meter events accepted so far, as `add_usage_invoice` sums them) and the
        customer's pending invoice items. Nothing is stored: a preview is no invoice."""
        _need(params, "customer subscription")
        subscription = self.subscriptions.get(params["subscription"])
        if subscription is None:
            raise _missing("subscription", params["subscription"], "subscription")
        _ensure(
            subscription["customer"] == params["customer"],
            "The subscription does not belong to this customer.",
            "subscription",
        )
        _ensure(
            subscription["status"] not in ("canceled", "incomplete_expired"),
            f"No upcoming invoices for subscription {subscription['id']}.",
            code="invoice_upcoming_none",
        )
        items = subscription["items"]["data"]
        start = min((i["current_period_start"] for i in items), default=subscription["created"])
        end = max((i["current_period_end"] for i in items), default=subscription["created"])
        with self._lock:
            invoices_before = dict(self.invoices)
            invoice = self.add_usage_invoice(
                subscription_id=subscription["id"],
                period_start=start,
                period_end=end,
                status="draft",
            )
            self.invoices = invoices_before  # a preview is not kept
        pending = [
            item for item in self.invoice_items_of(params["customer"]) if not item["invoice"]
        ]
        extra = [
            _fields(LINE_ITEM_BODY)
            | {
                "id": _new_id("il_"),
                "amount": item["amount"],
                "description": item["description"],
                "invoice": None,
                "period": item["period"],
                "subscription": None,
                "subtotal": item["amount"],
            }
            for item in pending
        ]
        lines = [{**line, "invoice": None} for line in invoice["lines"]["data"]] + extra
        total = sum(line["amount"] for line in lines)
        invoice.update(
            id=f"upcoming_{subscription['id']}",
            hosted_invoice_url=None,
            invoice_pdf=None,
            number=None,
            lines=_list_object(
                f"/v1/invoices/upcoming/lines?subscription={subscription['id']}", lines
            ),
            amount_due=total,
            amount_remaining=total,
            billing_reason="upcoming",
            **dict.fromkeys(
                ("subtotal", "subtotal_excluding_tax", "total", "total_excluding_tax"), total
            ),
        )
        return invoice

    def _event_summaries(self, meter_id: str, params: dict) -> dict:
        meter = self.meters.get(meter_id)
        if meter is None:
            raise _missing("billing meter", meter_id)
        _need(params, "customer start_time end_time")
        start, end = (_integer(params[name], name) for name in ("start_time", "end_time"))
        for name, value in (("start_time", start), ("end_time", end)):
            _ensure(value % 60 == 0, "Must be aligned with minute boundaries.", name)
        _ensure(start < end, "end_time must be after start_time.", "end_time")
        _ensure(
            "value_grouping_window" not in params,
            "Not served by the fake.",
            "value_grouping_window",
        )
        value = self._summed(meter, params["customer"], start, end, upto=self._summaries_upto)
        summary = {
            "id": _new_id("mtrusg_"),
            "object": "billing.meter_event_summary",
            "aggregated_value": int(value) if value == int(value) else float(value),
            "end_time": end,
            "livemode": False,
            "meter": meter_id,
            "start_time": start,
        }
        return _page_in_order(
            f"/v1/billing/meters/{meter_id}/event_summaries",
            [summary],
            params,
            kind="billing.meter_event_summary",
        )

    def _summed(
        self, meter: dict, customer: str, start: int, end: int, *, upto: int | None = None
    ) -> Decimal:
        """The accepted events of the meter's event name for the customer, start <= t < end
        (only the first `upto` events, if given)."""
        return sum(
            (
                Decimal(event["payload"]["value"])
                for event in self.meter_events[:upto]
                if event["event_name"] == meter["event_name"]
                and event["payload"].get("stripe_customer_id") == customer
                and start <= event["timestamp"] < end
            ),
            Decimal(0),
        )

    def _make(self, kind: str, params: dict) -> dict:
        resource = next(r for r in self.RESOURCES if r.kind == kind)
        with self._lock:
            new = {"object": kind, "created": int(time.time()), "livemode": False}
            if resource.id_prefix:
                new = {"id": _new_id(resource.id_prefix), **new}
            obj = {**new, **_fields(resource.defaults), **resource.build(self, params, new)}
            if resource.dated:
                obj["date"] = obj.pop("created")
            if kind == "refund":
                obj.pop("livemode")  # Stripe's refund has none
            objects = getattr(self, resource.store)
            if isinstance(objects, list):
                objects.append(obj)
            else:
                objects[obj["id"]] = obj
            return obj

    # Builders: (params, new) -> the body's own fields. The params come from the wire
    # (strings) or from an add_* method (Python values).

    def _customer(self, params: dict, new: dict) -> dict:
        return {
            "email": params.get("email"),
            "invoice_prefix": new["id"][-8:].upper(),
            "metadata": dict(params.get("metadata") or {}),
            "name": params.get("name"),
        }

    def _checkout_session(self, params: dict, new: dict) -> dict:
        _need(params, "mode line_items")
        mode, customer, items = params["mode"], params.get("customer"), params["line_items"]
        _ensure(mode in ("payment", "subscription"), f"Invalid mode: {mode}", "mode")
        if customer is not None and customer not in self.customers:
            raise _missing("customer", customer, "customer")
        data = dict(params.get("subscription_data") or {})
        if "billing_cycle_anchor" in data:
            param = "subscription_data[billing_cycle_anchor]"
            data["billing_cycle_anchor"] = anchor = _integer(data["billing_cycle_anchor"], param)
            _ensure(anchor > time.time(), f"`{param}` must be in the future.", param)
        lines = [
            self._checkout_line(mode, item, f"line_items[{n}]") for n, item in enumerate(items)
        ]
        self._checkouts[new["id"]] = ([item.get("price") for item in items], data)
        payment_data = params.get("payment_intent_data") or {}
        self._payment_metadata[new["id"]] = dict(payment_data.get("metadata") or {})
        invoice_creation = {"enabled": False, "invoice_data": None} if mode == "payment" else None
        return {
            "amount_subtotal": sum(amount for _, amount in lines),
            "amount_total": sum(amount for _, amount in lines),
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "currency": lines[0][0],
            "customer": customer,
            "expires_at": new["created"] + 24 * 3600,
            "invoice_creation": invoice_creation,
            "metadata": dict(params.get("metadata") or {}),
            "mode": mode,
            "success_url": params.get("success_url"),
            "url": f"https://checkout.stripe.com/c/pay/{new['id']}",
        }

    def _checkout_line(self, mode: str, item: dict, where: str) -> tuple[str, int]:
        """(currency, amount) of one line item, checked as Checkout checks it."""
        if "price" in item:
            price = self.prices.get(item["price"])
            if price is None:
                raise _missing("price", item["price"], f"{where}[price]")
            currency, recurring = price["currency"], price["recurring"]
            unit_amount = price["unit_amount"]
        else:
            data = item.get("price_data") or {}
            _need(data, "currency unit_amount product_data", f"{where}[price_data]")
            _need(data["product_data"], "name", f"{where}[price_data][product_data]")
            currency, recurring = data["currency"].lower(), None
            unit_amount = _integer(data["unit_amount"], f"{where}[price_data][unit_amount]", 0)
        _ensure(mode == "subscription" or not recurring, "Payments take one-time prices.", where)
        if (recurring or {}).get("usage_type") == "metered":
            _ensure("quantity" not in item, "Metered prices take no quantity.", where)
            return currency, 0
        _need(item, "quantity", where)
        return currency, unit_amount * _integer(item["quantity"], f"{where}[quantity]", 1)

    def _meter(self, params: dict, new: dict) -> dict:
        _need(params, "display_name event_name")
        _need(params.get("default_aggregation") or {}, "formula", "default_aggregation")
        event_name = params["event_name"]
        clash = next((m["id"] for m in self.meters.values() if m["event_name"] == event_name), None)
        _ensure(clash is None, f"Meter {clash} has event_name `{event_name}`.", "event_name")
        mapping = {"event_payload_key": "stripe_customer_id", "type": "by_id"}
        value_key = (params.get("value_settings") or {}).get("event_payload_key", "value")
        return {
            "customer_mapping": {**mapping, **(params.get("customer_mapping") or {})},
            "default_aggregation": params["default_aggregation"],
            "display_name": params["display_name"],
            "event_name": event_name,
            "updated": new["created"],
            "value_settings": {"event_payload_key": value_key},
        }

    def _meter_event(self, params: dict, new: dict) -> dict:
        _need(params, "event_name payload")
        event_name, payload, now = params["event_name"], params["payload"], new["created"]
        _need(payload, "stripe_customer_id value", "payload")  # the keys our meters map
        timestamp = _integer(params.get("timestamp", str(now)), "timestamp")
        past, future = METER_EVENT_WINDOW
        _ensure(
            now - past <= timestamp <= now + future,
            "The timestamp must be within the past 35 days or up to 5 minutes in the future.",
            "timestamp",
        )
        identifier = params.get("identifier") or _new_id("mevt_")
        recent = self.meter_events[self._forgotten_identifiers :]
        known = any(e["identifier"] == identifier for e in recent)
        _ensure(not known, f"An event already exists with identifier {identifier}.", "identifier")
        return {
            "event_name": event_name,
            "identifier": identifier,
            "payload": dict(payload),
            "timestamp": timestamp,
        }

    def _product(self, params: dict, new: dict) -> dict:
        _need(params, "name")
        product_id = params.get("id") or new["id"]
        exists = product_id in self.products
        _ensure(not exists, "Product already exists.", "id", code="resource_already_exists")
        metadata = dict(params.get("metadata") or {})
        return {
            "id": product_id,
            "metadata": metadata,
            "name": params["name"],
            "updated": new["created"],
        }

    def _price(self, params: dict, new: dict) -> dict:
        _need(params, "currency product unit_amount")
        if params["product"] not in self.products:
            raise _missing("product", params["product"], "product")
        recurring = params.get("recurring")
        if recurring is not None:
            usage_type, meter = recurring.get("usage_type", "licensed"), recurring.get("meter")
            if usage_type == "metered":  # backed by an active billing meter
                _need(recurring, "meter", "recurring")
                if (self.meters.get(meter) or {}).get("status") != "active":
                    raise _missing("billing meter", meter, "recurring[meter]")
            recurring = {"interval": recurring.get("interval"), "interval_count": 1, "meter": meter}
            recurring.update(trial_period_days=None, usage_type=usage_type)
        key = params.get("lookup_key")
        holder = next((p for p in self.prices.values() if key and p["lookup_key"] == key), None)
        if holder is not None:
            moved = _boolean(params.get("transfer_lookup_key", "false"), "transfer_lookup_key")
            _ensure(moved, f"Price {holder['id']} already has that lookup key.", "lookup_key")
            holder["lookup_key"] = None
        unit_amount = _integer(params["unit_amount"], "unit_amount", 0)
        return {
            "billing_scheme": params.get("billing_scheme", "per_unit"),
            "currency": params["currency"].lower(),
            "lookup_key": key,
            "metadata": dict(params.get("metadata") or {}),
            "product": params["product"],
            "recurring": recurring,
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }

    def _subscription(self, params: dict, new: dict) -> dict:
        now, anchor = new["created"], params.get("billing_cycle_anchor")
        items = []
        for price in (self.prices[price_id] for price_id in params["price_ids"]):
            item = _fields(SUBSCRIPTION_ITEM_BODY) | {
                "id": _new_id("si_", 14),
                "created": now,
                "current_period_end": anchor or now + 30 * 24 * 3600,
                "current_period_start": now,
                "plan": _plan(price),
                "price": price,
                "subscription": new["id"],
            }
            if price["recurring"]["usage_type"] != "metered":
                item["quantity"] = 1  # Stripe leaves quantity out of a metered item
            items.append(item)
        ended = now if params["status"] == "canceled" else None
        return {
            "billing_cycle_anchor": anchor or now,
            "canceled_at": ended,
            "currency": items[0]["price"]["currency"] if items else "usd",
            "customer": params["customer"],
            "ended_at": ended,
            "items": _list_object(f"/v1/subscription_items?subscription={new['id']}", items),
            "metadata": params["metadata"],
            "start_date": params.get("start_date") or now,
            "status": params["status"],
        }

    def _cancel(self, subscription: dict, params: dict | None = None) -> None:
        # A canceled subscription can still be read, but a second cancel is "No such ...".
        if subscription["status"] == "canceled":
            raise _missing("subscription", subscription["id"])
        params = params or {}
        invoice_now = _boolean(params.get("invoice_now", "false"), "invoice_now")
        _boolean(params.get("prorate", "false"), "prorate")
        now = int(time.time())
        subscription.update(status="canceled", canceled_at=now, ended_at=now)
        if invoice_now:  # the usage of the current period invoiced now, finalized
            items = subscription["items"]["data"]
            start = min((i["current_period_start"] for i in items), default=now)
            invoice = self.add_usage_invoice(
                subscription_id=subscription["id"], period_start=start, period_end=now + 1
            )
            subscription["latest_invoice"] = invoice["id"]

    def end_subscription(self, subscription_id: str) -> dict:
        """Canceled outside our code (the customer portal, the dashboard), without a final
        invoice; returns the subscription as `customer.subscription.deleted` carries it."""
        with self._lock:
            subscription = self.subscriptions[subscription_id]
            self._cancel(subscription, {})
            return subscription

    def _invoice_route(self, method, path, items, params) -> dict | None:
        """Invoices made by our code: create a draft, finalize it."""
        if method != "POST":
            return None
        if path == "/v1/invoices":
            _check_names(items, INVOICE)
            _need(params, "customer")
            if params["customer"] not in self.customers:
                raise _missing("customer", params["customer"], "customer")
            behavior = params.get("pending_invoice_items_behavior", "include")
            _ensure(behavior in ("include", "exclude"), "Invalid pending_invoice_items_behavior")
            _ensure(
                behavior == "exclude", "Not served by the fake.", "pending_invoice_items_behavior"
            )
            invoice = self._make(
                "invoice",
                {
                    "customer": params["customer"],
                    "status": "draft",
                    "amount_due": 0,
                    "subscription": None,
                    "created": None,
                    "number": None,
                    "lines": [],
                },
            )
            invoice["lines"]["data"] = []
            invoice.update(
                billing_reason="manual",
                description=params.get("description"),
                metadata=dict(params.get("metadata") or {}),
                auto_advance=_boolean(params.get("auto_advance", "false"), "auto_advance"),
            )
            return invoice
        finalize = re.fullmatch(r"/v1/invoices/([^/]+)/finalize", path)
        if finalize:
            _check_names(items, "auto_advance expand[]")
            invoice = self.invoices.get(finalize.group(1))
            if invoice is None:
                raise _missing("invoice", finalize.group(1))
            _ensure(
                invoice["status"] == "draft",
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
            now = int(time.time())
            url = f"https://invoice.stripe.com/i/{ACCOUNT}/test_{invoice['id']}"
            invoice.update(
                status="open",
                number=f"FAKE-{len(self.invoices):04d}",
                hosted_invoice_url=url,
                invoice_pdf=f"{url}/pdf",
            )
            invoice["status_transitions"]["finalized_at"] = now
            return invoice
        return None

    def _invoice(self, params: dict, new: dict) -> dict:
        invoice_id, status, due = new["id"], params["status"], params["amount_due"]
        now, subscription = params["created"] or new["created"], params["subscription"]
        final, customer = status != "draft", self.customers.get(params["customer"]) or {}
        period_start, period_end = params.get("period") or (
            params.get("period_start") or now,
            params.get("period_end") or now,
        )
        lines = [
            _fields(LINE_ITEM_BODY) | {"invoice": invoice_id, "subscription": subscription} | line
            for line in params.get("lines") or ()
        ] or [
            _fields(LINE_ITEM_BODY)
            | {
                "id": _new_id("il_"),
                "amount": due,
                "invoice": invoice_id,
                "period": {"end": now, "start": now},
                "subscription": subscription,
                "subtotal": due,
            }
        ]
        happened = {"finalized": final, "marked_uncollectible": status == "uncollectible"}
        happened.update(paid=status == "paid", voided=status == "void")
        parent = {"type": "subscription_details", "quote_details": None}
        parent["subscription_details"] = {"metadata": None, "subscription": subscription}
        url = f"https://invoice.stripe.com/i/{ACCOUNT}/test_{invoice_id}"
        return {
            "amount_due": due,
            "amount_paid": due if status == "paid" else 0,
            "amount_remaining": 0 if status in ("paid", "void") else due,
            "billing_reason": "subscription_cycle" if subscription else "manual",
            "created": now,
            "customer": params["customer"],
            "customer_email": customer.get("email"),
            "customer_name": customer.get("name"),
            "hosted_invoice_url": url if final else None,
            "invoice_pdf": f"{url}/pdf" if final else None,
            "lines": _list_object(f"/v1/invoices/{invoice_id}/lines", lines),
            "number": params["number"] or (f"FAKE-{len(self.invoices) + 1:04d}" if final else None),
            "parent": parent if subscription else None,
            "period_end": period_end,
            "period_start": period_start,
            "status": status,
            "status_transitions": {f"{k}_at": now if v else None for k, v in happened.items()},
            "subscription": subscription,
            **dict.fromkeys(
                ("subtotal", "subtotal_excluding_tax", "total", "total_excluding_tax"), due
            ),
            "webhooks_delivered_at": now,
        }

    def _credit_note(self, params: dict, new: dict) -> dict:
        _need(params, "invoice")
        invoice = self.invoices.get(params["invoice"])
        if invoice is None:
            raise _missing("invoice", params["invoice"], "invoice")
        extra = {}
        if isinstance(params.get("amount"), str):  # POST /v1/credit_notes (add_* passes ints)
            _ensure(
                invoice["status"] in ("open", "paid"),
                "You can only create a credit note for an invoice that is open or paid.",
                "invoice",
            )
            _need(params, "amount")
            params = {**params, "amount": _integer(params["amount"], "amount", 1)}
            params["refund_amount"] = 0
            if invoice["status"] == "open":  # pre-payment: it lowers what is still due
                _ensure(
                    params["amount"] <= invoice["amount_remaining"],
                    "The credit note amount cannot exceed the invoice's amount remaining.",
                    "amount",
                )
                invoice["amount_remaining"] -= params["amount"]
                invoice["amount_due"] -= params["amount"]
            extra = {"memo": params.get("memo"), "metadata": dict(params.get("metadata") or {})}
            if params.get("reason"):
                extra["reason"] = params["reason"]
        amount, refunded = params["amount"], params["refund_amount"]
        paid = invoice["status"] == "paid"
        number = f"{invoice['number'] or 'FAKE'}-CN-{len(self.credit_notes) + 1:02d}"
        return {
            "amount": amount,
            "customer": invoice["customer"],
            "effective_at": new["created"],
            "invoice": invoice["id"],
            "lines": _list_object(f"/v1/credit_notes/{new['id']}/lines", []),
            "number": number,
            "pdf": f"https://pay.stripe.com/credit_notes/{ACCOUNT}/test_{new['id']}/pdf",
            "post_payment_amount": amount if paid else 0,
            "pre_payment_amount": 0 if paid else amount,
            "status": "issued",
            "subtotal": amount,
            "subtotal_excluding_tax": amount,
            "total": amount,
            "type": "post_payment" if paid else "pre_payment",
            "voided_at": None,
            "out_of_band_amount": amount - refunded if paid else None,
            **extra,
        }

    def _balance_transaction(self, params: dict, new: dict) -> dict:
        _need(params, "amount currency")
        amount = _integer(params["amount"], "amount")  # negative: a credit to the customer
        _ensure(amount != 0, "Amount must be non-zero.", "amount")
        customer = self.customers[params["customer"]]
        customer["balance"] += amount
        return {
            "amount": amount,
            "currency": params["currency"].lower(),
            "customer": customer["id"],
            "description": params.get("description"),
            "ending_balance": customer["balance"],
            "metadata": dict(params.get("metadata") or {}),
        }

    def _charge(self, params: dict, new: dict) -> dict:
        amount = params["amount"]
        return {
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": 0,
            "customer": params["customer"],
            "metadata": dict(params.get("metadata") or {}),
            "payment_intent": _new_id("pi_"),
            "receipt_url": f"https://pay.stripe.com/receipts/payment/test_{new['id']}",
            "refunded": False,
            "refunds": _list_object(f"/v1/charges/{new['id']}/refunds", []),
        }

    def _refund(self, params: dict, new: dict) -> dict:
        charge = params.get("charge")
        if charge is None:  # POST /v1/refunds: a payment intent's charge, refunded now
            _need(params, "payment_intent")
            intent = params["payment_intent"]
            charge = next((c for c in self.charges.values() if c["payment_intent"] == intent), None)
            if charge is None:
                raise _missing("payment_intent", intent, "payment_intent")
            left = charge["amount"] - charge["amount_refunded"]
            amount = _integer(params.get("amount", left), "amount", 1)
            _ensure(
                amount <= left,
                f"Refund amount (${amount / 100:.2f}) is greater than unrefunded amount on"
                f" charge (${left / 100:.2f})",
                "amount",
                code="amount_too_large",
            )
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount"]
            refund = {
                "amount": amount,
                "charge": charge["id"],
                "customer": charge["customer"],
                "metadata": dict(params.get("metadata") or {}),
                "payment_intent": intent,
            }
            listed = {k: v for k, v in new.items() if k != "livemode"}
            charge["refunds"]["data"].insert(0, {**listed, **_fields(REFUND_BODY), **refund})
            return refund
        return {
            "amount": params["amount"],
            "charge": charge["id"],
            "customer": charge["customer"],
            "payment_intent": charge["payment_intent"],
        }

    def _dispute(self, params: dict, new: dict) -> dict:
        charge = params["charge"]
        return {
            "amount": params.get("amount") or charge["amount"],
            "charge": charge["id"],
            "payment_intent": charge["payment_intent"],
        }

    def _invoice_payment(self, params: dict, new: dict) -> dict:
        amount = params["amount"]
        return {
            "amount_paid": amount,
            "amount_requested": amount,
            "currency": "usd",
            "invoice": params["invoice"],
            "is_default": True,
            "payment": {"payment_intent": params["payment_intent"], "type": "payment_intent"},
            "status": "paid",
            "status_transitions": {"canceled_at": None, "paid_at": new["created"]},
        }

    def _invoice_item(self, params: dict, new: dict) -> dict:
        _need(params, "customer amount currency")
        customer, subscription = params["customer"], params.get("subscription")
        if customer not in self.customers:
            raise _missing("customer", customer, "customer")
        parent = None
        if subscription is not None:
            found = self.subscriptions.get(subscription)
            if found is None:
                raise _missing("subscription", subscription, "subscription")
            _ensure(
                found["customer"] == customer,
                f"The subscription {subscription} does not belong to customer {customer}.",
                "subscription",
            )
            parent = {"type": "subscription_details"}
            parent["subscription_details"] = {"metadata": None, "subscription": subscription}
        amount = _integer(params["amount"], "amount")  # negative: a credit
        now = new["created"]
        on_invoice = params.get("invoice")
        if on_invoice is not None:
            invoice = self.invoices.get(on_invoice)
            if invoice is None:
                raise _missing("invoice", on_invoice, "invoice")
            _ensure(invoice["customer"] == customer, "Invoice of another customer.", "invoice")
            _ensure(invoice["status"] == "draft", "The invoice is not a draft.", "invoice")
            line = _fields(LINE_ITEM_BODY) | {
                "id": _new_id("il_"),
                "amount": amount,
                "description": params.get("description"),
                "invoice": on_invoice,
                "metadata": dict(params.get("metadata") or {}),
                "period": {"end": now, "start": now},
                "subscription": None,
                "subtotal": amount,
            }
            invoice["lines"]["data"].append(line)
            total = invoice["amount_due"] + amount
            invoice.update(amount_due=total, amount_remaining=total)
            invoice.update(
                dict.fromkeys(
                    ("subtotal", "subtotal_excluding_tax", "total", "total_excluding_tax"), total
                )
            )
        return {
            "amount": amount,
            "currency": params["currency"].lower(),
            "customer": customer,
            "description": params.get("description"),
            "invoice": on_invoice,
            "metadata": dict(params.get("metadata") or {}),
            "net_amount": amount,
            "parent": parent,
            "period": {"end": now, "start": now},
            "pricing": {"type": "price_details", "unit_amount_decimal": str(amount)},
        }

    RESOURCES = (  # object, id prefix, builder, default fields, create params, list filters
        Resource("customer", "cus_", _customer, CUSTOMER_BODY, CUSTOMER),
        Resource("checkout.session", "cs_test_", _checkout_session, CHECKOUT_BODY, CHECKOUT),
        Resource("billing.meter", "mtr_", _meter, METER_BODY, METER, "status"),
        Resource("billing.meter_event", "", _meter_event, "", METER_EVENT),
        Resource("product", "prod_", _product, PRODUCT_BODY, PRODUCT),
        Resource("price", "price_", _price, PRICE_BODY, PRICE, "active lookup_keys[]"),
        Resource("subscription", "sub_", _subscription, SUBSCRIPTION_BODY, cancel=_cancel),
        Resource("invoice", "in_", _invoice, INVOICE_BODY, filters="customer subscription status"),
        Resource("credit_note", "cn_", _credit_note, CREDIT_NOTE_BODY, CREDIT_NOTE, "invoice"),
        Resource("charge", "ch_", _charge, CHARGE_BODY),
        # Served at /v1/customers/<id>/balance_transactions (_customer_balance_route).
        Resource(
            "customer_balance_transaction", "cbtxn_", _balance_transaction, BALANCE_TRANSACTION_BODY
        ),
        Resource("refund", "re_", _refund, REFUND_BODY, REFUND, "charge payment_intent"),
        Resource("dispute", "dp_", _dispute, DISPUTE_BODY),
        Resource(
            "invoice_payment",
            "inpay_",
            _invoice_payment,
            filters="invoice payment[type] payment[payment_intent]",
        ),
        Resource(
            "invoiceitem",
            "ii_",
            _invoice_item,
            INVOICE_ITEM_BODY,
            INVOICE_ITEM,
            "customer",
            dated=True,
        ),
    )


# Wire helpers


def _fields(spec: str) -> dict[str, Any]:
    """Fields from a spec like `name metadata={} status=active`: null, JSON, else a string."""
    fields: dict[str, Any] = {}
    for word in spec.split():
        name, _, value = word.partition("=")
        try:
            fields[name] = json.loads(value) if value else None
        except ValueError:
            fields[name] = value
    return fields


def _plan(price: dict) -> dict:
    """The legacy plan Stripe still puts beside a subscription item's price."""
    same = "id active billing_scheme created currency livemode metadata nickname product tiers_mode"
    return {
        **{name: price[name] for name in same.split()},
        **price["recurring"],
        "object": "plan",
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "transform_usage": None,
    }


def _rfc3339(seconds: float) -> str:
    """How API v2 writes a time: 2024-06-01T12:00:00.000Z."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _from_rfc3339(value: Any, param: str) -> int:
    valid = isinstance(value, str) and re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", value
    )
    _ensure(valid, f"Invalid timestamp: {value!r}", param)
    return int(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())


def _new_id(prefix: str, length: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def _mask(key: str) -> str:
    """How Stripe echoes a wrong key: its prefix and last four characters only."""
    prefix = re.match(r"((sk|rk|pk)_(test|live)_)?", key).group(0)  # type: ignore[union-attr]
    return prefix + "*" * max(4, len(key) - len(prefix) - 4) + key[-4:]


def _nest(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket notation as nested dicts; numbered (or empty) brackets as lists."""
    root: dict[str, Any] = {}
    for key, value in items:
        match = KEY_PATTERN.match(key)
        if not match:
            raise _Refusal(400, f"Invalid parameter name: {key}", key)
        *path, last = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for part in path:
            node = node.setdefault(part or str(sum(k.isdigit() for k in node)), {})
            _ensure(isinstance(node, dict), "Invalid hash", key)
        last = last or str(sum(k.isdigit() for k in node))
        _ensure(not isinstance(node.get(last), dict), "Invalid hash", key)
        node[last] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(key.isdigit() for key in node):
        return [_listify(node[key]) for key in sorted(node, key=int)]
    return {key: _listify(value) for key, value in node.items()}


def _check_names(items: list[tuple[str, str]], accepted: str) -> None:
    """Refuse a parameter outside `accepted` (bracket names, `[]` any index, `[*]` any key)."""
    names = accepted.split()
    hashes = tuple(name.removesuffix("*]") for name in names if name.endswith("[*]"))
    for key, _ in items:
        name = re.sub(r"\[\d*\]", "[]", key)
        _ensure(name in names or name.startswith(hashes), f"Received unknown parameter: {key}", key)


def _integer(value: Any, param: str, minimum: int | None = None) -> int:
    valid = isinstance(value, str) and re.fullmatch(r"-?\d+", value)
    _ensure(valid, f"Invalid integer: {value}", param)
    _ensure(minimum is None or int(value) >= minimum, f"This value must be >= {minimum}.", param)
    return int(value)


def _boolean(value: Any, param: str) -> bool:
    _ensure(value in ("true", "false"), f"Invalid boolean: {value}", param)
    return value == "true"


def _matches(obj: dict, name: str, value: Any) -> bool:
    if name == "lookup_keys":  # the one filter that takes a list
        return obj["lookup_key"] in value
    if isinstance(value, dict):  # a hash filter: payment[type]=...&payment[payment_intent]=...
        return all(_matches(obj[name], key, item) for key, item in value.items())
    if isinstance(obj[name], bool):
        return obj[name] == _boolean(value, name)
    return obj[name] == value


def _list_object(url: str, data: list[dict], has_more: bool = False) -> dict:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def _page(url: str, objects: list[dict], params: dict, *, kind: str) -> dict:
    """A Stripe list object, newest first (among equal `created`, the later-made first)."""
    limit = _integer(params.get("limit", "10"), "limit")
    _ensure(1 <= limit <= MAX_LIMIT, f"limit must be between 1 and {MAX_LIMIT}.", "limit")
    ordered = sorted(reversed(objects), key=lambda o: o.get("created", o.get("date")), reverse=True)
    ids = [o["id"] for o in ordered]
    start = 0
    if "starting_after" in params:
        if params["starting_after"] not in ids:
            raise _missing(kind, params["starting_after"], "starting_after")
        start = ids.index(params["starting_after"]) + 1
    return _list_object(url, ordered[start : start + limit], start + limit < len(ordered))


def _page_in_order(url: str, objects: list[dict], params: dict, *, kind: str) -> dict:
    """A list object over objects in their own order (invoice lines, summaries)."""
    limit = _integer(params.get("limit", "10"), "limit")
    _ensure(1 <= limit <= MAX_LIMIT, f"limit must be between 1 and {MAX_LIMIT}.", "limit")
    ids = [o["id"] for o in objects]
    start = 0
    if "starting_after" in params:
        if params["starting_after"] not in ids:
            raise _missing(kind, params["starting_after"], "starting_after")
        start = ids.index(params["starting_after"]) + 1
    return _list_object(url, objects[start : start + limit], start + limit < len(objects))


def _peer(request: Request) -> tuple[str, int]:
    return (request.environ.get("REMOTE_ADDR"), request.environ.get("REMOTE_PORT"))


def reset(server: HTTPServer, *, api_key: str = API_KEY) -> FakeStripe:
    """A fresh, empty Stripe account on an already running server."""
    server.clear()
    fake = FakeStripe(server=server, api_key=api_key)
    fake.install()
    return fake
