# ruff: noqa: S608 - the SQL is built from this file's own names; it takes no input.
"""Keep `usage_monthly` exact from `usage_daily`'s own triggers, and fill it.

Every statement that writes `usage_daily` (the upsert, an operator's SQL on Supabase, a
delete, a COPY, TRUNCATE) fires one statement-level AFTER trigger, in its transaction:

* INSERT, UPDATE and DELETE each have their own trigger (a trigger with transition tables
  serves one event), reading the rows the statement wrote from its transition tables
  (`REFERENCING NEW TABLE` / `OLD TABLE`): new rows count plus, old rows minus;
* the change is summed per key (user, month, cluster or none, channel) and applied with
  one `INSERT ... ON CONFLICT DO UPDATE SET x = x + EXCLUDED.x`, in key order so that
  concurrent writers lock the rows they share in the same order; keys whose figures did
  not change are skipped (an UPDATE of `updated_at` only writes nothing);
* keys left with no day are deleted; TRUNCATE empties the rollup (a DELETE).

The functions are SECURITY DEFINER (with the search path of this migration): whoever may
write `usage_daily` keeps the rollup right without needing rights on it, and the rollup's
Row Level Security (no policy: only its owner reads it) stays as it is.

`usage_monthly_rebuild()` recomputes the whole rollup from `usage_daily` (one GROUP BY,
holding writers off with a SHARE lock): the fill below, the benchmark after its bulk
load, and an operator's repair after loading usage with triggers off.

The triggers and the fill are one migration on purpose: `CREATE TRIGGER` locks
`usage_daily` against writers until this migration's transaction commits, so no row is
written between the fill and the triggers (it would be counted twice, or not at all).
"""

from django.db import migrations

NO_CLUSTER = "'00000000-0000-0000-0000-000000000000'::uuid"
SUMS = ("cpu_hours", "gpu_hours", "storage_gb_months", "api_calls", "total_cost", "credits_debited")
COLUMNS = "user_id, hopsworks_cluster_id, month, billed_via, " + ", ".join(SUMS) + ", days"


# The month of a date: through `timestamp` (without time zone), which is cheaper than the
# `timestamptz` that date_trunc(text, date) picks, and the same whatever the session's zone.
MONTH = "date_trunc('month', date::timestamp)::date"


def _rows(table: str, sign: str) -> str:
    """The rows of a transition table as signed contributions to their key."""
    figures = ", ".join(f"{sign}{name} AS {name}" for name in SUMS) if sign else ", ".join(SUMS)
    return (
        f"SELECT user_id, {MONTH} AS month, "
        f"COALESCE(hopsworks_cluster_id, {NO_CLUSTER}) AS cluster_key, billed_via, "
        f"{figures}, {sign or ''}1 AS days FROM {table}"
    )


def _apply(rows: str, *, may_empty: bool) -> str:
    """Sum `rows` per key and add them to the rollup; with `may_empty` (rows may leave),
    skip keys whose figures did not change and delete the keys left with no day."""
    sums = ", ".join(f"COALESCE(sum({name}), 0) AS {name}" for name in SUMS)
    changed = " OR ".join(f"d.{name} <> 0" for name in (*SUMS, "days")) if may_empty else "true"
    add = ", ".join(f"{name} = m.{name} + EXCLUDED.{name}" for name in (*SUMS, "days"))
    upsert = f"""
        INSERT INTO usage_monthly AS m ({COLUMNS})
        SELECT d.user_id, NULLIF(d.cluster_key, {NO_CLUSTER}), d.month, d.billed_via,
               {", ".join("d." + name for name in SUMS)}, d.days
        FROM (SELECT user_id, month, cluster_key, billed_via, {sums}, sum(days) AS days
              FROM ({rows}) r
              GROUP BY user_id, month, cluster_key, billed_via) d
        WHERE {changed}
        ORDER BY d.user_id, d.month, d.cluster_key, d.billed_via
        ON CONFLICT (user_id, month, (COALESCE(hopsworks_cluster_id, {NO_CLUSTER})), billed_via)
        DO UPDATE SET {add}"""
    if not may_empty:
        return f"BEGIN{upsert};\n    RETURN NULL;\nEND"
    return f"""DECLARE
    emptied bigint[];
    lost boolean;
BEGIN
    WITH applied AS ({upsert}
        RETURNING m.id, m.days)
    SELECT array_agg(id) FILTER (WHERE days = 0), bool_or(days < 0) INTO emptied, lost
    FROM applied;
    IF lost THEN
        RAISE EXCEPTION 'usage_monthly has lost track of usage_daily (rows were written '
            'with its triggers off)'
            USING HINT = 'Run SELECT usage_monthly_rebuild(); then repeat the statement.';
    END IF;
    IF emptied IS NOT NULL THEN
        DELETE FROM usage_monthly WHERE id = ANY(emptied);
    END IF;
    RETURN NULL;
END"""


