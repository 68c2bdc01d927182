"""Lists over big tables: counts the planner estimates instead of `COUNT(*)`.

An unfiltered list over millions of rows (daily usage, the credit ledger, billing history,
Stripe events) would spend seconds counting rows to print "1,234,567 results". The
operator needs the page, not the exact figure: for an unfiltered list over a table
PostgreSQL believes holds more than `ESTIMATE_OVER` rows, the count is the planner's
estimate (`pg_class.reltuples`, kept by autovacuum's ANALYZE). A filtered list that the
planner expects to hold more than that many rows (a month of usage) gets the planner's
estimate too (EXPLAIN, no rows read); a narrower one (a user's rows, a search) is counted
exactly.
"""

from __future__ import annotations

import json
from functools import reduce
from operator import or_

from django import template
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ORDER_VAR, ChangeList
from django.core.exceptions import EmptyResultSet
from django.core.paginator import Paginator
from django.db import connection, connections
from django.db.models import Q
from django.utils.functional import cached_property

# Below this many rows an exact count is cheap (milliseconds): count them.
ESTIMATE_OVER = 100_000
# An estimate is shown to this many significant figures ("about 9,000,000"): the planner's
# figure is not exact, and printing every digit would claim it is.
ESTIMATE_FIGURES = 3

register = template.Library()


def count_shown(count: int, *, estimated: bool) -> str:
    """`1,234` for a count; `about 9,000,000` for an estimate (rounded)."""
    if not estimated:
        return f"{count:,}"
    rounded = round(count, ESTIMATE_FIGURES - len(str(abs(int(count))))) if count else 0
    return f"about {int(rounded):,}"


@register.filter
def list_count(changelist) -> str:
    """A changelist's row count as its pages show it (built-in filter: the admin's
    pagination, search and actions templates say "about" for an estimate)."""
    paginator = getattr(changelist, "paginator", None)
    return count_shown(changelist.result_count, estimated=getattr(paginator, "estimated", False))


def table_estimate(model, using: str = "default") -> int | None:
    """The planner's row estimate for the model's table, or None when never analysed."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [model._meta.db_table],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:  # -1: never vacuumed or analysed
        return None
    return row[0]


def is_unfiltered(queryset) -> bool:
    return not queryset.query.where and not queryset.query.combinator


def plan_estimate(queryset) -> int | None:
    """The planner's row estimate for a queryset (EXPLAIN: planning only, no rows read)."""
    try:
        sql, params = queryset.order_by().values("pk").query.sql_with_params()
    except EmptyResultSet:  # e.g. `IN ()`: nothing to count
        return 0
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    """A paginator that counts exactly only what is cheap to count.

    Unfiltered: the table's estimate when it holds more than `estimate_over` rows.
    Filtered: the planner's estimate for the filter when that is more than
    `estimate_over` rows (counting them would read them all), else an exact count.
    `estimated` says whether `count` is an estimate, so a page can say "about"."""

    estimate_over = ESTIMATE_OVER
    estimated = False
    # Optional: (bottom, top) -> the ids of the rows of that page, in order, found by a
    # cheaper path than OFFSET/LIMIT over the list (accounts.admin_search.UserFirstRows).
    page_ids = None

    def page(self, number):
        if self.page_ids is None:
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = min(bottom + self.per_page, self.count)
        if top + self.orphans >= self.count:
            top = self.count
        ids = self.page_ids(bottom, top) if top > bottom else []
        # The list's own query (filters, order, related rows), narrowed to the page's ids.
        rows = self.object_list.filter(pk__in=ids) if ids else self.object_list.none()
        return self._get_page(rows, number, self)

    def shown(self, count: int) -> str:
        return count_shown(count, estimated=self.estimated)

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if hasattr(queryset, "query") and connections[queryset.db].vendor == "postgresql":
            if is_unfiltered(queryset):
                estimate = table_estimate(queryset.model, queryset.db)
            else:
                estimate = plan_estimate(queryset)
            if estimate is not None and estimate > self.estimate_over:
                self.estimated = True
                return estimate
        return super().count


class ExactSearchAdminMixin:
    """The search box matches `search_fields` exactly and case-sensitively (ids, Stripe
    references): `column = 'x'`, which the column's unique or plain index serves. (Django's
    "=field" is `UPPER(column) = UPPER('x')`, which no plain index serves.)"""

    def get_search_results(self, request, queryset, search_term):
        term = (search_term or "").strip()
        if not term:
            return queryset, False
        return queryset.filter(self.exact_search_q(term)), False

    def exact_search_q(self, term) -> Q:
        return reduce(or_, (Q(**{field.lstrip("="): term}) for field in self.search_fields))


