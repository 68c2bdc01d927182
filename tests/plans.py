"""Reading what PostgreSQL plans for the statements a page ran: which index serves them."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext


def get_capturing(client, url, params=None, status=200, **headers):
    """GET the url; return (response, the SQL it ran)."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, params or {}, **headers)
    assert response.status_code == status, response.content[:500]
    return response, [q["sql"] for q in captured.captured_queries]


def list_statement(statements, table: str) -> str:
    """The statement that read the list's rows from the table (the ordered one)."""
    found = [
        s
        for s in statements
        if s.startswith('SELECT "') and f'FROM "{table}"' in s and "ORDER BY" in s
    ]
    assert found, f"no page of {table} read among {statements}"
    return found[-1]


def plan(sql: str, off=("seqscan",)) -> str:
    """EXPLAIN of the statement with sequential scans discouraged: on a test's few rows a
    sequential scan is always cheapest, so this shows which index serves it at scale.
    (`off` may add "indexscan": a whole btree read in order also looks cheap on few rows.)"""
    with connection.cursor() as cursor:
        for method in off:
            cursor.execute(f"SET enable_{method} = off")
        try:
            cursor.execute(f"EXPLAIN {sql}")
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            for method in off:
                cursor.execute(f"RESET enable_{method}")


def analyze(*tables: str) -> None:
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f'ANALYZE "{table}"')
