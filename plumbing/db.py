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


__all__ = ["DatabaseNow", "GenRandomUUID"]
