# ruff: noqa: S608 - table and column names come from the models and the seed; values are
# always parameters.
"""Adopting a database made by the seed's own CREATE TABLE statements, in place.

`inspect()` reads the database and says, in plain words, what adoption will do and what
blocks it. `adopt()` does it in one transaction: the safe fixes to the rows, every
migration up to our latest (a seed table that exists is brought to the model in place:
columns added, NOT NULL, UNIQUE, CHECKs and indexes; nothing is copied or recreated),
plaintext secrets encrypted, and a row in the seed's `schema_migrations`. Anything that
needs an operator's decision stops it before it changes anything.

This lives in plumbing, not in an app: it concerns every app's tables but reaches them
only through SQL, the migrations and the app registry, so it imports no app and the
import direction (console -> billing -> clusters -> accounts) stays as it is. The command
is accounts' `adopt_database`, beside `check_database`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from django.apps import apps as global_apps
from django.conf import settings
from django.core.management.sql import emit_post_migrate_signal, emit_pre_migrate_signal
from django.db import connection, transaction
from django.db.migrations import operations as ops
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.operations.base import Operation
from django.db.models import NOT_PROVIDED, Value

from plumbing.encryption import encrypt, encrypted_fields, fernet, looks_encrypted

SEED_TABLES = (
    "users",
    "hopsworks_clusters",
    "user_hopsworks_assignments",
    "usage_daily",
    "user_credits",
    "billing_history",
)
# The row adoption writes in the seed's own migrations table.
ADOPTION_VERSION = "platform_console_adopt_database"
# The seed's statement, verbatim, for a database that lacks the table.
SCHEMA_MIGRATIONS_DDL = """CREATE TABLE IF NOT EXISTS schema_migrations (
  version TEXT PRIMARY KEY,
  applied_at TIMESTAMPTZ DEFAULT NOW()
);"""
LOCK_WAIT_SECONDS = 60
USAGE_FIGURES = ("cpu_hours", "gpu_hours", "storage_gb_months", "api_calls", "total_cost")


@dataclass
class Finding:
    """One kind of row that breaks a rule of ours: how many, a few examples, the fix."""

    summary: str
    examples: list[str]
    fix: str
    blocking: bool
    statements: list[str] = field(default_factory=list)  # the safe fix, run in order


@dataclass
class Inspection:
    seed_tables: list[str]
    taken_over: list[str]  # existing tables our migrations create: brought to the model
    created: list[str]  # tables the migrations create
    migrations: list[str]
    findings: list[Finding]
    notes: list[str]
    recorded: bool

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.blocking]

    @property
    def fixes(self) -> list[Finding]:
        return [f for f in self.findings if not f.blocking]

    @property
    def nothing_to_do(self) -> bool:
        return not self.migrations and not self.findings and self.recorded


class AdoptionBlocked(Exception):
    def __init__(self, inspection: Inspection):
        super().__init__("adoption needs an operator's decision")
        self.inspection = inspection


# ---------------------------------------------------------------------------- reading


def _rows(sql: str, params=None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _existing_tables() -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


def _columns(table: str) -> dict:
    with connection.cursor() as cursor:
        return {c.name: c for c in connection.introspection.get_table_description(cursor, table)}


def _seed_models():
    return [m for m in global_apps.get_models() if m._meta.db_table in SEED_TABLES]


def _case_duplicate_emails() -> list[Finding]:
    groups = _rows(
        "SELECT lower(btrim(email)), string_agg(email || ' (' || id || ')', ', ' ORDER BY id) "
        "FROM users GROUP BY 1 HAVING count(*) > 1 ORDER BY 1"
    )
    findings = []
    if groups:
        findings.append(
            Finding(
                f"{len(groups)} email address(es) used by more than one user when case is ignored",
                [users for _, users in groups],
                "The console keeps one user per address, stored lower-case. Decide which "
                "account stays: give the other a different address, or move its rows to the "
                "one that stays and delete it.",
                blocking=True,
            )
        )
    mixed = _rows(
        "SELECT email || ' (' || id || ')' FROM users WHERE email <> lower(btrim(email)) "
        "AND lower(btrim(email)) NOT IN "
        "(SELECT lower(btrim(email)) FROM users GROUP BY 1 HAVING count(*) > 1) ORDER BY id"
    )
    if mixed:
        findings.append(
            Finding(
                f"{len(mixed)} email address(es) not stored lower-case",
                [m for (m,) in mixed],
                "Store them lower-case (the console finds users by the lower-case address).",
                blocking=False,
                statements=[
                    "UPDATE users SET email = lower(btrim(email)) "
                    "WHERE email <> lower(btrim(email))"
                ],
            )
        )
    return findings


def _long_names(present: set[str]) -> list[Finding]:
    """Names longer than the console keeps (a CHECK once adopted): a user's display name
    is cut (Auth0 sends it again at each login, cut the same way); a cluster's name is the
    operator's to choose, and cutting could make two the same."""
    user_max = global_apps.get_model("accounts", "User")._meta.get_field("name").max_length
    cluster_max = (
        global_apps.get_model("clusters", "HopsworksCluster")._meta.get_field("name").max_length
    )
    findings = []
    if "users" in present:
        users = _rows(
            "SELECT id, char_length(name) FROM users WHERE char_length(name) > %s ORDER BY id",
            [user_max],
        )
        if users:
            findings.append(
                Finding(
                    f"{len(users)} user name(s) longer than {user_max} characters",
                    [f"{user}: {length} characters" for user, length in users],
                    f"Cut them to {user_max} characters, the last an ellipsis.",
                    blocking=False,
                    statements=[
                        f"UPDATE users SET name = left(name, {user_max - 1}) "
                        f"|| '…' WHERE char_length(name) > {user_max}"
                    ],
                )
            )
    if "hopsworks_clusters" in present:
        clusters = _rows(
            "SELECT id::text, char_length(name) FROM hopsworks_clusters "
            "WHERE char_length(name) > %s ORDER BY id",
            [cluster_max],
        )
        if clusters:
            findings.append(
                Finding(
                    f"{len(clusters)} cluster name(s) longer than {cluster_max} characters",
                    [f"cluster {id}: {length} characters" for id, length in clusters],
                    f"Rename each to at most {cluster_max} characters "
                    "(UPDATE hopsworks_clusters SET name = ... WHERE id = ...).",
                    blocking=True,
                )
            )
    return findings


