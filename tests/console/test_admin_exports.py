"""Exports from the admin lists: CSV and XLSX of daily usage, billing history, the credit
ledger and users, of exactly what the list shows (filters, search, date range), streamed
from a server-side cursor, for operators holding the export permission."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import openpyxl
import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.urls import reverse

from accounts.models import User
from billing.credits import Kind, credits_add
from billing.models import BillingHistory, UsageDaily
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

USAGE_HEADER = [
    "date",
    "user email",
    "user id",
    "cluster",
    "CPU hours",
    "GPU hours",
    "storage GB-months",
    "API calls",
    "total cost (USD)",
]


def _export(client, model: str, fmt: str, query: str = ""):
    app, name = model.split(".")
    url = reverse(f"admin:{app}_{name}_export", kwargs={"fmt": fmt})
    return client.get(f"{url}?{query}" if query else url)


def _csv_rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode("utf-8-sig")
    return list(csv.reader(io.StringIO(body)))


def _usage(user, cluster, day, cost="1.2345678901", cpu="4.8515200000"):
    return UsageDaily.objects.create(
        user=user,
        hopsworks_cluster=cluster,
        date=day,
        cpu_hours=Decimal(cpu),
        gpu_hours=Decimal("0"),
        storage_gb_months=Decimal("47.3000000000"),
        api_calls=5940222,
        total_cost=Decimal(cost),
    )


@pytest.fixture
def usage_rows():
    east, west = ClusterFactory(name="east"), ClusterFactory(name="west")
    ada, bob = UserFactory(email="ada@example.com"), UserFactory(email="bob@example.com")
    rows = []
    for day in (dt.date(2026, 11, 30), dt.date(2026, 12, 1), dt.date(2026, 12, 2)):
        rows.append(_usage(ada, east, day))
        rows.append(_usage(bob, west, day, cost="106.2200000001"))
    return east, west, ada, bob


def test_a_usage_export_holds_only_the_rows_of_the_lists_cluster_and_date_range(
    persona_client, usage_rows
):
    east, _west, ada, _bob = usage_rows
    client = persona_client("finance_staff")
    query = (
        f"hopsworks_cluster__id__exact={east.pk}"
        "&date__range__gte=2026-12-01&date__range__lte=2026-12-02&o=0"
    )

    response = _export(client, "billing.usagedaily", "csv", query)

    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    assert ".csv" in response["Content-Disposition"]
    rows = _csv_rows(response)
    assert rows == [
        USAGE_HEADER,
        *[
            [day, "ada@example.com", ada.pk, "east", "4.85152", "0", "47.3", "5940222",
             "1.2345678901"]
            for day in ("2026-12-01", "2026-12-02")
        ],
    ]  # fmt: skip


def test_a_usage_export_as_xlsx_opens_in_openpyxl_with_the_same_rows(
    persona_client, usage_rows, tmp_path
):
    _east, west, _ada, bob = usage_rows
    client = persona_client("finance_staff")
    query = f"hopsworks_cluster__id__exact={west.pk}&date__range__gte=2026-12-02&o=0"

    response = _export(client, "billing.usagedaily", "xlsx", query)

    assert response.status_code == 200
    assert response["Content-Type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    path = tmp_path / "usage.xlsx"
    path.write_bytes(b"".join(response.streaming_content))
    sheet = openpyxl.load_workbook(path, read_only=True).active
    rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert rows[0] == USAGE_HEADER
    assert len(rows) == 2
    day, email, user_id, cluster, cpu, gpu, storage, calls, cost = rows[1]
    assert (day, email, user_id, cluster) == ("2026-12-02", "bob@example.com", bob.pk, "west")
    assert Decimal(str(cpu)) == Decimal("4.85152")
    assert Decimal(str(storage)) == Decimal("47.3")
    assert (gpu, calls) == (0, 5940222)
    assert Decimal(str(cost)) == Decimal("106.2200000001")


@pytest.mark.parametrize("behind_the_pooler", [False, True], ids=["direct", "pooler"])
def test_an_export_reads_rows_through_a_server_side_cursor_as_it_streams(
    persona_client, usage_rows, settings, monkeypatch, behind_the_pooler
):
    settings.EXPORT_CHUNK_SIZE = 2  # six rows: three fetches from the cursor
    # Behind Supavisor's transaction pooler Django's own server-side cursors are off
    # (plumbing/database.py); an export still needs one, inside its transaction.
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", behind_the_pooler)
    client = persona_client("finance_staff")

    response = _export(client, "billing.usagedaily", "csv")
    stream = iter(response.streaming_content)
    header = next(stream)
    first_chunk = next(stream)

    # The rows are not loaded up front: while the response streams, the query is an open
    # cursor on the server (a named cursor read in chunks), and one chunk has been sent.
    with connection.cursor() as cursor:
        cursor.execute("select statement from pg_cursors")
        open_cursors = [statement for (statement,) in cursor.fetchall()]
    assert any("usage_daily" in statement for statement in open_cursors), open_cursors
    assert header.startswith("\ufeffdate,".encode())
    assert first_chunk.count(b"\r\n") == 2
    rest = b"".join(stream)
    assert rest.count(b"\r\n") == 4


def test_a_ledger_export_honours_the_search_and_keeps_full_precision(persona_client):
    ada, bob = UserFactory(email="ada@example.com"), UserFactory(email="bob@example.com")
    credits_add(user=ada, kind=Kind.PURCHASE, amount=Decimal("25"), reference="p1", actor="t")
    credits_add(
        user=ada, kind=Kind.USAGE, amount=Decimal("-1.2345678901"), reference="u1", actor="t"
    )
    credits_add(user=bob, kind=Kind.PURCHASE, amount=Decimal("5"), reference="p2", actor="t")
    client = persona_client("finance_staff")

    rows = _csv_rows(_export(client, "billing.creditledgerentry", "csv", "q=ada%40example.com"))

    header, *body = rows
    assert header[:6] == ["created at (UTC)", "user email", "kind", "amount (USD)",
                          "balance after (USD)", "reference"]  # fmt: skip
    assert sorted((r[1], r[2], r[3], r[4], r[5]) for r in body) == [
        ("ada@example.com", "purchase", "25", "25", "p1"),
        ("ada@example.com", "usage", "-1.2345678901", "23.7654321099", "u1"),
    ]
    created = dt.datetime.fromisoformat(body[0][0])
    assert created.utcoffset() == dt.timedelta(0)


def test_exported_text_cannot_run_as_a_spreadsheet_formula_and_stays_utf8(persona_client):
    UserFactory(email="eve@example.com", name='=HYPERLINK("http://evil","x")')
    UserFactory(email="zoe@example.com", name="Zoë Ångström")
    UserFactory(email="min@example.com", name="-2+3")
    client = persona_client("finance_staff")

    rows = _csv_rows(_export(client, "accounts.user", "csv", "q=example.com"))

    names = {row[0]: row[1] for row in rows[1:]}
    assert names["eve@example.com"] == '\'=HYPERLINK("http://evil","x")'
    assert names["zoe@example.com"] == "Zoë Ångström"
    assert names["min@example.com"] == "'-2+3"


def test_an_xlsx_export_writes_formula_like_text_as_text(persona_client, tmp_path):
    UserFactory(email="eve@example.com", name="=1+1")
    client = persona_client("finance_staff")

    response = _export(client, "accounts.user", "xlsx", "q=eve%40example.com")

    path = tmp_path / "users.xlsx"
    path.write_bytes(b"".join(response.streaming_content))
    sheet = openpyxl.load_workbook(path).active
    assert sheet["B2"].value == "'=1+1"
    assert sheet["B2"].data_type == "s"


def test_a_users_export_follows_the_lists_filters(persona_client):
    UserFactory(email="ok@example.com")
    UserFactory(email="gone@example.com", status=User.Status.SUSPENDED)
    client = persona_client("superuser")

    rows = _csv_rows(_export(client, "accounts.user", "csv", "status__exact=suspended"))

    assert [row[0] for row in rows[1:]] == ["gone@example.com"]
    assert rows[0][:4] == ["email", "name", "id", "status"]


def test_a_billing_history_export_keeps_every_decimal_place(persona_client):
    ada = UserFactory(email="ada@example.com")
    BillingHistory.objects.create(
        user=ada, amount=Decimal("84.3300000001"), stripe_invoice_id="in_1", status="paid"
    )
    client = persona_client("finance_staff")

    rows = _csv_rows(_export(client, "billing.billinghistory", "csv"))

    assert len(rows) == 2
    record = dict(zip(rows[0], rows[1], strict=True))
    assert record["amount"] == "84.3300000001"
    assert record["user email"] == "ada@example.com"
    assert record["Stripe invoice"] == "in_1"
    assert record["currency"] == "USD"


def test_the_list_offers_export_links_carrying_its_filters(persona_client, usage_rows):
    east = usage_rows[0]
    client = persona_client("finance_staff")
    url = reverse("admin:billing_usagedaily_changelist")

    page = client.get(f"{url}?hopsworks_cluster__id__exact={east.pk}").content.decode()

    export = reverse("admin:billing_usagedaily_export", kwargs={"fmt": "csv"})
    assert f'href="{export}?hopsworks_cluster__id__exact={east.pk}"' in page
    assert reverse("admin:billing_usagedaily_export", kwargs={"fmt": "xlsx"}) in page


def test_an_export_of_an_invalid_date_range_is_refused_with_the_reason(persona_client, usage_rows):
    client = persona_client("finance_staff")

    response = _export(client, "billing.usagedaily", "csv", "date__range__gte=2026-13-45")

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:billing_usagedaily_changelist"))
    page = client.get(response["Location"]).content.decode()
    assert "not a valid date" in page
    assert "2026-13-45" in page


def test_an_unknown_export_format_is_not_found(persona_client):
    client = persona_client("finance_staff")
    assert _export(client, "billing.usagedaily", "pdf").status_code == 404


@pytest.mark.parametrize(
    ("model", "make"),
    [
        ("accounts.user", lambda: UserFactory()),
        (
            "billing.creditledgerentry",
            lambda: credits_add(
                user=UserFactory(), kind=Kind.PURCHASE, amount=Decimal("1"),
                reference=f"p-{UserFactory().pk}", actor="t",
            ),
        ),
        ("billing.usagedaily", lambda: _usage(UserFactory(), ClusterFactory(), dt.date.today())),
        (
            "billing.billinghistory",
            lambda: BillingHistory.objects.create(user=UserFactory(), amount=Decimal("1")),
        ),
    ],
)  # fmt: skip
def test_the_queries_of_an_export_do_not_grow_with_its_rows(persona_client, model, make):
    from django.test.utils import CaptureQueriesContext

    client = persona_client("superuser")

    def queries(fmt):
        with CaptureQueriesContext(connection) as captured:
            response = _export(client, model, fmt)
            b"".join(response.streaming_content)
        return len(captured)

    make()
    few = queries("csv"), queries("xlsx")
    for _ in range(5):
        make()
    assert (queries("csv"), queries("xlsx")) == few
