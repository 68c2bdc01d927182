"""Admin list rows worked out once per column, not once per cell.

Django's `items_for_result` redoes per cell what is the same for the whole page: it looks
each column up on the model (an exception for every computed column), asks the admin for
its empty value, reverses the change URL, resolves that URL again to merge the preserved
filters into it, and renders each row's checkbox through the form-widget templates. On a
page of 100 rows of 10 columns that was about half of the page's time.

`result_list` (the `{% fast_result_list cl %}` tag of templates/admin/change_list.html)
gives the same context as Django's `result_list`, and the same HTML, from a plan made once
per page: per column its kind, classes, link and empty value; the change URL and the
preserved filters as a prefix and suffix around the quoted primary key; the checkbox as one
`format_html`. Each row is one string (the template joins a row's cells with nothing in
between). Editable lists (`list_editable`) and popups keep Django's own rendering.
"""

from __future__ import annotations

import datetime
from urllib.parse import quote as url_quote

from django import template
from django.contrib.admin import helpers
from django.contrib.admin.options import ModelAdmin
from django.contrib.admin.templatetags import admin_list as django_list
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.contrib.admin.utils import (
    FieldIsAForeignKeyColumnName,
    _get_non_gfk_field,
    display_for_field,
    display_for_value,
    lookup_field,
    quote,
)
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import FieldDoesNotExist, ObjectDoesNotExist
from django.db import models
from django.urls import NoReverseMatch, reverse
from django.urls.resolvers import RFC3986_SUBDELIMS
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _

from plumbing.markup import conditional_escape, escape, format_html

register = template.Library()

# A primary key's place in the change URL: reversed once per page, then replaced per row.
PK_MARK = "0pk0mark0"
URL_SAFE = RFC3986_SUBDELIMS + "/~:@"  # what `reverse()` leaves unquoted

FIELD, CALLABLE, ADMIN, CHECKBOX, OTHER = range(5)


class _Column:
    """One `list_display` entry, looked up once per page."""

    __slots__ = (
        "attr",
        "boolean",
        "choices",
        "classes",
        "empty",
        "field",
        "kind",
        "link",
        "memo",
        "name",
        "nowrap",
        "related",
        "tag",
    )

    def __init__(self, name, index, *, model, model_admin, empty, link, tag):
        self.name, self.link, self.tag = name, link, tag
        self.empty = empty
        self.field = self.attr = self.choices = self.memo = None
        self.boolean = self.related = self.nowrap = False
        self.classes = f"field-{django_list._coerce_field_name(name, index)}"
        try:
            self.field = _get_non_gfk_field(model._meta, name)
        except (FieldDoesNotExist, FieldIsAForeignKeyColumnName):
            if callable(name):
                self.kind, self.attr = CALLABLE, name
            elif hasattr(model_admin, name) and name != "__str__":
                self.attr = getattr(model_admin, name)
                own = getattr(type(model_admin), name, None) is ModelAdmin.action_checkbox
                self.kind = CHECKBOX if own else ADMIN
            else:
                self.kind = OTHER  # a model attribute or a `__` lookup: Django's per row
                return
            self.empty = getattr(self.attr, "empty_value_display", empty)
            self.boolean = getattr(self.attr, "boolean", False)
            if name == "action_checkbox":
                self.classes = "action-checkbox"
            return
        self.kind = FIELD
        field = self.field
        if field.auto_created:
            return
        self.related = isinstance(field.remote_field, models.ManyToOneRel)
        self.nowrap = isinstance(field, (models.DateField, models.TimeField, models.ForeignKey))
        if isinstance(field, (models.DateField, models.TimeField)):
            # A date is formatted once per page (a page of usage is mostly one day):
            # display_for_field of the same value, in the same language and time zone.
            self.memo = {}
        if not self.related and getattr(field, "flatchoices", None):
            try:
                self.choices = dict(field.flatchoices)
            except TypeError:  # list-like choices: Django's own lookup per cell
                self.choices = None