def _users_on_two_clusters() -> list[Finding]:
    rows = _rows(
        "SELECT a.user_id, string_agg(coalesce(c.name, a.hopsworks_cluster_id::text), ', ' "
        "ORDER BY c.name) FROM user_hopsworks_assignments a "
        "LEFT JOIN hopsworks_clusters c ON c.id = a.hopsworks_cluster_id "
        "GROUP BY a.user_id HAVING count(*) > 1 ORDER BY 1"
    )
    if not rows:
        return []
    return [
        Finding(
            f"{len(rows)} user(s) assigned to more than one cluster",
            [f"{user}: {clusters}" for user, clusters in rows],
            "The console places a user on one cluster. Delete the assignments the user should "
            "not keep (DELETE FROM user_hopsworks_assignments WHERE user_id = ... AND "
            "hopsworks_cluster_id = ...).",
            blocking=True,
        )
    ]


def _usage_duplicates() -> list[Finding]:
    figures = ", ".join(f"coalesce({f}, 0)" for f in USAGE_FIGURES)
    groups = _rows(
        "SELECT u.user_id, coalesce(c.name, 'no cluster'), u.date::text, count(*), "
        f"count(DISTINCT ({figures})) "
        "FROM usage_daily u LEFT JOIN hopsworks_clusters c ON c.id = u.hopsworks_cluster_id "
        "WHERE u.user_id IS NOT NULL "
        "GROUP BY u.user_id, u.hopsworks_cluster_id, c.name, u.date HAVING count(*) > 1 "
        "ORDER BY 1, 3, 2"
    )
    differing = [g for g in groups if g[4] > 1]
    copies = [g for g in groups if g[4] == 1]
    findings = []
    if differing:
        findings.append(
            Finding(
                f"{len(differing)} group(s) of usage rows for the same user, cluster and day "
                "with different figures",
                [f"{u} on {c}, {d}: {n} rows" for u, c, d, n, _ in differing],
                "The console keeps one row per user, cluster and day. Decide which figures are "
                "right and delete the other rows (or, if they are parts of one day, add them "
                "up into one row and delete the rest).",
                blocking=True,
            )
        )
    if copies:
        extra = sum(n - 1 for _, _, _, n, _ in copies)
        findings.append(
            Finding(
                f"{len(copies)} group(s) of usage rows that are exact copies: {extra} copies "
                "to delete",
                [f"{u} on {c}, {d}: {n} identical rows" for u, c, d, n, _ in copies],
                "Keep the oldest row of each group and delete its copies.",
                blocking=False,
                # Every group left is one of copies: the run stops before this while any
                # group's figures differ.
                statements=[
                    "DELETE FROM usage_daily WHERE id IN (SELECT id FROM (SELECT id, "
                    "row_number() OVER (PARTITION BY user_id, hopsworks_cluster_id, date "
                    "ORDER BY created_at, id) AS copy FROM usage_daily "
                    "WHERE user_id IS NOT NULL) numbered WHERE copy > 1)"
                ],
            )
        )
    return findings


