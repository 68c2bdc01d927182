"""Regenerate tests/fakes/stripe_fields.json from Stripe's published example objects.

Run by hand, with `fixtures3.json` from Stripe's public OpenAPI repository
(github.com/stripe/openapi, openapi/fixtures3.json):

    python tests/fakes/refresh_stripe_fields.py path/to/fixtures3.json

The tests read only the JSON this writes (test_stripe_fake_shapes.py): the field names of
each object the fake makes, at the levels our code reads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUTPUT = Path(__file__).with_name("stripe_fields.json")

# Name in stripe_fields.json -> (resource in fixtures3.json, keys down to the object).
SHAPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "customer": ("customer", ()),
    "checkout.session": ("checkout.session", ()),
    "billing.meter": ("billing.meter", ()),
    "billing.meter_event": ("billing.meter_event", ()),
    "product": ("product", ()),
    "price": ("price", ()),
    "price.recurring": ("price", ("recurring",)),
    "subscription": ("subscription", ()),
    "subscription_item": ("subscription_item", ()),
    "plan": ("plan", ()),
    "invoice": ("invoice", ()),
    "line_item": ("line_item", ()),
    "line_item.period": ("line_item", ("period",)),
    "list": ("subscription", ("items",)),
    "credit_note": ("credit_note", ()),
    "charge": ("charge", ()),
    "refund": ("refund", ()),
    "dispute": ("dispute", ()),
    "invoice_payment": ("invoice_payment", ()),
    "billing.meter_event_summary": ("billing.meter_event_summary", ()),
    "invoiceitem": ("invoiceitem", ()),
    "invoiceitem.period": ("invoiceitem", ("period",)),
    "customer_balance_transaction": ("customer_balance_transaction", ()),
    "event": ("event", ()),
    "event.data": ("event", ("data",)),
    "event.request": ("event", ("request",)),
}


def fields(resources: dict, resource: str, keys: tuple[str, ...]) -> list[str]:
    node = resources[resource]
    for key in keys:
        node = node[key]
    return sorted(node)


def main(source: str) -> None:
    resources = json.loads(Path(source).read_text())["resources"]
    shapes = {name: fields(resources, *where) for name, where in SHAPES.items()}
    # A list object is a list object, whichever example it is taken from.
    if shapes["list"] != fields(resources, "invoice", ("lines",)):
        raise SystemExit("Stripe's examples disagree on the fields of a list object")
    lines = [f"  {json.dumps(name)}: {json.dumps(names)}" for name, names in shapes.items()]
    OUTPUT.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one shape a line
    print(f"wrote {OUTPUT} ({len(shapes)} shapes)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
