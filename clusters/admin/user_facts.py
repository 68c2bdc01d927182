"""Where a user is placed, read once per request for a user's admin page (the placement
section and the console's summary and timeline show it): see plumbing.memo."""

from __future__ import annotations

from clusters import selectors
from plumbing.memo import once


def placement(user) -> selectors.PlacementState:
    return once(user, "clusters.placement", lambda: selectors.placement_of(user))
