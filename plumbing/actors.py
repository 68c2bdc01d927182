"""Who did it: one way to name the cause of a change in logs and records."""

from __future__ import annotations


def actor_label(actor) -> str:
    """Who or what caused a change, for logs and records: an operator's email, a
    command's or key's name, or "system"."""
    if actor is None:
        return "system"
    return getattr(actor, "email", None) or str(actor)
