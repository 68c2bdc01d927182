"""What an admin action tells the operator: per object, done, queued, unchanged or not done
(with the reason), then one summary line.

The summary is green (success) only when every object was done; queued work is blue (info:
it has not happened yet, the Jobs list shows when it does); anything not done makes it a
warning. An action never ends with a green "0 done".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib import messages
from django.utils.html import format_html

# Above this many objects of one kind, their lines are summed up rather than listed.
LISTED = 20


@dataclass
class ActionReport:
    """Collect what happened to each object, then `send` it. `noun` names the objects
    ("user", "cluster"): the summary says "2 users done"."""

    noun: str
    done_lines: list[str] = field(default_factory=list)
    queued_lines: list[str] = field(default_factory=list)
    unchanged_lines: list[str] = field(default_factory=list)
    not_done_lines: list[str] = field(default_factory=list)
    watch: str = ""  # HTML link to where queued work can be watched

    def done(self, obj, what: str) -> None:
        self.done_lines.append(f"{obj}: {what}")

    def queued(self, obj, what: str) -> None:
        self.queued_lines.append(f"{obj}: {what}")

    def unchanged(self, obj, why: str) -> None:
        """Nothing needed doing (already so): neither a change nor a failure."""
        self.unchanged_lines.append(f"{obj}: {why}")

    def not_done(self, obj, reason) -> None:
        self.not_done_lines.append(f"{obj}: not done: {reason}")

    def watch_jobs(self, task_name: str) -> None:
        from django.urls import reverse

        url = reverse("admin:procrastinate_procrastinatejob_changelist") + f"?task_name={task_name}"
        self.watch = format_html('<a href="{}">watch them in Jobs</a>', url)

    @property
    def level(self) -> int:
        if self.not_done_lines or not (
            self.done_lines or self.queued_lines or self.unchanged_lines
        ):
            return messages.WARNING
        if self.queued_lines:
            return messages.INFO
        return messages.SUCCESS

    def summary(self) -> str:
        def count(lines, what):
            n = len(lines)
            return f"{n} {self.noun}{'' if n == 1 else 's'} {what}" if n else ""

        parts = [
            count(self.done_lines, "done"),
            count(self.queued_lines, "queued"),
            count(self.unchanged_lines, "unchanged"),
            count(self.not_done_lines, "not done"),
        ]
        text = ", ".join(p for p in parts if p) or f"No {self.noun}s selected"
        return text + "."

    def send(self, modeladmin, request) -> None:
        for lines, level in (
            (self.not_done_lines, messages.WARNING),
            (self.done_lines, messages.INFO),
            (self.queued_lines, messages.INFO),
            (self.unchanged_lines, messages.INFO),
        ):
            for line in lines[:LISTED]:
                modeladmin.message_user(request, line, level)
            if len(lines) > LISTED:
                modeladmin.message_user(request, f"... and {len(lines) - LISTED} more.", level)
        summary = self.summary()
        if self.queued_lines and self.watch:
            summary = format_html("{} Queued work: {}.", summary, self.watch)
        modeladmin.message_user(request, summary, self.level)