class EstimatedCountAdminMixin:
    """Admin lists over big tables: no second `COUNT(*)` of the whole table when filtered
    ("n results (show all)" is not computed) and the planner's estimate when unfiltered."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    # From how many rows this list estimates (None: the paginator's ESTIMATE_OVER): a list
    # whose rows cost more to count (joins, semi-joins) may estimate from fewer.
    estimate_over: int | None = None

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        paginator = super().get_paginator(
            request, queryset, per_page, orphans, allow_empty_first_page
        )
        if self.estimate_over is not None:  # from fewer rows, never from more
            paginator.estimate_over = min(self.estimate_over, paginator.estimate_over)
        return paginator


class IndexedValuesFilter(admin.AllValuesFieldListFilter):
    """A filter offering a column's distinct values, read by skipping through the column's
    index (one probe per value) instead of `SELECT DISTINCT` over every row. The column
    needs a btree index that starts with it (the list's `<column>, newest first` index
    also serves the filtered page)."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        table = connection.ops.quote_name(model._meta.db_table)
        column = connection.ops.quote_name(field.column)
        # Names from the model's metadata, quoted: no user input reaches the statement.
        with connection.cursor() as cursor:
            skip_scan = (
                f"WITH RECURSIVE v(x) AS ("  # noqa: S608
                f" (SELECT {column} FROM {table} WHERE {column} IS NOT NULL"
                f"  ORDER BY {column} LIMIT 1)"
                f" UNION ALL SELECT (SELECT {column} FROM {table} WHERE {column} > v.x"
                f"  ORDER BY {column} LIMIT 1) FROM v WHERE v.x IS NOT NULL"
                f") SELECT x FROM v WHERE x IS NOT NULL"
            )
            cursor.execute(skip_scan)
            self.lookup_choices = [row[0] for row in cursor.fetchall()]


class StrictChoicesFilter(admin.ChoicesFieldListFilter):
    """Django's filter of a field with choices, refusing a value that is not one of them as
    a bad lookup (the admin's "?e=1"). Django hands any value to the database, which on a
    column of an enum type (Procrastinate's job status) is an error, a 500."""

    def queryset(self, request, queryset):
        values = self.used_parameters.get(self.lookup_kwarg)
        if values is not None:
            allowed = {str(value) for value, _ in self.field.flatchoices if value is not None}
            for value in values if isinstance(values, list) else [values]:
                if str(value) not in allowed:
                    raise IncorrectLookupParameters(
                        f"{self.field.verbose_name}: {value!r} is not one of its values"
                    )
        return super().queryset(request, queryset)


def _flip(field: str) -> str:
    return field[1:] if field.startswith("-") else f"-{field}"


class IndexOrderChangeList(ChangeList):
    """A list sorted only in an order an index serves.

    - Only the columns in `sortable_by` sort (Django shows no link for the others, but a
      typed `?o=` would still sort by them): each needs an index leading with its field.
    - Sorted by the field the list's own ordering begins with: that whole ordering, in the
      direction asked (its index read forwards or backwards).
    - Sorted by another column: that field, then the primary key in the same direction
      (Django adds `-pk` whatever the direction, an order no single index serves);
      the column's index is `(field, id)`.
    One column at a time: a second sort column would need an index per combination."""

    def get_ordering(self, request, queryset):
        asked = self.params.get(ORDER_VAR)
        if asked and self.sortable_by is not None:
            kept = [p for p in asked.split(".") if self._may_sort(p)][:1]
            self.params = {k: v for k, v in self.params.items() if k != ORDER_VAR}
            if kept:
                self.params[ORDER_VAR] = kept[0]
        ordering = super().get_ordering(request, queryset)
        first = ordering[0] if ordering else None
        if not isinstance(first, str):
            return ordering
        default = [
            f
            for f in (self.model_admin.get_ordering(request) or self._get_default_ordering())
            if isinstance(f, str)
        ]
        if default and first.lstrip("-") == default[0].lstrip("-"):
            same = first.startswith("-") == default[0].startswith("-")
            chosen = list(default) if same else [_flip(f) for f in default]
        else:
            chosen = [first]
        if len(self._get_deterministic_ordering(list(chosen))) > len(chosen):
            # Not yet a total order: the primary key last, in the first field's direction.
            chosen.append("-pk" if chosen[0].startswith("-") else "pk")
        return chosen

    def _may_sort(self, param: str) -> bool:
        try:
            column = self.list_display[int(param.rpartition("-")[2])]
        except (IndexError, ValueError):
            return False
        return column in self.sortable_by


class IndexOrderAdminMixin:
    """Lists sorted only by indexed columns (`sortable_by`): see IndexOrderChangeList."""

    def get_changelist(self, request, **kwargs):
        return IndexOrderChangeList
