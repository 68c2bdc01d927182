"""A confirmation step for admin actions that change things operators care about.

The action first renders a page listing the selected objects (and an optional form, such as
a reason); only the POST back from that page, with `confirmed=yes`, runs `apply`.
"""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.encoding import escape_uri_path

# Posted by an object page's action button (and carried through the confirmation page):
# the action runs on that one object and the operator comes back to its page.
OBJECT_ACTION = "_object_action"
# What one confirmed action handles while the operator waits: its page lists each object,
# and its work (a close, a suspension, a credit) takes tens of milliseconds per object, so
# "select all" over 100,000 users would outlast the web worker's 30 s. A list page shows
# 100 rows: only a selection across pages can be larger.
IN_REQUEST_LIMIT = 200


def confirm_then(
    modeladmin,
    request,
    queryset,
    *,
    title: str,
    message: str,
    confirm_label: str,
    apply: Callable[[dict], None],
    form_class: type[forms.Form] | None = None,
    describe: Callable[[object], str] | None = None,
):
    """`describe(obj)`, if given, is shown beside each object (what the operator must see
    before confirming); without it, the admin's `describe_for_confirm(obj)` if it has one.
    A selection of more than IN_REQUEST_LIMIT objects is refused with a message, before
    anything is shown or done."""
    selected = queryset.count()
    if selected > IN_REQUEST_LIMIT:
        opts = modeladmin.model._meta
        modeladmin.message_user(
            request,
            f"{title}: {selected:,} {opts.verbose_name_plural} are selected, and this action "
            f"runs while you wait, for at most {IN_REQUEST_LIMIT} at a time. Select fewer "
            "(filter or search the list) and run it again. Nothing was changed.",
            messages.WARNING,
        )
        return None
    form = None
    if request.POST.get("confirmed") == "yes":
        form = form_class(request.POST) if form_class else None
        if form is None or form.is_valid():
            apply(form.cleaned_data if form else {})
            return None  # back to the list, where apply's messages are shown
    elif form_class:
        form = form_class()
    objects = list(queryset)
    on_object_page = request.POST.get(OBJECT_ACTION) == "1"
    describe = describe or getattr(modeladmin, "describe_for_confirm", None)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "message": message,
        "confirm_label": confirm_label,
        "objects": objects,
        "rows": [(obj, describe(obj) if describe else "") for obj in objects],
        "opts": modeladmin.model._meta,
        "action": request.POST.get("action"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "form": form,
        "object_action": on_object_page,
        "cancel_url": escape_uri_path(request.path)
        if on_object_page
        else reverse(admin_urlname(modeladmin.model._meta, "changelist")),
    }
    return TemplateResponse(request, "admin/confirm_action.html", context)


class ObjectActionsMixin:
    """Some of the list's actions as buttons on one object's page (`object_actions`, by
    name). A button posts to the object's page; the action runs on that one object, through
    its own confirmation if it has one, and the operator comes back to the page. Only the
    actions the operator may run (`get_actions`, which checks each action's permissions)
    get a button, and posting any other is refused."""

    object_actions: tuple[str, ...] = ()
    change_form_template = "admin/object_actions_change_form.html"

    def object_action_buttons(self, request) -> list[tuple[str, str]]:
        actions = self.get_actions(request)
        return [(name, actions[name][2]) for name in self.object_actions if name in actions]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "POST" and request.POST.get(OBJECT_ACTION) == "1":
            return self._run_object_action(request, object_id)
        extra_context = {
            **(extra_context or {}),
            "object_action_buttons": self.object_action_buttons(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def _run_object_action(self, request, object_id):
        name = request.POST.get("action", "")
        actions = self.get_actions(request)
        if name not in self.object_actions or name not in actions:
            raise PermissionDenied
        queryset = self.get_queryset(request).filter(pk=unquote(object_id))
        obj = queryset.first()
        if obj is None:
            raise Http404
        if not self.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        response = actions[name][0](self, request, queryset)
        return response or HttpResponseRedirect(escape_uri_path(request.path))
