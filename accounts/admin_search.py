"""Searching lists of rows that belong to a user (usage, ledger, invoices, ...) by the user.

The search box resolves the user first, on the users table and its indexes, and then
filters the big table on `user_id`, which its `(user_id, ...)` index serves. Joining the
big table to users and matching `UPPER(email) LIKE '%x%'` on every row (Django's default
for `user__email`) scans millions of rows.

- An exact email (any case), user id (Auth0 id) or Stripe customer id: that user's rows.
- Anything else: the model admin's own `search_fields` matched exactly (references,
  Stripe ids: ExactSearchAdminMixin), together with the rows of the users whose email or
  name contains the term (at most `accounts.selectors.PARTIAL_USERS_MAX` users; past that
  the page says so).

A list whose order an index per user serves (`user_first_order`: its ordering, e.g.
`("-created_at", "-id")`, with an index `(user, created_at DESC, id DESC)`, or a user's
few rows) reads a partial search's page through that index: each matching user's
newest rows (a LATERAL walk of the index), merged, then the page's rows by id. Without it
PostgreSQL walks the whole table newest first, filtering on the users (40,000 rows for a
page of the ledger at 1.85M entries, all of them when the users' rows are old).
"""

from __future__ import annotations

from django.contrib import messages
from django.db import connections
from django.db.models import Q

from accounts import selectors
from plumbing.admin_lists import ExactSearchAdminMixin


class UserFirstSearchMixin(ExactSearchAdminMixin):
    """`search_fields` lists the model's own columns matched exactly (references, Stripe
    ids); `user_field` names the foreign key to users."""

    user_field = "user"
    # The list's ordering (Django's terms, as the changelist orders it) when an index that
    # starts with the user serves it per user: a partial search then reads its page per
    # user through it (see above).
    user_first_order: tuple[str, ...] = ()
    search_help_text = (
        "An exact email, user id or Stripe customer id; or part of an email or name; "
        "or an exact reference."
    )

    def get_search_fields(self, request):
        # Django shows the search box only for a list with search fields.
        return self.search_fields or (self.user_field,)

    def get_search_results(self, request, queryset, search_term):
        term = (search_term or "").strip()
        if not term:
            return queryset, False
        column = f"{self.user_field}_id__in"
        exact = selectors.users_exact(term)
        if exact:
            return queryset.filter(**{column: exact}), False
        partial, more = selectors.users_partial(term)
        if more:
            most = selectors.PARTIAL_USERS_MAX
            messages.warning(
                request,
                f"More than {most} users match {term!r}: showing the rows of the first "
                f"{most} by email. Type more of the email or name.",
            )
        match = Q(**{column: partial}) if partial else None
        own = self.exact_search_q(term) if self.search_fields else None
        if own is not None:
            match = own if match is None else match | own
        if match is None:
            return queryset.none(), False
        if self.user_first_order and not queryset.query.where:  # the search alone narrows
            request.user_first_rows = UserFirstRows(self.model, self.user_field, partial, own)
        return queryset.filter(match), False

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        paginator = super().get_paginator(
            request, queryset, per_page, orphans, allow_empty_first_page
        )
        rows = getattr(request, "user_first_rows", None)
        order = tuple(queryset.query.order_by)
        if rows is not None and order == tuple(self.user_first_order):
            paginator.page_ids = lambda bottom, top: rows.page_ids(order, bottom, top)
        return paginator


class UserFirstRows:
    """The rows a partial search matches (its users' rows, and the rows whose own fields
    equal the term), read per user through an index that starts with the user."""

    def __init__(self, model, user_field: str, user_ids: list[str], own: Q | None):
        self.model, self.user_ids, self.own = model, user_ids, own
        self.user_column = model._meta.get_field(user_field).column

    def page_ids(self, order: tuple[str, ...], bottom: int, top: int) -> list:
        """The ids of the rows ranked bottom..top-1 in `order` (Django's ordering terms):
        each user's first `top` rows by their index, merged with the rows matched by their
        own fields."""
        meta = self.model._meta
        quote = connections[self.model.objects.db].ops.quote_name
        table = quote(meta.db_table)
        names = [meta.pk.name if t.lstrip("-") == "pk" else t.lstrip("-") for t in order]
        if meta.pk.name not in names:
            names.append(meta.pk.name)  # carried along, to be returned
        columns = [quote(meta.get_field(name).column) for name in names]
        pk = quote(meta.pk.column)
        keys = ", ".join(columns)
        by = ", ".join(
            f"{column} DESC" if term.startswith("-") else column
            for column, term in zip(columns, order, strict=False)
        )
        # Names from the model's metadata, quoted; values are parameters.
        per_user = (
            f"SELECT r.* FROM unnest(%s::text[]) AS u(user_id) CROSS JOIN LATERAL ("  # noqa: S608
            f"SELECT {keys} FROM {table} WHERE {quote(self.user_column)} = u.user_id"
            f" ORDER BY {by} LIMIT %s) r"
        )
        parts = [per_user]
        params: list = [self.user_ids, top]
        if self.own is not None:
            own_sql, own_params = (
                self.model.objects.filter(self.own)
                .order_by()
                .values_list(*names)
                .query.sql_with_params()
            )
            parts.append(own_sql)
            params += own_params
        union = " UNION ".join(f"({part})" for part in parts)
        sql = (
            f"SELECT {pk} FROM ({union}) AS s({keys})"  # noqa: S608
            f" ORDER BY {by} OFFSET %s LIMIT %s"
        )
        with connections[self.model.objects.db].cursor() as cursor:
            cursor.execute(sql, [*params, bottom, top - bottom])
            return [row[0] for row in cursor.fetchall()]
