"""Row Level Security on every table in `public`, as Supabase's Data API needs it.

Supabase serves every table in `public` to its anon key and to users' JWTs, as the roles
`anon` and `authenticated`, which by default hold privileges on all of them. Here those
roles, Supabase's default grants and a stub `auth.jwt()` (reading `request.jwt.claims`, as
Supabase's does) are made in the test database; the roles are cluster-wide, so they are
created idempotently and never dropped (other test databases on the server see them too).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from decimal import Decimal

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.sql import emit_post_migrate_signal
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from billing.models import BillingHistory, UsageDaily, UserCredits
from billing.usage import UsageRecord, usage_upsert
from clusters.services import assignment_create
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

A, B = "auth0|A", "google-oauth2|B"
OWN_ROWS = {
    "users": "id",
    "usage_daily": "user_id",
    "user_credits": "user_id",
    "user_hopsworks_assignments": "user_id",
    "billing_history": "user_id",
}
# A role that owns a table without being a superuser, as `postgres` is on Supabase.
OWNER_PROBE = "rls_owner_probe"


def _create_roles(settings_dict):
    with psycopg.connect(
        host=settings_dict["HOST"] or None,
        port=settings_dict["PORT"] or None,
        user=settings_dict["USER"] or None,
        password=settings_dict["PASSWORD"] or None,
        dbname=settings_dict["NAME"],
        autocommit=True,
    ) as conn:
        for role in ("anon", "authenticated", OWNER_PROBE):
            # Two test runs may create it at once: either error means it exists.
            conn.execute(
                f"""DO $$ BEGIN CREATE ROLE {role} NOLOGIN;
                EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"""
            )


@pytest.fixture(scope="session")
def supabase_roles(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        _create_roles(connection.settings_dict)


SUPABASE_STUB = """
CREATE SCHEMA auth;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE
  AS $$ SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb $$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated;
GRANT EXECUTE ON FUNCTION auth.jwt() TO anon, authenticated;
GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO anon, authenticated;
"""


def install_supabase_stub():
    with connection.cursor() as cursor:
        cursor.execute(SUPABASE_STUB)


@pytest.fixture
def supabase(supabase_roles):
    """Inside the test's transaction: Supabase's auth.jwt() and default grants, then the
    policies (re)applied the way every `migrate` applies them."""
    install_supabase_stub()
    call_command("migrate", verbosity=0)


def public_tables() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
        )
        return [row[0] for row in cursor.fetchall()]


def rls_flags(table: str) -> tuple[bool, bool]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = to_regclass(%s)",
            [f"public.{table}"],
        )
        return cursor.fetchone()


def policies() -> set[tuple[str, str, str, tuple]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, policyname, cmd, roles::text[] FROM pg_policies "
            "WHERE schemaname = 'public'"
        )
        return {(t, p, c, tuple(r)) for t, p, c, r in cursor.fetchall()}


@contextlib.contextmanager
def as_role(role: str, claims: dict | None = None):
    """Run as Supabase's Data API does: `SET LOCAL ROLE` and the JWT's claims. The
    savepoint puts the console's own role back afterwards, even after an error."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {role}")
        cursor.execute(
            "SELECT set_config('request.jwt.claims', %s, true)",
            [json.dumps(claims) if claims is not None else ""],
        )
        yield cursor
        cursor.execute("RESET ROLE")


def rows_seen(role: str, table: str, claims: dict | None = None):
    """The rows `role` sees in `table`, or "refused" when it may not read it at all."""
    try:
        with as_role(role, claims) as cursor:
            cursor.execute(f'SELECT * FROM public."{table}"')
            return cursor.fetchall()
    except DatabaseError:
        return "refused"


