"""Row Level Security on every table in `public`: what Supabase's Data API may show.

Supabase serves every table in `public` over HTTP to its anon key (role `anon`) and to
users' JWTs (role `authenticated`), and by default grants both roles every privilege on
every table there. Row Level Security (RLS) decides what they see:

* every table in `public` has RLS enabled, so a role other than the table's owner sees
  only what a policy lets it see, and by default nothing;
* the seed's user-owned tables (`OWN_ROWS`) get one policy: `authenticated` may SELECT
  the rows whose user id is the JWT's `sub` (the Auth0 id, which is text: the seed's
  `auth.uid()` casts to uuid and would fail on it);
* `anon` gets no policy anywhere, so the anon key reads nothing;
* the console connects as the tables' owner, which RLS does not hold (never FORCE).

`rls_enable` is idempotent and cheap when nothing is missing (a few catalog queries): the
accounts migration `0004_row_level_security` calls it, and so does every `migrate`
afterwards (post_migrate), so tables created by later migrations (ours, Django's,
Procrastinate's) are covered too. Where the role `authenticated` or the function
`auth.jwt()` does not exist (plain PostgreSQL), no policy is created and the result
says why; RLS is still enabled.

Works on a Django cursor and on a psycopg cursor alike (`check_database` uses the latter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA = "public"
POLICY = "select_own_rows"
# The seed's tables that belong to one user, and the column that names the user.
OWN_ROWS = {
    "users": "id",
    "usage_daily": "user_id",
    "user_credits": "user_id",
    "user_hopsworks_assignments": "user_id",
    "billing_history": "user_id",
}
# `(select ...)` makes PostgreSQL evaluate the JWT once per query, not once per row.
JWT_SUB = "(select auth.jwt() ->> 'sub')"
READER_ROLE = "authenticated"
PUBLIC_ROLES = {"anon", "public"}


@dataclass(frozen=True)
class Policy:
    name: str
    command: str  # SELECT, INSERT, UPDATE, DELETE or ALL
    roles: tuple[str, ...]  # "public" means every role
    using: str | None


@dataclass(frozen=True)
class Table:
    name: str
    enabled: bool
    forced: bool
    owner: str
    alterable: bool  # the current user owns it (or is a member of its owner)
    policies: tuple[Policy, ...] = ()


@dataclass
class Change:
    enabled: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    policies_created: list[str] = field(default_factory=list)
    policies_dropped: list[str] = field(default_factory=list)
    not_owned: list[str] = field(default_factory=list)
    # Why no policy could be created; "" when Supabase's role and auth.jwt() exist.
    no_policies_because: str = ""

    def lines(self) -> list[str]:
        """What happened, in plain words (for migrate's output)."""
        out = []
        if self.enabled:
            out.append(f"Row Level Security turned on for: {', '.join(self.enabled)}.")
        if self.disabled:
            out.append(f"Row Level Security turned off for: {', '.join(self.disabled)}.")
        if self.policies_created:
            out.append(
                f"Policy {POLICY} (authenticated users read their own rows) created on: "
                f"{', '.join(self.policies_created)}."
            )
        if self.policies_dropped:
            out.append(f"Policy {POLICY} dropped from: {', '.join(self.policies_dropped)}.")
        if self.not_owned:
            out.append(
                "Not changed, owned by another role (its owner must run ALTER TABLE ... "
                f"ENABLE ROW LEVEL SECURITY): {', '.join(self.not_owned)}."
            )
        if self.no_policies_because and (self.enabled or self.policies_created):
            out.append(
                f"No policy created: {self.no_policies_because} Only the tables' owner "
                "can read them."
            )
        return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def rls_tables(cursor) -> list[Table]:
    """Every ordinary and partitioned table in `public`, with its RLS state and policies."""
    cursor.execute(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
               pg_get_userbyid(c.relowner), pg_has_role(c.relowner, 'USAGE')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
        ORDER BY c.relname
        """,
        [SCHEMA],
    )
    rows = cursor.fetchall()
    cursor.execute(
        "SELECT tablename, policyname, cmd, roles::text[], qual FROM pg_policies "
        "WHERE schemaname = %s ORDER BY tablename, policyname",
        [SCHEMA],
    )
    by_table: dict[str, list[Policy]] = {}
    for table, name, command, roles, using in cursor.fetchall():
        by_table.setdefault(table, []).append(Policy(name, command, tuple(roles), using))
    return [
        Table(name, enabled, forced, owner, alterable, tuple(by_table.get(name, ())))
        for name, enabled, forced, owner, alterable in rows
    ]


def policy_support(cursor) -> str:
    """ "" when the own-rows policy can be created here, else why not (plain words)."""
    cursor.execute(
        "SELECT to_regrole(%s) IS NOT NULL, to_regprocedure('auth.jwt()') IS NOT NULL",
        [READER_ROLE],
    )
    has_role, has_jwt = cursor.fetchone()
    missing = [
        *([f"no role {READER_ROLE}"] if not has_role else []),
        *(["no function auth.jwt()"] if not has_jwt else []),
    ]
    if not missing:
        return ""
    return f"this database has {' and '.join(missing)} (it is not Supabase)."


def rls_enable(cursor) -> Change:
    """Enable RLS on every table in `public` that lacks it, and create the own-rows
    policy where it is missing. Never FORCEs; changes nothing that is already right."""
    change = Change(no_policies_because=policy_support(cursor))
    for table in rls_tables(cursor):
        if not table.alterable:
            if not table.enabled:
                change.not_owned.append(table.name)
            continue
        if not table.enabled:
            cursor.execute(f"ALTER TABLE {SCHEMA}.{_quote(table.name)} ENABLE ROW LEVEL SECURITY")
            change.enabled.append(table.name)
        column = OWN_ROWS.get(table.name)
        has_policy = any(policy.name == POLICY for policy in table.policies)
        if column and not has_policy and not change.no_policies_because:
            cursor.execute(
                f"CREATE POLICY {POLICY} ON {SCHEMA}.{_quote(table.name)} "
                f"FOR SELECT TO {READER_ROLE} USING ({_quote(column)} = {JWT_SUB})"
            )
            change.policies_created.append(table.name)
    return change


def rls_disable(cursor) -> Change:
    """The reverse: drop the own-rows policies and disable RLS on every table in
    `public` this role owns (including tables that had RLS before it was enabled here)."""
    change = Change()
    for table in rls_tables(cursor):
        if not table.alterable:
            continue
        if table.name in OWN_ROWS and any(policy.name == POLICY for policy in table.policies):
            cursor.execute(f"DROP POLICY {POLICY} ON {SCHEMA}.{_quote(table.name)}")
            change.policies_dropped.append(table.name)
        if table.enabled:
            cursor.execute(f"ALTER TABLE {SCHEMA}.{_quote(table.name)} DISABLE ROW LEVEL SECURITY")
            change.disabled.append(table.name)
    return change


def _describe_policy(policy: Policy) -> str:
    roles = ", ".join("every role" if role == "public" else role for role in policy.roles)
    rows = (
        "all rows"
        if (policy.using or "").strip().lower() == "true"
        else "rows where " + (policy.using or "(no condition)")
    )
    return f"policy {policy.name}: {policy.command} for {roles} on {rows}"


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)  # one per table, and a summary
    problems: list[str] = field(default_factory=list)  # each makes check_database fail
    notes: list[str] = field(default_factory=list)


def rls_report(cursor) -> Report:
    """The RLS state of every table in `public`, in plain words, with what is wrong."""
    report = Report()
    tables = rls_tables(cursor)
    if not tables:
        return report
    support = policy_support(cursor)
    for table in tables:
        own = [p for p in table.policies if p.name == POLICY and table.name in OWN_ROWS]
        others = [p for p in table.policies if p not in own]
        if not table.enabled:
            text = (
                "Row Level Security OFF: any role granted access to it (Supabase's anon key "
                "by default) reads every row"
            )
            report.problems.append(
                f"{table.name}: Row Level Security is off."
                + ("" if table.alterable else f" It is owned by {table.owner}, who must enable it.")
            )
        elif own:
            text = "Row Level Security on; authenticated users read only their own rows"
        else:
            text = f"Row Level Security on, no policy: only its owner ({table.owner}) reads it"
        if table.enabled and table.forced:
            text += "; FORCED, so the owner is held by the policies too"
            report.problems.append(
                f"{table.name}: FORCE ROW LEVEL SECURITY is on: the console's own connection "
                "(the owner) only sees what the policies allow. Run ALTER TABLE "
                f"{table.name} NO FORCE ROW LEVEL SECURITY."
            )
        for policy in others:
            text += f"; {_describe_policy(policy)}"
            if PUBLIC_ROLES & set(policy.roles):
                report.problems.append(
                    f"{table.name}: {policy.name} opens rows to "
                    f"{', '.join(sorted(PUBLIC_ROLES & set(policy.roles)))}: "
                    "the anon key can read them."
                )
        if table.name in OWN_ROWS and table.enabled and not own and not support:
            report.notes.append(
                f"{table.name} has no {POLICY} policy: signed-in users cannot read their own "
                "rows through Supabase. Run `python manage.py migrate` to create it."
            )
        report.lines.append(f"  {table.name}: {text}.")
    enabled = sum(table.enabled for table in tables)
    summary = f"Row Level Security: on for {enabled} of {len(tables)} tables in {SCHEMA}."
    if support:
        summary += f" No policies: {support} Only the tables' owner reads them."
    elif not report.problems:
        summary += (
            " The anon key reads nothing; authenticated users (a JWT whose sub is their "
            "Auth0 id) read only their own rows of the seed's user tables."
        )
    report.lines.insert(0, summary)
    return report
