# ruff: noqa: S608 - the SQL is built from this file's own names; it takes no input.
"""The daily rollup per cluster (`usage_cluster_daily`), kept exact by the triggers that keep
`usage_monthly` (migration 0030), and filled.

Each of the four trigger functions of 0030 is replaced by one that applies the statement's
change to both rollups, in this order (the global lock order every writer follows:
`billing.usage._lock_months` pre-locks in it too): `usage_monthly` in its key order
(user, month, cluster or none, channel), then `usage_cluster_daily` in its key order
(cluster or none, date, channel). Each with the rules of 0030: one `INSERT ... ON
CONFLICT DO UPDATE` of the summed change, keys whose figures did not change skipped, keys
left with no row deleted, an error if a count would go below zero (rows were written with
the triggers off), TRUNCATE empties it.

`usage_cluster_daily_rebuild()` recomputes the new rollup from `usage_daily` (one GROUP BY,
writers held off with a SHARE lock); `usage_monthly_rebuild()` now rebuilds both (the
benchmark after its bulk load, an operator's repair) and returns the rows written to both.
The fill below calls the first only. Its SHARE lock waits for writers in flight and holds
new ones until this migration commits, when they run the new functions: no row is missed
or counted twice.
"""

import uuid
from dataclasses import dataclass
from decimal import Decimal

import django.db.models.deletion
import django.db.models.functions.comparison
from django.db import migrations, models

import billing.models

NO_CLUSTER = "'00000000-0000-0000-0000-000000000000'::uuid"
SUMS = ("cpu_hours", "gpu_hours", "storage_gb_months", "api_calls", "total_cost", "credits_debited")
CLUSTER_KEY = f"COALESCE(hopsworks_cluster_id, {NO_CLUSTER})"
# As in 0030: the month of a date through `timestamp`, whatever the session's zone.
MONTH = "date_trunc('month', date::timestamp)::date"


@dataclass(frozen=True)
class Rollup:
    table: str
    keys: tuple[tuple[str, str], ...]  # (column, expression over a usage_daily row)
    conflict: str  # the unique index, as ON CONFLICT names it
    count: str  # the column counting the rows summed

    def columns(self) -> str:
        names = [c for c, _ in self.keys if c != "cluster_key"] + ["hopsworks_cluster_id"]
        return ", ".join([*names, *SUMS, self.count])


MONTHLY = Rollup(
    "usage_monthly",
    (
        ("user_id", "user_id"),
        ("month", MONTH),
        ("cluster_key", CLUSTER_KEY),
        ("billed_via", "billed_via"),
    ),
    f"(user_id, month, ({CLUSTER_KEY}), billed_via)",
    "days",
)
CLUSTER_DAILY = Rollup(
    "usage_cluster_daily",
    (("cluster_key", CLUSTER_KEY), ("date", "date"), ("billed_via", "billed_via")),
    f"(({CLUSTER_KEY}), date, billed_via)",
    "usage_rows",
)


def _rows(rollup: Rollup, table: str, sign: str) -> str:
    """The rows of a transition table as signed contributions to their key."""
    figures = ", ".join(f"{sign}{name} AS {name}" for name in SUMS) if sign else ", ".join(SUMS)
    keys = ", ".join(f"{expression} AS {column}" for column, expression in rollup.keys)
    return f"SELECT {keys}, {figures}, {sign or ''}1 AS n FROM {table}"


def _upsert(rollup: Rollup, rows: str, *, may_empty: bool) -> str:
    keys = [column for column, _ in rollup.keys]
    plain = [c for c in keys if c != "cluster_key"]
    sums = ", ".join(f"COALESCE(sum({name}), 0) AS {name}" for name in SUMS)
    changed = " OR ".join(f"d.{name} <> 0" for name in (*SUMS, "n")) if may_empty else "true"
    add = ", ".join(f"{name} = m.{name} + EXCLUDED.{name}" for name in (*SUMS, rollup.count))
    return f"""
        INSERT INTO {rollup.table} AS m ({rollup.columns()})
        SELECT {", ".join("d." + c for c in plain)}, NULLIF(d.cluster_key, {NO_CLUSTER}),
               {", ".join("d." + name for name in SUMS)}, d.n
        FROM (SELECT {", ".join(keys)}, {sums}, sum(n) AS n
              FROM ({rows}) r
              GROUP BY {", ".join(keys)}) d
        WHERE {changed}
        ORDER BY {", ".join("d." + c for c in keys)}
        ON CONFLICT {rollup.conflict}
        DO UPDATE SET {add}"""