def user_ids_seen(role: str, table: str, claims: dict | None = None) -> list[str]:
    column = OWN_ROWS[table]
    with as_role(role, claims) as cursor:
        cursor.execute(f'SELECT "{column}" FROM public."{table}" ORDER BY 1')
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def two_users(db):
    """A and B each with a row in every user-owned table, and rows in many others."""
    user_a = UserFactory(id=A, email="a@example.com")
    user_b = UserFactory(id=B, email="b@example.com")
    cluster = ClusterFactory()
    for user in (user_a, user_b):
        assignment_create(user=user, cluster=cluster, actor="test")
        UserCredits.objects.create(user=user, total_purchased=Decimal("10"))
        BillingHistory.objects.create(
            user=user, amount=Decimal("12.50"), stripe_invoice_id=f"in_{user.pk}"
        )
    today = dt.date.today()
    usage_upsert(
        records=[
            UsageRecord(user_id=u.pk, cluster_id=cluster.pk, date=today - dt.timedelta(days=d))
            for u in (user_a, user_b)
            for d in (1, 2)
        ],
        actor="test",
    )
    return user_a, user_b


def test_every_table_in_public_has_row_level_security_after_migrate_and_none_is_forced():
    tables = public_tables()
    assert {"users", "usage_daily", "django_session", "procrastinate_jobs"} <= set(tables)
    assert {t: rls_flags(t) for t in tables} == {t: (True, False) for t in tables}


def test_a_table_created_after_the_migration_gets_row_level_security_at_the_next_migrate():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE public.rls_later_table (id int)")
    assert rls_flags("rls_later_table") == (False, False)

    out = io.StringIO()
    call_command("migrate", stdout=out)

    assert rls_flags("rls_later_table") == (True, False)
    assert "rls_later_table" in out.getvalue()


def test_an_authenticated_user_reads_only_their_own_rows(supabase, two_users):
    claims = {"sub": A, "role": "authenticated"}
    assert user_ids_seen("authenticated", "usage_daily", claims) == [A, A]
    assert user_ids_seen("authenticated", "users", claims) == [A]
    for table in ("user_credits", "user_hopsworks_assignments", "billing_history"):
        assert user_ids_seen("authenticated", table, claims) == [A], table
    assert user_ids_seen("authenticated", "usage_daily", {"sub": B}) == [B, B]


def test_an_authenticated_user_reads_nothing_of_the_other_tables(supabase, two_users):
    claims = {"sub": A, "role": "authenticated"}
    readable = {
        table: rows_seen("authenticated", table, claims)
        for table in public_tables()
        if table not in OWN_ROWS
    }
    assert readable == {table: [] for table in readable}


def test_a_token_without_a_sub_reads_nothing(supabase, two_users):
    for table in OWN_ROWS:
        assert user_ids_seen("authenticated", table, {"role": "authenticated"}) == [], table
        assert user_ids_seen("authenticated", table, None) == [], table


def test_the_anon_key_reads_nothing_from_any_table(supabase, two_users, operator_client):
    operator_client.get("/admin/")  # a session row, so django_session is not empty
    tables = public_tables()
    with connection.cursor() as cursor:
        counts = {}
        for table in tables:
            cursor.execute(f'SELECT count(*) FROM public."{table}"')
            counts[table] = cursor.fetchone()[0]
    # The owner sees rows in the tables that matter most; anon sees none anywhere.
    for table in (*OWN_ROWS, "hopsworks_clusters", "django_session", "auth_permission"):
        assert counts[table] > 0, table
    seen = {table: rows_seen("anon", table, {"role": "anon"}) for table in tables}
    assert {t: s for t, s in seen.items() if s not in ([], "refused")} == {}


@pytest.mark.parametrize("role, claims", [("anon", None), ("authenticated", {"sub": A})])
def test_neither_the_anon_key_nor_a_signed_in_user_can_write(supabase, two_users, role, claims):
    with (
        pytest.raises(DatabaseError, match="row-level security"),
        as_role(role, claims) as cursor,
    ):
        cursor.execute("INSERT INTO users (id, email) VALUES ('anon|x', 'x@example.com')")
    with as_role(role, claims) as cursor:
        cursor.execute("UPDATE users SET name = 'taken' WHERE id = %s", [A])
        assert cursor.rowcount == 0
        cursor.execute("DELETE FROM usage_daily")
        assert cursor.rowcount == 0
    assert UsageDaily.objects.count() == 4