def _unknown_choices(tables: set[str]) -> list[Finding]:
    findings = []
    for model in _seed_models():
        table = model._meta.db_table
        if table not in tables:
            continue
        columns = _columns(table)
        for f in model._meta.concrete_fields:
            if not f.choices or f.column not in columns:
                continue
            allowed = [str(value) for value, _ in f.flatchoices]
            rows = _rows(
                f'SELECT "{f.column}", count(*) FROM "{table}" WHERE "{f.column}" IS NOT NULL '
                f'AND NOT ("{f.column}"::text = ANY(%s)) GROUP BY 1 ORDER BY 2 DESC, 1',
                [allowed],
            )
            if rows:
                total = sum(n for _, n in rows)
                findings.append(
                    Finding(
                        f"{total} row(s) of {table} with a {f.column} other than "
                        f"{', '.join(allowed)}",
                        [f"{value!r}: {n} row(s)" for value, n in rows],
                        f"Set each to one of {', '.join(allowed)}: which one is your decision "
                        f"(UPDATE {table} SET {f.column} = ... WHERE {f.column} = ...).",
                        blocking=True,
                    )
                )
    return findings


def _nulls(tables: set[str]) -> list[Finding]:
    """NULL in a column we made NOT NULL: the seed's default where it gives one."""
    findings = []
    for model in _seed_models():
        table = model._meta.db_table
        if table not in tables:
            continue
        columns = _columns(table)
        nullable = [
            (f, columns[f.column])
            for f in model._meta.concrete_fields
            if f.column in columns and not f.null and columns[f.column].null_ok
        ]
        if not nullable:
            continue
        # One pass over the table for all its columns: the seed's tables may be large.
        counts = _rows(
            "SELECT "
            + ", ".join(f'count(*) FILTER (WHERE "{f.column}" IS NULL)' for f, _ in nullable)
            + f' FROM "{table}"'
        )[0]
        for (f, column), count in zip(nullable, counts, strict=True):
            if not count:
                continue
            if column.default is not None:
                findings.append(
                    Finding(
                        f"{table}.{f.column}: {count} row(s) with NULL",
                        [],
                        f"Set them to the seed's default, {column.default}.",
                        blocking=False,
                        statements=[
                            f'UPDATE "{table}" SET "{f.column}" = DEFAULT '
                            f'WHERE "{f.column}" IS NULL'
                        ],
                    )
                )
            else:
                findings.append(
                    Finding(
                        f"{table}.{f.column}: {count} row(s) with NULL, and no default to fill in",
                        [],
                        "Give each row a value (the user it belongs to, for usage) or delete it.",
                        blocking=True,
                    )
                )
    return findings