def _apply(rollups, sources, *, may_empty: bool) -> str:
    """Sum the rows of `sources` (transition table, sign) per key of each rollup, in turn,
    and add them to it; with `may_empty` (rows may leave), skip keys whose figures did not
    change and delete the keys left with no row."""

    def rows(rollup):
        return " UNION ALL ".join(_rows(rollup, table, sign) for table, sign in sources)

    if not may_empty:
        upserts = "".join(f"{_upsert(r, rows(r), may_empty=False)};" for r in rollups)
        return f"BEGIN{upserts}\n    RETURN NULL;\nEND"
    steps = "".join(
        f"""
    WITH applied AS ({_upsert(r, rows(r), may_empty=True)}
        RETURNING m.id, m.{r.count})
    SELECT array_agg(id) FILTER (WHERE {r.count} = 0), bool_or({r.count} < 0)
    INTO emptied, lost
    FROM applied;
    IF lost THEN
        RAISE EXCEPTION '{r.table} has lost track of usage_daily (rows were written '
            'with its triggers off)'
            USING HINT = 'Run SELECT usage_monthly_rebuild(); then repeat the statement.';
    END IF;
    IF emptied IS NOT NULL THEN
        DELETE FROM {r.table} WHERE id = ANY(emptied);
    END IF;"""
        for r in rollups
    )
    return f"""DECLARE
    emptied bigint[];
    lost boolean;
BEGIN{steps}
    RETURN NULL;
END"""