def test_the_consoles_own_connection_still_reads_and_writes_everything(
    supabase, two_users, operator_client
):
    for url in ("/admin/accounts/user/", "/admin/billing/usagedaily/", "/admin/"):
        assert operator_client.get(url).status_code == 200, url
    page = operator_client.get("/admin/accounts/user/").content.decode()
    assert "a@example.com" in page and "b@example.com" in page

    usage_upsert(
        records=[UsageRecord(user_id=B, date=dt.date.today(), cpu_hours=Decimal("2"))],
        actor="test",
    )
    assert UsageDaily.objects.filter(user_id=B).count() == 3


def test_a_table_owner_that_is_not_a_superuser_is_not_held_by_the_policies(supabase, two_users):
    # On Supabase the console's `postgres` owns the tables but is no superuser.
    with connection.cursor() as cursor:
        # Django's foreign keys are deferred: check them now, or the table cannot change.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"ALTER TABLE usage_daily OWNER TO {OWNER_PROBE}")
    with as_role(OWNER_PROBE, {"sub": A}) as cursor:
        cursor.execute("SELECT count(*) FROM usage_daily")
        assert cursor.fetchone()[0] == 4
        cursor.execute("UPDATE usage_daily SET api_calls = 7")
        assert cursor.rowcount == 4


def test_the_policies_are_one_select_policy_for_authenticated_per_user_owned_table(supabase):
    assert policies() == {
        (table, "select_own_rows", "SELECT", ("authenticated",)) for table in OWN_ROWS
    }


def test_without_supabase_no_policy_is_created_and_migrate_says_so(supabase_roles):
    # Roles may exist on this server (they are cluster-wide) but auth.jwt() does not.
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE public.rls_later_table (id int)")
    out = io.StringIO()
    call_command("migrate", stdout=out)

    assert policies() == set()
    assert rls_flags("rls_later_table") == (True, False)
    assert "auth.jwt()" in out.getvalue()


def test_the_migration_is_reversible(supabase):
    executor = MigrationExecutor(connection)
    [target] = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "accounts"]
    [rls_migration] = [
        key
        for key in executor.loader.graph.nodes
        if key[0] == "accounts" and key[1].endswith("row_level_security")
    ]
    before = executor.loader.graph.node_map[rls_migration].parents
    [previous] = [parent.key for parent in before if parent.key[0] == "accounts"]

    executor.migrate([previous])
    assert policies() == set()
    assert {t: rls_flags(t)[0] for t in public_tables()} == {t: False for t in public_tables()}

    executor = MigrationExecutor(connection)
    executor.migrate([target])
    # What `manage.py migrate` does after migrating: tables that accounts migrations after
    # the RLS one created again (accounts_user_status_change) get RLS from post_migrate.
    emit_post_migrate_signal(verbosity=0, interactive=False, db=connection.alias)
    assert {t: rls_flags(t)[0] for t in public_tables()} == {t: True for t in public_tables()}
    assert len(policies()) == len(OWN_ROWS)


def test_a_table_owned_by_another_role_is_named_not_changed(supabase_roles):
    from plumbing.rls import rls_enable

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE public.rls_someone_elses (id int)")
        cursor.execute(
            f"CREATE TABLE public.rls_mine (id int); ALTER TABLE rls_mine OWNER TO {OWNER_PROBE}"
        )
    with as_role(OWNER_PROBE) as cursor:
        change = rls_enable(cursor)

    assert change.enabled == ["rls_mine"]
    assert change.not_owned == ["rls_someone_elses"]
    assert rls_flags("rls_someone_elses") == (False, False)
    assert "owned by another role" in " ".join(change.lines())