class RowPlan:
    """What is the same for every row of a changelist page."""

    def __init__(self, cl: ChangeList):
        self.cl = cl
        model_admin = cl.model_admin
        self.model = cl.model
        empty = model_admin.get_empty_value_display()
        self.empty = empty
        self.columns = []
        first = True
        for index, name in enumerate(cl.list_display):
            link = self._link_in_col(first, name)
            tag = "td"
            if link:
                tag = "th" if first else "td"
                first = False
            self.columns.append(
                _Column(
                    name,
                    index,
                    model=self.model,
                    model_admin=model_admin,
                    empty=empty,
                    link=link,
                    tag=tag,
                )
            )
        self.icons = {}
        self.url_parts = self._url_parts()
        self.checkbox_label = _("Select this object for an action - {}")

    def _link_in_col(self, is_first, field_name) -> bool:
        cl = self.cl
        if cl.list_display_links is None:
            return False
        if is_first and not cl.list_display_links:
            return True
        return field_name in cl.list_display_links

    def _url_parts(self):
        """(before, after) the quoted primary key in a row's link, preserved filters
        included; None when the change URL does not reverse (Django shows no link)."""
        cl = self.cl
        if type(cl).url_for_result is not ChangeList.url_for_result:
            return None  # a list with its own URLs: asked per row
        try:
            url = reverse(
                f"admin:{cl.opts.app_label}_{cl.opts.model_name}_change",
                args=(PK_MARK,),
                current_app=cl.model_admin.admin_site.name,
            )
        except NoReverseMatch:
            return False
        url = add_preserved_filters(
            {"preserved_filters": cl.preserved_filters, "opts": cl.opts}, url
        )
        before, mark, after = url.partition(PK_MARK)
        if not mark or PK_MARK in after:
            return None
        return before, after

    def url(self, result) -> str | None:
        """The row's link (preserved filters included), or None for no link."""
        parts = self.url_parts
        if parts is None:  # Django's way
            cl = self.cl
            try:
                url = cl.url_for_result(result)
            except NoReverseMatch:
                return None
            return add_preserved_filters(
                {"preserved_filters": cl.preserved_filters, "opts": cl.opts}, url
            )
        if parts is False:
            return None
        key = str(quote(getattr(result, self.cl.pk_attname)))
        if not key:  # `<path:object_id>` needs a character: no URL
            return None
        return parts[0] + url_quote(key, safe=URL_SAFE) + parts[1]

    def icon(self, value):
        if value is True or value is False or value is None:
            if value not in self.icons:
                self.icons[value] = django_list._boolean_icon(value)
            return self.icons[value]
        return django_list._boolean_icon(value)

    def checkbox(self, result):
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(result.pk),
            format_html(self.checkbox_label, str(result)),
        )

    def cell(self, column: _Column, result):
        """(HTML of the value, extra class or None), as Django's `items_for_result`."""
        kind = column.kind
        try:
            if kind == CHECKBOX:
                return self.checkbox(result), None
            if kind == FIELD:
                field, attr, value = column.field, None, getattr(result, column.name)
            elif kind in (ADMIN, CALLABLE):
                field, attr, value = None, column.attr, column.attr(result)
            else:
                field, attr, value = lookup_field(column.name, result, self.cl.model_admin)
        except ObjectDoesNotExist:
            return self.empty, None
        if isinstance(value, str) and value.strip() == "":
            value = ""
        if field is None or field.auto_created:
            if kind == OTHER:
                empty = getattr(attr, "empty_value_display", self.empty)
                boolean = getattr(attr, "boolean", False)
                if isinstance(attr, property) and hasattr(attr, "fget"):
                    boolean = getattr(attr.fget, "boolean", False)
            else:
                empty, boolean = column.empty, column.boolean
            shown = self.icon(value) if boolean else display_for_value(value, empty)
            extra = "nowrap" if isinstance(value, (datetime.date, datetime.time)) else None
            return shown, extra
        extra = "nowrap" if column.nowrap else None
        if column.related:
            field_value = getattr(result, field.name)
            return (self.empty if field_value is None else field_value), extra
        if column.choices is not None:
            try:
                return column.choices.get(value, self.empty), extra
            except TypeError:  # an unhashable value: Django's own lookup
                pass
        elif isinstance(field, models.BooleanField):
            return self.icon(value), extra
        memo = column.memo
        if memo is not None:
            shown = memo.get(value)
            if shown is None:
                shown = memo[value] = display_for_field(
                    value, field, self.empty, avoid_link=column.link
                )
            return shown, extra
        return display_for_field(value, field, self.empty, avoid_link=column.link), extra

    def row(self, result) -> str:
        """The row's cells, as one string of HTML."""
        if type(result) is not self.model:
            return "".join(django_list.items_for_result(self.cl, result, None))
        cells = []
        for column in self.columns:
            shown, extra = self.cell(column, result)
            classes = f"{column.classes} {extra}" if extra else column.classes
            html = conditional_escape(shown)
            if column.link:
                url = self.url(result)
                if url is not None:
                    html = f'<a href="{escape(url)}">{html}</a>'
            cells.append(f'<{column.tag} class="{classes}">{html}</{column.tag}>')
        return "".join(cells)


def results(cl):
    if cl.formset or cl.is_popup:
        yield from django_list.results(cl)
        return
    plan = RowPlan(cl)
    for result in cl.result_list:
        # Each cell's value went through conditional_escape, as in format_html.
        yield django_list.ResultList(None, [mark_safe(plan.row(result))])  # noqa: S308


def result_list(cl):
    """Django's `result_list` context, the rows from `results` above."""
    headers = list(django_list.result_headers(cl))
    return {
        "cl": cl,
        "result_hidden_fields": list(django_list.result_hidden_fields(cl)),
        "result_headers": headers,
        "num_sorted_fields": sum(1 for h in headers if h["sortable"] and h["sorted"]),
        "results": list(results(cl)),
    }


@register.tag(name="fast_result_list")
def result_list_tag(parser, token):
    return InclusionAdminNode(
        parser,
        token,
        func=result_list,
        template_name="change_list_results.html",
        takes_context=False,
    )
