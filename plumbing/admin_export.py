"""CSV and XLSX exports of what an admin list shows: its filters, search, date range and
ordering, every row (not one page), streamed.

Columns are django-import-export Resources (`export_resource_class`); the writing is ours,
because import-export's admin export builds the whole file in memory (a tablib Dataset)
before sending it. Here rows come from a server-side cursor (in a transaction, so also
behind the transaction pooler) in chunks of EXPORT_CHUNK_SIZE: CSV is sent as it is
read; XLSX is written by openpyxl's write-only workbook to a temporary file, then
streamed from it.

Values: money and quantities as exact decimals (every stored place, no `$` or separators),
dates ISO 8601, times ISO 8601 in UTC. Text that a spreadsheet would run as a formula
(starting with = + - @, tab or carriage return) is prefixed with `'`.
"""

from __future__ import annotations

import csv
import datetime as dt
import tempfile
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import FileResponse, Http404, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.text import slugify
from import_export import resources

from plumbing.admin_ranges import DateRange

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Excel keeps 15 significant digits of a number: a longer decimal goes in as text.
EXCEL_DIGITS = 15
CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class ExportResource(resources.ModelResource):
    """Columns of an export. Values stay native (Decimal, date, aware datetime) until the
    writer turns them into cells, rather than through import-export's widgets (which
    format numbers for the locale and drop time zones)."""

    def export_field(self, field, instance, **kwargs):
        method = getattr(self, f"dehydrate_{self.get_field_name(field)}", None)
        return method(instance) if callable(method) else field.get_value(instance)


def _text(value: str) -> str:
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def _decimal_text(value: Decimal) -> str:
    return f"{value.normalize():f}" if value else "0"


def csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    return _text(str(value))


def xlsx_cell(value):
    if isinstance(value, Decimal):
        exact = value.normalize()
        if len(exact.as_tuple().digits) <= EXCEL_DIGITS:
            return int(exact) if exact == exact.to_integral_value() else exact
        return _decimal_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return csv_cell(value)


class _Echo:
    def write(self, value):
        return value


def _rows(queryset, size):
    """The queryset's objects read from a server-side cursor, `size` rows per fetch.

    Django turns its server-side cursors off behind the transaction pooler
    (DISABLE_SERVER_SIDE_CURSORS, plumbing/database.py), where `.iterator()` would read
    the whole result at once. Inside a transaction a cursor is safe there too (the
    transaction keeps one server connection), so the rows are read in one, with chunked
    fetching asked for whatever the setting (`_iterator` is what `.iterator()` calls).
    """
    with transaction.atomic(using=queryset.db):
        yield from queryset._iterator(use_chunked_fetch=True, chunk_size=size)


def _chunks(resource, queryset, size):
    chunk = []
    for instance in _rows(queryset, size):
        chunk.append(resource.export_resource(instance))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def csv_stream(resource, queryset, size):
    writer = csv.writer(_Echo())
    # The byte-order mark makes Excel read the file as UTF-8.
    yield "\ufeff" + writer.writerow(resource.get_export_headers())
    for chunk in _chunks(resource, queryset, size):
        yield "".join(writer.writerow([csv_cell(v) for v in row]) for row in chunk)


def xlsx_file(resource, queryset, size, title):
    from openpyxl import Workbook

    # Write-only: openpyxl keeps rows on disk as they are appended, not in memory.
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(title[:31])
    sheet.append(resource.get_export_headers())
    for chunk in _chunks(resource, queryset, size):
        for row in chunk:
            sheet.append([xlsx_cell(v) for v in row])
    # Not a `with`: the response streams the file and closes it (it is then deleted).
    file = tempfile.TemporaryFile(suffix=".xlsx")  # noqa: SIM115
    try:
        workbook.save(file)
    except BaseException:
        file.close()
        raise
    file.seek(0)
    return file


class ExportAdminMixin:
    """Export links on a changelist, served at `<changelist>/export/<csv|xlsx>/?<the
    list's query>` (URL name `admin:<app>_<model>_export`), to operators with the view
    permission and `<app>.export_<model>`."""

    export_resource_class: type[ExportResource]
    export_formats = ("csv", "xlsx")

    def get_urls(self):
        opts = self.opts
        export = path(
            "export/<str:fmt>/",
            self.admin_site.admin_view(self.export_view),
            name=f"{opts.app_label}_{opts.model_name}_export",
        )
        return [export, *super().get_urls()]

    def has_export_permission(self, request) -> bool:
        opts = self.opts
        return self.has_view_permission(request) and request.user.has_perm(
            f"{opts.app_label}.export_{opts.model_name}"
        )

    def changelist_view(self, request, extra_context=None):
        if self.has_export_permission(request):
            query = request.GET.copy()
            query.pop("p", None)  # the export is every page
            query = query.urlencode()
            links = []
            for fmt in self.export_formats:
                url = reverse(
                    f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_export",
                    kwargs={"fmt": fmt},
                )
                links.append((f"Export {fmt.upper()}", f"{url}?{query}" if query else url))
            extra_context = {**(extra_context or {}), "export_links": links}
        return super().changelist_view(request, extra_context)

    def _back_to_list(self, request, message):
        messages.error(request, f"Nothing was exported: {message}")
        url = reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_changelist"
        )
        query = request.GET.urlencode()
        return HttpResponseRedirect(f"{url}?{query}" if query else url)

    def export_view(self, request, fmt):
        if fmt not in self.export_formats:
            raise Http404(f"No export as {fmt!r}: {', '.join(self.export_formats)}.")
        if not self.has_export_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return self._back_to_list(request, "the list's filters are not valid.")
        invalid = [
            spec
            for spec in changelist.filter_specs
            if isinstance(spec, DateRange) and spec.is_invalid()
        ]
        if invalid:
            return self._back_to_list(request, invalid[0].invalid_message())
        queryset = changelist.get_queryset(request)
        resource = self.export_resource_class()
        size = settings.EXPORT_CHUNK_SIZE
        stamp = timezone.now().astimezone(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
        name = f"{slugify(self.opts.verbose_name_plural)}-{stamp}.{fmt}"
        if fmt == "csv":
            response = StreamingHttpResponse(
                csv_stream(resource, queryset, size), content_type=CSV_TYPE
            )
            response["Content-Disposition"] = f'attachment; filename="{name}"'
            return response
        file = xlsx_file(resource, queryset, size, str(self.opts.verbose_name_plural))
        return FileResponse(file, as_attachment=True, filename=name, content_type=XLSX_TYPE)
