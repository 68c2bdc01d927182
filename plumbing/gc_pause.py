"""Pausing Python's cyclic garbage collector around a short burst of allocations.

A cluster-day's collection makes about a million short-lived objects (OpenCost's answer
parsed, a record per user), none of them in a reference cycle: reference counting frees
them. Yet each time enough of them are alive, the collector walks them, and a full
collection walks the whole heap besides (bench/README.md, "Collection, third pass"). While
paused, nothing is walked; cycles made meanwhile wait for the next collection after it.

The collector is one per process, so the pause is shared: it lasts while any holder is
inside, and a collection runs on a holder's way out once a pause has lasted `MAX_PAUSE`
seconds, so that holders overlapping without end (several worker threads collecting one
day after another) cannot keep it off for good. A collector disabled before the first
holder came in stays disabled.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MAX_PAUSE = 30.0

_lock = threading.Lock()
_holders = 0
_was_enabled = False
_collected_at = 0.0


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    global _holders, _was_enabled, _collected_at
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            _collected_at = time.monotonic()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        overdue = False
        with _lock:
            _holders -= 1
            if _holders == 0:
                if _was_enabled:
                    gc.enable()
            elif _was_enabled and time.monotonic() - _collected_at > MAX_PAUSE:
                overdue = True
                _collected_at = time.monotonic()
        if overdue:
            gc.collect()