def _clusters() -> list[Finding]:
    findings = []
    names = _rows(
        "SELECT name, count(*) FROM hopsworks_clusters GROUP BY 1 HAVING count(*) > 1 ORDER BY 1"
    )
    if names:
        findings.append(
            Finding(
                f"{len(names)} cluster name(s) used by more than one cluster",
                [f"{name!r}: {n} clusters" for name, n in names],
                "Cluster names are unique in the console: rename all but one.",
                blocking=True,
            )
        )
    counts = _rows(
        "SELECT c.name, c.current_users, count(a.user_id), c.max_users "
        "FROM hopsworks_clusters c "
        "LEFT JOIN user_hopsworks_assignments a ON a.hopsworks_cluster_id = c.id "
        "GROUP BY c.id, c.name, c.current_users, c.max_users ORDER BY c.name"
    )
    over = [row for row in counts if row[2] > (100 if row[3] is None else row[3])]
    if over:
        findings.append(
            Finding(
                f"{len(over)} cluster(s) with more users assigned than max_users allows",
                [f"{name}: {assigned} assigned, max_users {mx}" for name, _, assigned, mx in over],
                "Raise max_users or move users to another cluster.",
                blocking=True,
            )
        )
    drift = [row for row in counts if row[1] != row[2]]
    if drift:
        findings.append(
            Finding(
                f"{len(drift)} cluster(s) whose current_users disagrees with its assignments",
                [
                    f"{name}: current_users {'NULL' if current is None else current}, "
                    f"assigned {assigned}"
                    for name, current, assigned, _ in drift
                ],
                "Set current_users to the number of assignments.",
                blocking=False,
                statements=[
                    "UPDATE hopsworks_clusters c SET current_users = (SELECT count(*) FROM "
                    "user_hopsworks_assignments a WHERE a.hopsworks_cluster_id = c.id) "
                    "WHERE current_users IS DISTINCT FROM (SELECT count(*) FROM "
                    "user_hopsworks_assignments a WHERE a.hopsworks_cluster_id = c.id)"
                ],
            )
        )
    return findings


def _negative_usage() -> list[Finding]:
    negative = " OR ".join(f"{f} < 0" for f in USAGE_FIGURES)
    rows = _rows(
        f"SELECT coalesce(user_id, '?') || ', ' || date::text FROM usage_daily WHERE {negative} "
        "ORDER BY 1"
    )
    if not rows:
        return []
    return [
        Finding(
            f"{len(rows)} usage row(s) with a negative figure",
            [r for (r,) in rows],
            "Usage is never negative: correct the figures or delete the rows.",
            blocking=True,
        )
    ]


def _duplicate_invoices() -> list[Finding]:
    rows = _rows(
        "SELECT stripe_invoice_id, count(*) FROM billing_history "
        "WHERE stripe_invoice_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1 ORDER BY 1"
    )
    if not rows:
        return []
    return [
        Finding(
            f"{len(rows)} Stripe invoice(s) with more than one billing_history row",
            [f"{invoice}: {n} rows" for invoice, n in rows],
            "Keep one row per Stripe invoice and delete the others.",
            blocking=True,
        )
    ]


def _plaintext_secrets(tables: set[str]) -> list[Finding]:
    findings = []
    for model, f in encrypted_fields():
        table = model._meta.db_table
        if table not in tables:
            continue
        label = "name" if "name" in _columns(table) else model._meta.pk.column
        rows = _rows(
            f'SELECT "{label}"::text FROM "{table}" WHERE "{f.column}" IS NOT NULL '
            f"AND \"{f.column}\" NOT LIKE 'gAAAAA%%' ORDER BY 1"
        )
        if rows:
            findings.append(
                Finding(
                    f"{table}.{f.column}: {len(rows)} value(s) stored in plaintext",
                    [r for (r,) in rows],
                    "Encrypt them with the newest key in FIELD_ENCRYPTION_KEYS.",
                    blocking=False,
                )
            )
    return findings


