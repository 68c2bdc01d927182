"""Auth0's log stream (a Custom Webhook stream, content format "JSON Array"): Auth0 POSTs
batches of tenant log entries, each `{"log_id": ..., "data": {"type": ..., "user_id": ...,
"date": ..., ...}}`, at least once and in no promised order. A successful user deletion
(`sdu`) closes that user's account (actor "auth0", from the time Auth0 logged it): the
user deleted in Auth0 has left. Other types are counted and dropped.

Each deletion is stored by its unique log id (`Auth0LogEvent`) in the transaction that acts
on it, so a redelivered entry has one effect; one about a user we do not know is kept as
`unknown_user` for an operator to look at.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from billing.closing import AccountCloseRefused, account_close
from billing.models import AccountClosure, Auth0LogEvent

USER_DELETED = "sdu"
MAX_ID_LENGTH = 512


class BadLogStreamPayload(ValueError):
    """Not a batch of Auth0 log entries; nothing was written. The message says why."""


@dataclass(frozen=True)
class LogEntry:
    log_id: str
    type: str
    user_id: str
    date: dt.datetime | None


@dataclass
class Outcome:
    closed: int = 0
    duplicates: int = 0
    ignored: int = 0
    unknown_users: int = 0
    refused: list[str] = field(default_factory=list)


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH or "\x00" in value:
        raise BadLogStreamPayload(f"{what} must be a non-empty string of at most 512 characters.")
    return value


def log_entries_parse(payload: bytes) -> list[LogEntry]:
    """Every entry of the batch, or BadLogStreamPayload for anything that is not one."""
    try:
        batch = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadLogStreamPayload(f"The body is not JSON: {error}") from None
    if not isinstance(batch, list):
        raise BadLogStreamPayload('Expected a JSON array of log entries (format "JSON Array").')
    entries = []
    for index, item in enumerate(batch):
        where = f"entry {index}"
        if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
            raise BadLogStreamPayload(f"{where} is not an object with a `data` object.")
        data = item["data"]
        log_id = _text(item.get("log_id") or data.get("log_id"), f"{where}: log_id")
        kind = _text(data.get("type"), f"{where}: data.type")
        user_id, date = "", None
        if kind == USER_DELETED:
            details = data.get("details") if isinstance(data.get("details"), dict) else {}
            user_id = _text(data.get("user_id") or details.get("user_id"), f"{where}: user_id")
            if data.get("date") is not None:
                date = parse_datetime(data["date"]) if isinstance(data["date"], str) else None
                if date is None or date.tzinfo is None:
                    raise BadLogStreamPayload(f"{where}: data.date is not an ISO 8601 time.")
        entries.append(LogEntry(log_id=log_id, type=kind, user_id=user_id, date=date))
    return entries


def log_entries_apply(entries: list[LogEntry]) -> Outcome:
    """Close the account of each user deleted in Auth0 (once per log entry)."""
    outcome = Outcome()
    for entry in entries:
        if entry.type != USER_DELETED:
            outcome.ignored += 1
            continue
        try:
            with transaction.atomic():
                _apply(entry, outcome)
        except IntegrityError:  # the same entry, delivered twice at the same moment
            outcome.duplicates += 1
    return outcome


def _apply(entry: LogEntry, outcome: Outcome) -> None:
    if Auth0LogEvent.objects.filter(pk=entry.log_id).exists():
        outcome.duplicates += 1
        return
    record = Auth0LogEvent(log_id=entry.log_id, type=entry.type, user_id=entry.user_id)
    user = User.objects.filter(pk=entry.user_id).first()
    if user is None:
        record.outcome = Auth0LogEvent.Outcome.UNKNOWN_USER
        outcome.unknown_users += 1
    elif AccountClosure.objects.filter(user=user).exists():
        record.outcome = Auth0LogEvent.Outcome.ALREADY_CLOSED
        outcome.duplicates += 1
    else:
        now = timezone.now()
        closed_at = min(entry.date, now) if entry.date else now
        try:
            with transaction.atomic():
                account_close(
                    user=user,
                    actor="auth0",
                    reason=f"User deleted in Auth0 (log {entry.log_id})",
                    closed_at=closed_at,
                )
        except AccountCloseRefused as error:
            record.outcome, record.detail = Auth0LogEvent.Outcome.REFUSED, str(error)
            outcome.refused.append(f"{entry.user_id}: {error}")
        else:
            record.outcome = Auth0LogEvent.Outcome.CLOSED
            outcome.closed += 1
    record.save(force_insert=True)
