"""Database defaults written the way the seed schema writes them.

The seed says `DEFAULT NOW()` and `DEFAULT gen_random_uuid()`; these expressions render
exactly that (Django's own `Now()` renders STATEMENT_TIMESTAMP()).
"""

from django.db.models import Func, UUIDField
from django.db.models.functions import Now


class DatabaseNow(Now):
    """`NOW()`: the transaction's start time, as in the seed's defaults."""

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="NOW()", **extra_context)


class GenRandomUUID(Func):
    """`gen_random_uuid()` (built into PostgreSQL 13+)."""

    template = "gen_random_uuid()"
    output_field = UUIDField()


def sql_array(values, *, text: bool = False) -> str:
    """`values` as one PostgreSQL array literal (`{a,b,NULL}`), to bind as a single
    parameter cast to its array type (`unnest(%s::numeric[])`, `= ANY(%s::text[])`).

    Why: Django's psycopg cursor binds parameters client-side and renders a Python list as
    `ARRAY[...]`, quoting element by element in Python; for the thousands of elements of a
    set-based write that was most of the statement's cost, and PostgreSQL then parses an
    expression per element. One literal is built with a join and parsed by the array type's
    input function. `text=True` quotes every element (user ids, references, free text);
    otherwise elements are written with `str()`: UUIDs, dates, integers and Decimals
    (whose `str()` is exact and readable by `numeric`). None is NULL.
    """
    values = values if isinstance(values, list) else list(values)
    if not values:
        return "{}"
    if text:
        body = '","'.join(values) if None not in values else None
        # The common case (no quote, backslash or NULL) joined at once.
        if body is not None and "\\" not in body and body.count('"') == 2 * (len(values) - 1):
            return '{"' + body + '"}'
        return (
            "{"
            + ",".join(
                "NULL"
                if value is None
                else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
                for value in values
            )
            + "}"
        )
    body = ",".join(map(str, values))
    # str() of a UUID, date, number never says "None": only a NULL does.
    if "None" in body:
        body = ",".join("NULL" if value is None else str(value) for value in values)
    return "{" + body + "}"


__all__ = ["DatabaseNow", "GenRandomUUID", "sql_array"]