def _migration_plan() -> tuple[list[str], list[str], list[str]]:
    """The migrations to apply, the existing tables they take over, the tables they create."""
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    existing = _existing_tables()
    names, taken_over, created = [], [], []
    for migration, _ in plan:
        names.append(f"{migration.app_label}.{migration.name}")
        for operation in migration.operations:
            swappable = getattr(operation, "options", {}).get("swappable")
            label = f"{migration.app_label}.{getattr(operation, 'name', '')}"
            if swappable and getattr(settings, swappable) != label:
                continue  # auth.User, replaced by accounts.User: never created
            if isinstance(operation, ops.CreateModel):
                table = operation.options.get("db_table") or (
                    f"{migration.app_label}_{operation.name_lower}"
                )
                (taken_over if table in existing else created).append(table)
    return names, taken_over, created


def inspect() -> Inspection:
    tables = _existing_tables()
    seed_tables = [t for t in SEED_TABLES if t in tables]
    present = set(seed_tables)
    clusters = {"user_hopsworks_assignments", "hopsworks_clusters"} <= present
    # In the order the run applies the safe fixes: NULLs filled first.
    findings = _nulls(tables)
    if "users" in present:
        findings += _case_duplicate_emails()
    if clusters:
        findings += _users_on_two_clusters()
    if {"usage_daily", "hopsworks_clusters"} <= present:
        findings += _usage_duplicates()
        findings += _negative_usage()
    findings += _unknown_choices(tables)
    findings += _long_names(present)
    if clusters:
        findings += _clusters()
    if "billing_history" in present:
        findings += _duplicate_invoices()
    findings += _plaintext_secrets(tables)
    findings.sort(key=lambda f: not f.blocking)  # stable: the fixes keep their order

    migrations, taken_over, created = _migration_plan()
    notes = []
    if "user_credits" in present and "billing_credit_ledger" not in tables:
        (credited,) = _rows(
            "SELECT count(*) FROM user_credits "
            "WHERE coalesce(total_purchased, 0) <> 0 OR coalesce(total_used, 0) <> 0"
        )[0]
        if credited:
            notes.append(
                f"{credited} user_credits row(s) hold a balance with no ledger behind it. They "
                "are kept as they are; check_credit_balances reports them until opening "
                "balances are recorded. Do not run check_credit_balances --fix."
            )
    recorded = "schema_migrations" in tables and bool(
        _rows("SELECT 1 FROM schema_migrations WHERE version = %s", [ADOPTION_VERSION])
    )
    return Inspection(
        seed_tables=seed_tables,
        taken_over=taken_over,
        created=created,
        migrations=migrations,
        findings=findings,
        notes=notes,
        recorded=recorded,
    )


# ---------------------------------------------------------------------------- schema


def _as_found(f, column, constraints: dict):
    """A copy of the model field that describes the column as the database has it, so that
    altering from it to the field changes only what differs."""
    found = copy.copy(f)
    found.null = column.null_ok
    only = [f.column]
    found._unique = any(
        c["unique"] and not c["primary_key"] and c["columns"] == only for c in constraints.values()
    )
    found.__dict__.pop("unique", None)  # a cached_property, copied with the field
    found.db_index = f.db_index and any(
        c["index"] and not c["unique"] and c["columns"] == only for c in constraints.values()
    )
    if column.default is None:
        found.db_default = NOT_PROVIDED
    elif not f.has_db_default():  # a default added by hand: dropped, as `migrate` has none
        found.db_default = Value(None)
    return found


