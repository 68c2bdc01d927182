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
"""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Q

from accounts import selectors
from plumbing.admin_lists import ExactSearchAdminMixin


class UserFirstSearchMixin(ExactSearchAdminMixin):
    """`search_fields` lists the model's own columns matched exactly (references, Stripe
    ids); `user_field` names the foreign key to users."""

    user_field = "user"
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
        if self.search_fields:
            own = self.exact_search_q(term)
            match = own if match is None else match | own
        return (queryset.none() if match is None else queryset.filter(match)), False
