"""A confirmation step for admin actions that change things operators care about.

The action first renders a page listing the selected objects (and an optional form, such as
a reason); only the POST back from that page, with `confirmed=yes`, runs `apply`.
"""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib.admin import helpers
from django.template.response import TemplateResponse


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
    before confirming)."""
    form = None
    if request.POST.get("confirmed") == "yes":
        form = form_class(request.POST) if form_class else None
        if form is None or form.is_valid():
            apply(form.cleaned_data if form else {})
            return None  # back to the list, where apply's messages are shown
    elif form_class:
        form = form_class()
    objects = list(queryset)
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
    }
    return TemplateResponse(request, "admin/confirm_action.html", context)