def _bring_table_to_model(schema_editor, model) -> None:
    conn = schema_editor.connection
    table = model._meta.db_table
    with conn.cursor() as cursor:
        columns = {c.name: c for c in conn.introspection.get_table_description(cursor, table)}
        constraints = conn.introspection.get_constraints(cursor, table)
        tables = set(conn.introspection.table_names(cursor))
    for f in model._meta.local_concrete_fields:
        if f.column is None:  # a composite primary key: the seed's own
            continue
        if f.column not in columns:
            schema_editor.add_field(model, f)
            continue
        found = _as_found(f, columns[f.column], constraints)
        if f.unique and not f.primary_key and not found.unique:
            # Named as PostgreSQL names a column's UNIQUE in CREATE TABLE, as on a database
            # that `migrate` created.
            name = schema_editor.quote_name(f"{table}_{f.column}_key"[:63])
            schema_editor.execute(
                f"ALTER TABLE {schema_editor.quote_name(table)} ADD CONSTRAINT {name} "
                f"UNIQUE ({schema_editor.quote_name(f.column)})"
            )
            found._unique = True
            found.__dict__.pop("unique", None)
        schema_editor.alter_field(model, found, f)
        # The text_pattern_ops index Django gives a unique or indexed text column (LIKE
        # lookups); the seed has none.
        like = schema_editor._create_like_index_sql(model, f)
        if like is not None:
            with conn.cursor() as cursor:
                now = conn.introspection.get_constraints(cursor, table)
            if str(like.parts["name"]).strip('"') not in now:
                schema_editor.execute(like)
    for f in model._meta.local_many_to_many:
        through = f.remote_field.through
        if through._meta.auto_created and through._meta.db_table not in tables:
            schema_editor.create_model(through)
    for constraint in model._meta.constraints:
        if constraint.name not in constraints:
            schema_editor.add_constraint(model, constraint)
    for index in model._meta.indexes:
        if index.name not in constraints:
            schema_editor.add_index(model, index)


class _OnExistingTables(Operation):
    """Wraps an operation of ours: where what it creates already exists (the seed's tables,
    the seed's index), it brings that to the model instead of creating it again. The
    project state moves exactly as the wrapped operation says."""

    reduces_to_sql = False
    reversible = False

    def __init__(self, operation):
        self.operation = operation

    def state_forwards(self, app_label, state):
        self.operation.state_forwards(app_label, state)

    def describe(self):
        return self.operation.describe()

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        operation = self.operation
        conn = schema_editor.connection
        model_name = (
            operation.name if isinstance(operation, ops.CreateModel) else operation.model_name
        )
        model = to_state.apps.get_model(app_label, model_name)
        table = model._meta.db_table
        if self.allow_migrate_model(conn.alias, model):  # else (unmanaged) the op does nothing
            with conn.cursor() as cursor:
                tables = set(conn.introspection.table_names(cursor))
                existing = table in tables
                constraints = conn.introspection.get_constraints(cursor, table) if existing else {}
                columns = (
                    {c.name: c for c in conn.introspection.get_table_description(cursor, table)}
                    if existing
                    else {}
                )
            if isinstance(operation, ops.CreateModel) and existing:
                _bring_table_to_model(schema_editor, model)
                return
            if isinstance(operation, ops.AddIndex) and operation.index.name in constraints:
                return
            if (
                isinstance(operation, ops.AddConstraint)
                and operation.constraint.name in constraints
            ):
                return
            if isinstance(operation, ops.AddField):
                f = model._meta.get_field(operation.name)
                if f.column in columns:  # added by hand, following the old instructions
                    found = _as_found(f, columns[f.column], constraints)
                    schema_editor.alter_field(model, found, f)
                    return
        operation.database_forwards(app_label, schema_editor, from_state, to_state)


WRAPPED = (ops.CreateModel, ops.AddIndex, ops.AddConstraint, ops.AddField)


def _on_existing_tables(migration):
    if not any(isinstance(op, WRAPPED) for op in migration.operations):
        return migration
    adapted = copy.copy(migration)
    adapted.operations = [
        _OnExistingTables(op) if isinstance(op, WRAPPED) else op for op in migration.operations
    ]
    return adapted


def _procrastinate_in_one_step(plan) -> dict:
    """Procrastinate's migrations replay its history, and some of them add a value to an
    enum and use it: PostgreSQL refuses that inside one transaction. When none of them has
    run yet, its current schema (the schema.sql its releases ship, which its migrations
    arrive at) is created at once instead, and the migrations only move the state."""
    from procrastinate.schema import SchemaManager

    theirs = [m for m, _ in plan if m.app_label == "procrastinate"]
    if not theirs or theirs[0].initial is not True:
        return {}
    replaced = {}
    first = True
    for migration in theirs:
        adapted = copy.copy(migration)
        adapted.operations = []
        for operation in migration.operations:
            if isinstance(operation, ops.RunSQL):
                if first:
                    operation = ops.RunSQL(SchemaManager.get_schema())
                    first = False
                else:
                    continue
            adapted.operations.append(operation)
        replaced[(migration.app_label, migration.name)] = adapted
    return replaced


