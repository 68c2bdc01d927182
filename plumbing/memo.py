"""Facts read once per page: a value kept on the model instance the page was built for.

A page made of sections from several apps (a user's admin page: at a glance, placement,
billing, spending, the timeline) shows the same facts in several places. Each section asks
`once(obj, key, read)`; the first asks the database, the others get that answer. The
instance is the one the view read for this request, so nothing outlives the request.
Only for pages: a service that writes must read afresh, never through this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_ATTRIBUTE = "_read_once"


def once(obj, key: str, read: Callable[[], T]) -> T:
    """`read()` the first time `key` is asked of this instance; the same value after."""
    facts = obj.__dict__.setdefault(_ATTRIBUTE, {})
    if key not in facts:
        facts[key] = read()
    return facts[key]