def _function(name: str, body: str) -> str:
    return f"""
CREATE FUNCTION {name}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $body$
{body}
$body$;"""


INSTALL = "\n".join(
    [
        _function("usage_monthly_on_insert", _apply(_rows("new_rows", ""), may_empty=False)),
        _function(
            "usage_monthly_on_update",
            _apply(_rows("new_rows", "+") + " UNION ALL " + _rows("old_rows", "-"), may_empty=True),
        ),
        _function("usage_monthly_on_delete", _apply(_rows("old_rows", "-"), may_empty=True)),
        # DELETE, not TRUNCATE: a TRUNCATE naming both tables (Django's flush) is still
        # using usage_monthly when this fires.
        _function(
            "usage_monthly_on_truncate",
            "BEGIN\n    DELETE FROM usage_monthly;\n    RETURN NULL;\nEND",
        ),
        f"""
CREATE FUNCTION usage_monthly_rebuild() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET work_mem = '256MB'
AS $body$
DECLARE
    written bigint;
BEGIN
    -- Writers of usage_daily wait until the caller's transaction ends; readers do not.
    LOCK TABLE usage_daily IN SHARE MODE;
    TRUNCATE usage_monthly;
    INSERT INTO usage_monthly ({COLUMNS})
    SELECT user_id, hopsworks_cluster_id, {MONTH}, billed_via,
           {", ".join(f"COALESCE(sum({name}), 0)" for name in SUMS)}, count(*)
    FROM usage_daily
    GROUP BY user_id, hopsworks_cluster_id, {MONTH}, billed_via;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$body$;""",
        """
CREATE TRIGGER usage_monthly_on_insert AFTER INSERT ON usage_daily
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_monthly_on_insert();
CREATE TRIGGER usage_monthly_on_update AFTER UPDATE ON usage_daily
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_monthly_on_update();
CREATE TRIGGER usage_monthly_on_delete AFTER DELETE ON usage_daily
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_monthly_on_delete();
CREATE TRIGGER usage_monthly_on_truncate AFTER TRUNCATE ON usage_daily
    FOR EACH STATEMENT EXECUTE FUNCTION usage_monthly_on_truncate();""",
    ]
)

UNINSTALL = """
DROP TRIGGER IF EXISTS usage_monthly_on_insert ON usage_daily;
DROP TRIGGER IF EXISTS usage_monthly_on_update ON usage_daily;
DROP TRIGGER IF EXISTS usage_monthly_on_delete ON usage_daily;
DROP TRIGGER IF EXISTS usage_monthly_on_truncate ON usage_daily;
DROP FUNCTION IF EXISTS usage_monthly_on_insert();
DROP FUNCTION IF EXISTS usage_monthly_on_update();
DROP FUNCTION IF EXISTS usage_monthly_on_delete();
DROP FUNCTION IF EXISTS usage_monthly_on_truncate();
DROP FUNCTION IF EXISTS usage_monthly_rebuild();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0029_usage_monthly"),
    ]

    operations = [
        # Each day of usage rewrites every user's row of the month: room on each page lets
        # PostgreSQL update in place (HOT), without touching the indexes.
        migrations.RunSQL(
            sql="ALTER TABLE usage_monthly SET (fillfactor = 70)",
            reverse_sql="ALTER TABLE usage_monthly RESET (fillfactor)",
        ),
        migrations.RunSQL(sql=INSTALL, reverse_sql=UNINSTALL),
        # The fill: one GROUP BY over usage_daily, set-based (its time on a big table is in
        # docs/operations.md).
        migrations.RunSQL(
            sql="SELECT usage_monthly_rebuild()", reverse_sql="TRUNCATE usage_monthly"
        ),
    ]
