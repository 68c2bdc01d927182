"""Auth0's log stream (a Custom Webhook stream, content format "JSON Array"): Auth0 POSTs
batches of tenant log entries, each `{"log_id": ..., "data": {"type": ..., "user_id": ...,
"date": ..., ...}}`, at least once and in no promised order. A successful user deletion
(`sdu`) closes that user's account (actor "auth0", from the time Auth0 logged it): the
user deleted in Auth0 has left. Other types are counted and dropped.

Each deletion is stored by its unique log id (`Auth0LogEvent`, `pending`) and answered at
once; a job (`billing.apply_auth0_log_events`) then acts on the stored ones, each in its
own transaction with its outcome, so a redelivered entry has one effect and a delivery of
thousands of deletions does not hold the web request (Auth0's advice: queue, answer 2xx).
One about a user we do not know is kept as `unknown_user` for an operator to look at.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from billing.closing import AccountCloseRefused, account_close
from billing.models import AccountClosure, Auth0LogEvent
from plumbing.jobs import defer

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
    queued: int = 0
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


def log_entries_store(entries: list[LogEntry]) -> Outcome:
    """Store each user deletion not seen before as `pending` (one statement for the batch)
    and queue the job that applies them; count the rest as duplicates or ignored."""
    from billing.tasks import apply_auth0_log_events  # tasks import this module

    outcome = Outcome()
    deletions: dict[str, LogEntry] = {}
    for entry in entries:
        if entry.type != USER_DELETED:
            outcome.ignored += 1
        elif entry.log_id in deletions:
            outcome.duplicates += 1
        else:
            deletions[entry.log_id] = entry
    with transaction.atomic():
        known = set(
            Auth0LogEvent.objects.filter(pk__in=list(deletions)).values_list("pk", flat=True)
        )
        new = [entry for log_id, entry in deletions.items() if log_id not in known]
        outcome.duplicates += len(known)
        # A concurrent delivery of the same entry: its row wins, ours is skipped.
        Auth0LogEvent.objects.bulk_create(
            [
                Auth0LogEvent(
                    log_id=entry.log_id,
                    type=entry.type,
                    user_id=entry.user_id,
                    occurred_at=entry.date,
                    outcome=Auth0LogEvent.Outcome.PENDING,
                )
                for entry in new
            ],
            ignore_conflicts=True,
        )
        outcome.queued = len(new)
        if new:
            defer(apply_auth0_log_events, queueing_lock="auth0-log-events")
    return outcome


def log_events_apply(*, limit: int = 100) -> Outcome:
    """Act on stored deletions still `pending`, oldest first, each in its own transaction
    (an event another worker holds is skipped), until none is left. One that fails stays
    pending, the others go on, and the failures are raised at the end (the job fails and
    its periodic run tries them again)."""
    outcome, failed = Outcome(), {}
    while True:
        batch = list(
            Auth0LogEvent.objects.filter(outcome=Auth0LogEvent.Outcome.PENDING)
            .exclude(pk__in=list(failed))
            .order_by("received_at", "log_id")
            .values_list("pk", flat=True)[:limit]
        )
        if not batch:
            break
        for log_id in batch:
            try:
                with transaction.atomic():
                    record = (
                        Auth0LogEvent.objects.select_for_update(skip_locked=True)
                        .filter(pk=log_id, outcome=Auth0LogEvent.Outcome.PENDING)
                        .first()
                    )
                    if record is not None:
                        _apply(record, outcome)
                    else:
                        failed[log_id] = None  # another worker's: not ours to retry now
            except Exception as error:  # kept pending, raised below
                failed[log_id] = error
    errors = {log_id: error for log_id, error in failed.items() if error is not None}
    if errors:
        raise LogEventsFailed(
            f"{len(errors)} Auth0 deletion(s) not applied (kept pending): "
            + "; ".join(f"{log_id}: {type(e).__name__}: {e}" for log_id, e in errors.items())
        )
    return outcome


class LogEventsFailed(Exception):
    """Some stored deletions could not be applied; they stay pending."""


def _apply(record: Auth0LogEvent, outcome: Outcome) -> None:
    user = User.objects.filter(pk=record.user_id).first()
    if user is None:
        record.outcome = Auth0LogEvent.Outcome.UNKNOWN_USER
        outcome.unknown_users += 1
    elif AccountClosure.objects.filter(user=user).exists():
        record.outcome = Auth0LogEvent.Outcome.ALREADY_CLOSED
        outcome.duplicates += 1
    else:
        now = timezone.now()
        closed_at = min(record.occurred_at, now) if record.occurred_at else now
        try:
            with transaction.atomic():
                account_close(
                    user=user,
                    actor="auth0",
                    reason=f"User deleted in Auth0 (log {record.log_id})",
                    closed_at=closed_at,
                )
        except AccountCloseRefused as error:
            record.outcome, record.detail = Auth0LogEvent.Outcome.REFUSED, str(error)
            outcome.refused.append(f"{record.user_id}: {error}")
        else:
            record.outcome = Auth0LogEvent.Outcome.CLOSED
            outcome.closed += 1
    record.save(update_fields=["outcome", "detail"])