def _function(name: str, body: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $body$
{body}
$body$;"""


def _triggers(rollups) -> str:
    # DELETE, not TRUNCATE: a TRUNCATE naming these tables (Django's flush) is still using
    # them when this fires.
    emptying = "".join(f"\n    DELETE FROM {r.table};" for r in rollups)
    return "\n".join(
        [
            _function(
                "usage_monthly_on_insert", _apply(rollups, [("new_rows", "")], may_empty=False)
            ),
            _function(
                "usage_monthly_on_update",
                _apply(rollups, [("new_rows", "+"), ("old_rows", "-")], may_empty=True),
            ),
            _function(
                "usage_monthly_on_delete", _apply(rollups, [("old_rows", "-")], may_empty=True)
            ),
            _function("usage_monthly_on_truncate", f"BEGIN{emptying}\n    RETURN NULL;\nEND"),
        ]
    )


def _rebuild(rollup: Rollup) -> str:
    groups = [e for c, e in rollup.keys if c != "cluster_key"] + ["hopsworks_cluster_id"]
    return f"""
    TRUNCATE {rollup.table};
    INSERT INTO {rollup.table} ({rollup.columns()})
    SELECT {", ".join(groups)},
           {", ".join(f"COALESCE(sum({name}), 0)" for name in SUMS)}, count(*)
    FROM usage_daily
    GROUP BY {", ".join(groups)};
    GET DIAGNOSTICS written = ROW_COUNT;"""


REBUILD = """
CREATE OR REPLACE FUNCTION {name}() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET work_mem = '256MB'
AS $body$
DECLARE
    written bigint;
    total bigint := 0;
BEGIN
    -- Writers of usage_daily wait until the caller's transaction ends; readers do not.
    LOCK TABLE usage_daily IN SHARE MODE;{steps}
    RETURN total;
END
$body$;"""


def _rebuild_function(name: str, rollups) -> str:
    steps = "".join(_rebuild(r) + "\n    total := total + written;" for r in rollups)
    return REBUILD.format(name=name, steps=steps)


INSTALL = "\n".join(
    [
        _triggers([MONTHLY, CLUSTER_DAILY]),
        _rebuild_function("usage_cluster_daily_rebuild", [CLUSTER_DAILY]),
        _rebuild_function("usage_monthly_rebuild", [MONTHLY, CLUSTER_DAILY]),
    ]
)
# Back to 0030: the functions of the monthly rollup alone (the same SQL as 0030's).
UNINSTALL = "\n".join(
    [
        _triggers([MONTHLY]),
        _rebuild_function("usage_monthly_rebuild", [MONTHLY]),
        "DROP FUNCTION IF EXISTS usage_cluster_daily_rebuild();",
    ]
)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0032_purchases_list_indexes"),
        ("clusters", "0007_cluster_name_length_limit"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageClusterDaily",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("date", models.DateField()),
                (
                    "billed_via",
                    models.TextField(
                        choices=[("stripe", "Stripe (postpaid)"), ("credits", "Credits (prepaid)")]
                    ),
                ),
                (
                    "cpu_hours",
                    billing.models.SeedDecimalField(
                        decimal_places=10, default=Decimal("0"), max_digits=30
                    ),
                ),
                (
                    "gpu_hours",
                    billing.models.SeedDecimalField(
                        decimal_places=10, default=Decimal("0"), max_digits=30
                    ),
                ),
                (
                    "storage_gb_months",
                    billing.models.SeedDecimalField(
                        decimal_places=10, default=Decimal("0"), max_digits=30
                    ),
                ),
                ("api_calls", models.BigIntegerField(default=0)),
                (
                    "total_cost",
                    billing.models.SeedDecimalField(
                        decimal_places=10, default=Decimal("0"), max_digits=30
                    ),
                ),
                (
                    "credits_debited",
                    billing.models.SeedDecimalField(
                        decimal_places=10, default=Decimal("0"), max_digits=30
                    ),
                ),
                (
                    "usage_rows",
                    models.IntegerField(help_text="How many usage_daily rows the sums cover."),
                ),
                (
                    "hopsworks_cluster",
                    models.ForeignKey(
                        blank=True,
                        db_column="hopsworks_cluster_id",
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="clusters.hopsworkscluster",
                    ),
                ),
            ],
            options={
                "verbose_name": "daily usage per cluster",
                "verbose_name_plural": "daily usage per cluster",
                "db_table": "usage_cluster_daily",
                "indexes": [
                    models.Index(fields=["date"], name="usage_cluster_daily_date"),
                    models.Index(
                        condition=models.Q(("usage_rows", 0)),
                        fields=["id"],
                        name="usage_cluster_daily_empty",
                    ),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        django.db.models.functions.comparison.Coalesce(
                            "hopsworks_cluster",
                            models.Value(uuid.UUID("00000000-0000-0000-0000-000000000000")),
                        ),
                        models.F("date"),
                        models.F("billed_via"),
                        name="usage_cluster_daily_key",
                    )
                ],
            },
        ),
        # A row per cluster and day is rewritten by every writer of that day: room on each
        # page lets PostgreSQL update in place (HOT).
        migrations.RunSQL(
            sql="ALTER TABLE usage_cluster_daily SET (fillfactor = 50)",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.RunSQL(sql=INSTALL, reverse_sql=UNINSTALL),
        # The fill: one GROUP BY over usage_daily, set-based.
        migrations.RunSQL(
            sql="SELECT usage_cluster_daily_rebuild()",
            reverse_sql=migrations.RunSQL.noop,
        ),
        # Statistics for both rollups at once: until autovacuum gets to them, the planner
        # took the freshly filled tables for nearly empty (nested loops over 320,000 rows
        # on a 9M-row database: the unbilled-usage tile 430 ms instead of ~100).
        migrations.RunSQL(
            sql="ANALYZE usage_monthly; ANALYZE usage_cluster_daily",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