def _migrate() -> None:
    """Every migration up to the latest, in the caller's transaction (PostgreSQL's DDL is
    transactional; each migration runs in a savepoint)."""
    executor = MigrationExecutor(connection)
    executor.loader.check_consistent_history(connection)
    graph = executor.loader.graph
    targets = graph.leaf_nodes()
    plan = executor.migration_plan(targets)
    replaced = _procrastinate_in_one_step(plan)
    for migration, _ in plan:
        key = (migration.app_label, migration.name)
        graph.nodes[key] = _on_existing_tables(replaced.get(key, migration))
    plan = executor.migration_plan(targets)
    # The signals `migrate` sends around the same plan (content types, permissions).
    before = executor._create_project_state(with_applied_migrations=True)
    emit_pre_migrate_signal(0, False, connection.alias, apps=before.apps, plan=plan)
    state = executor.migrate(targets, plan=plan)
    state.clear_delayed_apps_cache()
    emit_post_migrate_signal(0, False, connection.alias, apps=state.apps, plan=plan)


# ---------------------------------------------------------------------------- writing


def _encrypt_plaintext() -> int:
    done = 0
    tables = _existing_tables()
    for model, f in encrypted_fields():
        table, pk = model._meta.db_table, model._meta.pk.column
        if table not in tables:
            continue
        rows = _rows(
            f'SELECT "{pk}", "{f.column}" FROM "{table}" WHERE "{f.column}" IS NOT NULL '
            f'ORDER BY "{pk}" FOR UPDATE'
        )
        with connection.cursor() as cursor:
            for key, value in rows:
                if not looks_encrypted(value):
                    cursor.execute(
                        f'UPDATE "{table}" SET "{f.column}" = %s WHERE "{pk}" = %s',
                        [encrypt(value), key],
                    )
                    done += 1
    return done


def _record() -> None:
    with connection.cursor() as cursor:
        cursor.execute(SCHEMA_MIGRATIONS_DDL)
        cursor.execute(
            "INSERT INTO schema_migrations (version) VALUES (%s) ON CONFLICT (version) DO NOTHING",
            [ADOPTION_VERSION],
        )


def adopt(
    *,
    report: Callable[[Inspection], None] = lambda inspection: None,
    progress: Callable[[str], None] = lambda line: None,
) -> Inspection:
    """All or nothing. Raises AdoptionBlocked (nothing changed) when something needs a
    decision; returns the inspection it acted on (`nothing_to_do` when it did nothing)."""
    fernet()  # no usable key: stop before anything is written
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Years of rows: checking NOT NULL and building the unique indexes may take a
            # while (a pooler's or role's statement timeout would cut it off). Waiting
            # behind another session's lock does not go on for ever.
            cursor.execute("SET LOCAL statement_timeout = 0")
            cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'")
        present = [t for t in SEED_TABLES if t in _existing_tables()]
        if present:
            # Other writers wait (readers do not) until the whole adoption commits.
            tables = ", ".join(f'"{t}"' for t in present)
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
        inspection = inspect()
        if inspection.blocking:
            raise AdoptionBlocked(inspection)
        if inspection.nothing_to_do:
            return inspection
        report(inspection)
        with connection.cursor() as cursor:
            for finding in inspection.fixes:
                for statement in finding.statements:
                    cursor.execute(statement)
        progress("Row fixes applied.")
        _migrate()
        progress(f"{len(inspection.migrations)} migration(s) applied.")
        encrypted = _encrypt_plaintext()
        progress(f"{encrypted} plaintext secret(s) encrypted.")
        _record()
    return inspection
