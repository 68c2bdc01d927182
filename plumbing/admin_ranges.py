"""The from-to date filter of every dated admin list (django-admin-rangefilter).

Whole days in the operator's zone, both ends included. A date that is not one is named in
a message and the list shows nothing (never every row, as if the range had been applied);
an export of such a list is refused (plumbing/admin_export.py).
"""

from __future__ import annotations

from django.contrib import messages
from rangefilter.filters import DateRangeFilter


class DateRange(DateRangeFilter):
    def queryset(self, request, queryset):
        if self.is_invalid():
            said = request.__dict__.setdefault("_date_range_messages", set())
            if self.field_path not in said:  # the changelist asks more than once
                said.add(self.field_path)
                messages.error(request, self.invalid_message())
            return queryset.none()
        return super().queryset(request, queryset)

    def is_invalid(self) -> bool:
        return self.form.is_bound and not self.form.is_valid()

    def invalid_message(self) -> str:
        bad = [
            f"{'from' if name == self.lookup_kwarg_gte else 'to'} {self.form.data.get(name)!r}"
            for name in self.form.errors
        ]
        return (
            f"The {self.title} range is not applied: {' and '.join(bad)} is not a valid date "
            "(write it as YYYY-MM-DD). Nothing is shown until it is corrected."
        )


def date_range(field: str) -> tuple[str, type[DateRange]]:
    """A `list_filter` entry: `date_range("created_at")`."""
    return (field, DateRange)
