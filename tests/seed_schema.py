"""The seed schema (../shared/seed/database-guide.md) as the tests check it: each table's
columns with the type and default the seed gives. PostgreSQL reports `DEFAULT NOW()` as
now(), 'active' as 'active'::text, and so on."""

import os
import re
from pathlib import Path

from django.db import connection

SEED_COLUMNS = {
    "users": {
        "id": ("text", None),
        "email": ("text", None),
        "name": ("text", None),
        "created_at": ("timestamp with time zone", "now()"),
        "last_login_at": ("timestamp with time zone", None),
        "login_count": ("integer", "0"),
        "status": ("text", "'active'::text"),
        "is_admin": ("boolean", "false"),
        "hopsworks_username": ("text", None),
        "stripe_customer_id": ("text", None),
    },
    "hopsworks_clusters": {
        "id": ("uuid", "gen_random_uuid()"),
        "name": ("text", None),
        "api_url": ("text", None),
        "api_key": ("text", None),
        "max_users": ("integer", "100"),
        "current_users": ("integer", "0"),
        "status": ("text", "'active'::text"),
        "kubeconfig": ("text", None),
        "created_at": ("timestamp with time zone", "now()"),
    },
    "user_hopsworks_assignments": {
        "user_id": ("text", None),
        "hopsworks_cluster_id": ("uuid", None),
        "hopsworks_username": ("text", None),
        "assigned_at": ("timestamp with time zone", "now()"),
    },
    "usage_daily": {
        "id": ("uuid", "gen_random_uuid()"),
        "user_id": ("text", None),
        "date": ("date", None),
        "cpu_hours": ("numeric", "0"),
        "gpu_hours": ("numeric", "0"),
        "storage_gb_months": ("numeric", "0"),
        "api_calls": ("integer", "0"),
        "total_cost": ("numeric", "0"),
        "hopsworks_cluster_id": ("uuid", None),
        "created_at": ("timestamp with time zone", "now()"),
    },
    "user_credits": {
        "user_id": ("text", None),
        "total_purchased": ("numeric", "0"),
        "total_used": ("numeric", "0"),
        "cpu_hours_used": ("numeric", "0"),
        "gpu_hours_used": ("numeric", "0"),
        "storage_gb_months": ("numeric", "0"),
        "updated_at": ("timestamp with time zone", "now()"),
    },
}


def columns_of(table: str) -> dict[str, tuple[str, str | None]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, data_type, column_default FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = %s",
            [table],
        )
        return {name: (data_type, default) for name, data_type, default in cursor.fetchall()}


def run(sql: str, params=None) -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [c.name for c in cursor.description] if cursor.description else []
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()] if names else []


VENDORED_GUIDE = Path(__file__).resolve().parent / "seed" / "database-guide.md"


def shared_guide_path() -> Path | None:
    """../shared/seed/database-guide.md above the checkout (a worktree may sit deeper)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "seed" / "database-guide.md"
        if candidate.is_file():
            return candidate
    return None


def seed_guide_path() -> Path:
    """The seed's database guide: SEED_DATABASE_GUIDE if set, else the shared copy above the
    checkout, else the verbatim copy kept in tests/seed/ (so a clone anywhere, CI's
    included, tests against the contract; test_seed_guide_copy keeps the two equal)."""
    if os.environ.get("SEED_DATABASE_GUIDE"):
        return Path(os.environ["SEED_DATABASE_GUIDE"])
    return shared_guide_path() or VENDORED_GUIDE


def _sql_blocks() -> list[str]:
    """Every ```sql block of the guide, verbatim."""
    return re.findall(r"```sql\n(.*?)```", seed_guide_path().read_text(), flags=re.S)


def seed_ddl() -> list[str]:
    """The seed's CREATE TABLE (and CREATE INDEX) blocks, verbatim, in the guide's order:
    the six tables and schema_migrations."""
    return [sql for sql in _sql_blocks() if "CREATE TABLE" in sql]


def seed_queries() -> list[str]:
    """The guide's "Common Queries", verbatim, one statement each (comments dropped): every
    block that creates or alters nothing."""
    queries = []
    for sql in _sql_blocks():
        if re.search(r"\b(CREATE|ALTER)\b", sql):
            continue
        for statement in sql.split(";"):
            lines = [line for line in statement.splitlines() if not line.strip().startswith("--")]
            if "".join(lines).strip():
                queries.append("\n".join(lines).strip() + ";")
    return queries
